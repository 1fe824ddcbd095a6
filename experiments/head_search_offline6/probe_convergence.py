"""How far the probes' default stopping tolerance leaves them from the optimum of their objective.

Fits the probes of layers 10-15 at C = 1000 on a finished run's cached mlp_mean train features
(validation rows choose nothing here) at three tolerances, and prints per layer the iterations,
the objective reached (mean BCE + ||w||_1 / C, standardised space), the non-zero weights and the
train / validation F1 (mean over datasets of macro-F1).

    python experiments/head_search_offline6/probe_convergence.py /path/to/features/smollm2-135m
"""

import sys
import time

import numpy as np

from siren.pipeline.probes import fit_probe_grid

DATASETS = ["toxic_chat", "openai_moderation", "aegis", "wildguard", "safe_rlhf", "beavertails"]
LAYERS = slice(10, 16)
C = 1000.0


def load(root: str, split: str):
    X, y, g = [], [], []
    for i, name in enumerate(DATASETS):
        folder = f"{root}/{name}/{split}/mlp_mean"
        X.append(np.load(f"{folder}/features.npy", mmap_mode="r")[:, LAYERS])
        y.append(np.load(f"{folder}/labels.npy"))
        g.append(np.full(len(y[-1]), i))
    return np.concatenate(X), np.concatenate(y), np.concatenate(g)


def objective(X, y, p) -> np.ndarray:
    """(L,) mean BCE + ||w||_1 / C of the fitted probes, in float64."""
    out = []
    for l in range(X.shape[1]):
        Z = (X[:, l].astype(np.float64) - p.mean[l]) / p.scale[l]
        m = Z @ p.coef[l].astype(np.float64) + float(p.intercept[l])
        out.append(np.mean(np.logaddexp(0, m) - y * m) + np.abs(p.coef[l]).sum() / C)
    return np.array(out)


def main(root: str) -> None:
    Xt, yt, gt = load(root, "train")
    Xv, yv, gv = load(root, "validation")
    print(f"train {Xt.shape}, validation {Xv.shape}, layers {LAYERS.start}-{LAYERS.stop - 1}, C {C:g}")
    for tol, max_iter in [(1e-4, 2000), (1e-6, 20000), (1e-8, 100000)]:
        t = time.perf_counter()
        p = fit_probe_grid(Xt, yt, Xv, yv, gv, [C], groups_train=gt, tol=tol, max_iter=max_iter, progress=False)
        s = time.perf_counter() - t
        print(f"tol {tol:g} ({s:.1f} s): iterations {p.n_iter_by_C[0].tolist()}")
        print(f"  objective {np.round(objective(Xt, yt, p), 4).tolist()}")
        print(f"  non-zero  {(p.coef != 0).sum(1).tolist()}")
        print(f"  train F1  {np.round(p.train_f1, 3).tolist()}   validation F1 {np.round(p.val_f1, 3).tolist()}")


if __name__ == "__main__":
    main(sys.argv[1])
