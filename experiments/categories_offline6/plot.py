"""Per-category AUROC of the category head and of the TF-IDF baseline (results.json -> auroc.png).

    python experiments/categories_offline6/plot.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parents[2] / "reports" / "categories_offline6"   # the report it draws for
block = json.loads((HERE / "results.json").read_text())["categories"]
names = block["trained"]
fig, ax = plt.subplots(figsize=(9, 3.6))
for k, (system, color) in enumerate((("ours", "tab:blue"), ("tfidf", "tab:gray"))):
    vals = [block[system][n].get("auroc", 0.0) for n in names]
    ax.bar([i + (k - 0.5) * 0.38 for i in range(len(names))], vals, 0.38, color=color,
           label="SIREN category head" if system == "ours" else "TF-IDF one-vs-rest")
ax.set_xticks(range(len(names)))
ax.set_xticklabels([f"{n}\n({block['ours'][n]['positives']} pos)" for n in names], fontsize=7)
ax.set_ylim(0.5, 1.0)
ax.set_ylabel("test AUROC")
ax.set_title("Harm categories, offline-six held-out rows (openai_moderation + beavertails)", fontsize=10)
ax.legend(fontsize=8, loc="lower left")
fig.tight_layout()
fig.savefig(HERE / "auroc.png", dpi=120)
