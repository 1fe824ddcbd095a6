"""The authors' stages 2-3 (probes, neuron selection, Optuna head, final MLP) on our cached features.

How much does one read of the authors' test F1 move with their head's random draw? Their run is
deterministic (probes seeded with 42, TPE and KFold seeded), so the protocol's 0.7255 is one
draw; this script runs their own functions, unchanged and imported from a checkout of their
repository, on the offline-six rows, with `--reseed S` setting torch's global seed before their
stage 3 (the MLPs' initialisation and batch order, the only unseeded draws they make).

Features: our feature cache's `residual_mean` (bf16 backbone, the reference run's settings), in
the row order the authors' extractor uses (each split: the datasets' rows in file order,
concatenated in the protocol's dataset order, then permuted with RandomState(42)).

    python authors_on_cached_features.py --authors_repo SIREN_CHECKOUT --data_dir DATA \
        --cache_dir FEATURES [--reseed S] --out run.json

DATA is the protocol's data dir (`build.py`), FEATURES a cache holding residual_mean for the
three splits (`siren extract --model smollm2-135m --data_dir DATA --datasets ... --pooling_types residual_mean --dtype bfloat16 --cache_dir FEATURES`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = ["toxic_chat", "openai_moderation", "aegis", "wildguard", "safe_rlhf", "beavertails"]
POOLING = "residual_mean"


def split_reps(data_dir: Path, cache_dir: Path, split: str):
    """The authors' per-split structure: (list of per-row [layer -> {pooling: (d,)}], labels, dataset ids)."""
    from siren.pipeline.cache import load_features

    X, y, g = [], [], []
    for gi, name in enumerate(DATASETS):
        order = [json.loads(line)["id"] for line in (data_dir / name / f"{split}.jsonl").open()]
        fs = load_features(cache_dir / "smollm2-135m" / name / split / POOLING)
        where = {str(i): k for k, i in enumerate(fs.ids)}
        rows = np.array([where[i] for i in order])
        X.append(np.asarray(fs.X[rows], np.float32))
        y.append(fs.y[rows])
        g.append(np.full(len(rows), gi))
    X, y, g = np.concatenate(X), np.concatenate(y), np.concatenate(g)
    perm = np.random.RandomState(42).permutation(len(y))
    X, y, g = X[perm], y[perm], g[perm]
    reps = [[{POOLING: X[i, l]} for l in range(X.shape[1])] for i in range(len(y))]
    return reps, y, g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--authors_repo", required=True, type=Path)
    ap.add_argument("--data_dir", required=True, type=Path)
    ap.add_argument("--cache_dir", required=True, type=Path)
    ap.add_argument("--reseed", type=int, help="torch.manual_seed before stage 3 (default: the state their stage 2 leaves)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (their reference run: 2)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)

    sys.path.insert(0, str(a.authors_repo))
    import torch
    from sklearn.metrics import f1_score
    from train import train_general_siren as T

    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    reps = {s: split_reps(a.data_dir, a.cache_dir, s) for s in ("train", "validation", "test")}
    (tr, ytr, gtr), (va, yva, gva), (te, yte, gte) = reps["train"], reps["validation"], reps["test"]
    L = len(tr[0])
    t0 = time.perf_counter()
    probes = T.train_probes(tr, ytr, va, yva, gva, te, yte, gte, L, [200.0, 500.0, 1000.0], [POOLING], device)
    t_probes = time.perf_counter() - t0
    if a.reseed is not None:
        torch.manual_seed(a.reseed)
    weights = T.get_layer_weights(probes, POOLING, L)
    sel = {f"layer{l}_{POOLING}": T.select_salient_neurons(probes[f"layer{l}_{POOLING}"]["probe"], 0.9) for l in weights}
    Xtr, layers = T.aggregate_features(tr, POOLING, sel, weights)
    Xva, _ = T.aggregate_features(va, POOLING, sel, weights, layers)
    Xte, _ = T.aggregate_features(te, POOLING, sel, weights, layers)
    t1 = time.perf_counter()
    params, cv_f1 = T.train_with_optuna(Xtr, ytr, gtr, Xva, yva, gva, device, 8, 1, n_folds=3, use_cv=True)
    t2 = time.perf_counter()
    model, _, _, test_f1, _ = T.train_final_model(np.vstack([Xtr, Xva]), np.concatenate([ytr, yva]), np.array([]),
                                                  np.array([]), np.array([]), Xte, yte, gte, params, device,
                                                  use_val=False, cv_f1=cv_f1)
    t3 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(np.asarray(Xte, np.float32))).argmax(1).numpy()   # their aggregate gives float64
    per = {name: float(f1_score(yte[gte == gi], pred[gte == gi], average="macro")) for gi, name in enumerate(DATASETS)}
    out = {"reseed": a.reseed, "num_features": int(Xtr.shape[1]), "best_params": params, "cv_f1": float(cv_f1),
           "test_f1_by_dataset": per, "test_average": float(np.mean(list(per.values()))),
           "their_test_f1": float(test_f1), "seconds": {"probes": t_probes, "optuna": t2 - t1, "final": t3 - t2}}
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
