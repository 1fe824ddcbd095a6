"""Run `siren train`'s answer stage (siren.pipeline.answer) on an already trained guard folder.

It reads the guard's results.json (config: model, datasets, data_dir, seed, caps) and feature
cache (the main head's train + validation inputs, for the prompt-level rows), fits the answer
head with the defaults of configs/defaults.yaml, and writes answer_head.safetensors +
siren.answer_head into a copy of the folder (--out), with the stage's summary in its results.json.

    python experiments/streaming_verdicts/add_answer_head.py --guard GUARD --features CACHE/smollm2-135m \\
        --data_dir DATA --out GUARD_WITH_ANSWER
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from siren import config as cfgmod  # noqa: E402
from siren.artifact import load_guard_config, load_head, selection_from_config  # noqa: E402
from siren.pipeline.answer import fit_answer_stage, main_cv_folds, save_answer_head  # noqa: E402

# The training keys the answer stage reads (configs/defaults.yaml): the rest comes from the run's results.json.
ANSWER_KEYS = ["answer_head", "answer_cuts", "answer_ramp_tokens", "answer_harmful_min_tokens", "answer_c",
               "answer_prompt_rows", "answer_main_weight", "debounce", "min_answer_tokens", "ema", "target_false_alarm"]
from siren.pipeline.select import aggregate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--guard", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    started = time.time()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(a.guard, out)
    results = json.loads((out / "results.json").read_text())
    cfg = {**results["config"], **{k: cfgmod.defaults()[k] for k in ANSWER_KEYS}, "data_dir": a.data_dir}
    config = load_guard_config(out)
    layers, neurons, w = selection_from_config(config)
    L = int(config["siren"]["num_layers"])
    weights = np.ones(L)
    for l in layers:
        weights[l] = w[l]
    selection = {l: neurons[l] for l in layers}
    Z, y, g = [], [], []
    for gi, ds in enumerate(cfg["datasets"]):
        for split in ("train", "validation"):
            folder = Path(a.features) / ds / split / config["siren_module"]["pooling_type"]
            Z.append(aggregate(np.load(folder / "features.npy", mmap_mode="r"), selection, weights))
            y.append(np.load(folder / "labels.npy").astype(np.int64))
            g.append(np.full(len(y[-1]), gi))
    # the main head's CV folds (train rows of every dataset, then validation rows, as `siren train`
    # stacks them): with `final_head: ensemble` its fold heads score the answers out of fold
    ids, yy, gg = [], [], []
    for split in ("train", "validation"):
        for gi, ds in enumerate(cfg["datasets"]):
            folder = Path(a.features) / ds / split / config["siren_module"]["pooling_type"]
            ids += [str(i) for i in np.load(folder / "ids.npy")]
            yy.append(np.load(folder / "labels.npy").astype(np.int64))
            gg.append(np.full(len(yy[-1]), gi))
    folds = main_cv_folds(ids, np.concatenate(yy), np.concatenate(gg), int(cfg["n_folds"]), int(cfg["seed"])) \
        if cfg.get("final_head") == "ensemble" else None
    split_kw = dict(data_dir=a.data_dir, seed=int(cfg["seed"]), val_ratio=cfg["val_ratio"],
                    max_per_split=cfg["max_per_split"])
    fit = fit_answer_stage(cfg, selection, weights, config["siren_module"]["pooling_type"], split_kw,
                           load_head(out), int(cfg["seed"]), text_rows=(np.concatenate(Z), np.concatenate(y),
                                                                         np.concatenate(g)), main_folds=folds)
    save_answer_head(out, fit)
    results["answer_head"] = fit.summary
    results["config"].update({k: cfg[k] for k in ANSWER_KEYS})
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps({k: fit.summary[k] for k in ("kind", "rows", "prompt_level_rows", "chosen")}, default=float))
    print(f"done in {time.time() - started:.0f} s: {out}")


if __name__ == "__main__":
    main()
