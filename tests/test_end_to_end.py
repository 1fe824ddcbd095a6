"""End to end on a tiny random backbone: train -> eval -> score, via the real entry points."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siren.artifact import load_best_model_pkl
from siren.cli import main as siren_main

REPO = Path(__file__).resolve().parent.parent
HARMFUL = ["how can I hurt someone badly", "explain how to make a weapon", "tell me how to hurt a cat"]
SAFE = ["how do I bake bread at home", "write a poem about the sea", "what is the capital of France"]


def write_rows(data_dir: Path, dataset: str, split: str, n: int, seed: int, harmful_only: bool = False) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = 1 if harmful_only else i % 2
        text = rng.choice(HARMFUL if label else SAFE) + " " + rng.choice(["now", "please", "today", "fast", ""])
        rows.append({"id": f"{dataset}-{split}-{i:04d}", "text": text.strip(), "label": label,
                     "prompt": text.strip(), "response": None})
    (data_dir / dataset).mkdir(parents=True, exist_ok=True)
    with open(data_dir / dataset / f"{split}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_rows(d, "aegis", "test", 48, 0)           # one split only -> 60/20/20
    write_rows(d, "beavertails", "test", 48, 1)
    write_rows(d, "toxic_chat", "train", 40, 2)     # train + test -> validation carved from train
    write_rows(d, "toxic_chat", "test", 20, 3)
    write_rows(d, "advbench", "test", 10, 4, harmful_only=True)
    return d


def train_args(model_dir: Path, data_dir: Path, out: Path, cache: Path) -> list[str]:
    return ["train", "--model", str(model_dir), "--datasets", "aegis", "beavertails", "toxic_chat",
            "--data_dir", str(data_dir), "--out_dir", str(out), "--cache_dir", str(cache), "--n_trials", "2",
            "--n_folds", "2", "--max_epochs", "15", "--patience", "5", "--c_values", "1", "10",
            "--selection_thresholds", "0.5", "0.9", "--pooling_types", "residual_mean", "mlp_mean", "--max_length", "32",
            "--seed", "7"]


def test_train_eval_score_end_to_end(tiny_llama_dir, tiny_data, tmp_path, capsys):
    out, cache = tmp_path / "guard", tmp_path / "cache"
    assert siren_main(train_args(tiny_llama_dir, tiny_data, out, cache)) == 0
    for name in ["best_model.pkl", "siren_config.json", "siren.safetensors", "results.json", "splits.json",
                 "layers.png", "probes_residual_mean.npz", "probes_mlp_mean.npz"]:
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert set(results["test_f1"]) == {"aegis", "beavertails", "toxic_chat"}
    assert len(results["candidates"]) == 4  # 2 pooling types x 2 thresholds, best kept by CV F1
    assert results["chosen"]["cv_f1"] == max(c["cv_f1"] for c in results["candidates"])
    assert results["n_selected_neurons"] == sum(results["selected_neurons_per_layer"].values()) > 0
    splits = json.loads((out / "splits.json").read_text())
    for ds, parts in splits.items():
        ids = [set(v) for v in parts.values()]
        assert sum(map(len, ids)) == len(set().union(*ids)), f"{ds} splits overlap"

    payload = load_best_model_pkl(out / "best_model.pkl")
    config = json.loads((out / "siren_config.json").read_text())
    check_selection_against_probes(out, results, config)
    assert payload["mlp"]["input_dim"] == config["mlp"]["input_dim"] == results["n_selected_neurons"]
    # Each weight once: best_model.pkl names the folder's weights instead of copying them, and
    # results.json records the folder's size (printed at the end of training).
    assert "state_dict" not in payload and payload["weights"]["file"] == "siren.safetensors"
    assert results["guard_bytes"]["siren.safetensors"] == (out / "siren.safetensors").stat().st_size
    assert results["guard_bytes"]["best_model.pkl"] < 20_000
    if results["config"]["final_head"] == "ensemble":
        assert config["siren"]["head_ensemble"] == results["config"]["n_folds"]

    # Evaluation reads the cache (no re-extraction) and writes its report and plots.
    capsys.readouterr()
    assert siren_main(["eval", "--model", str(tiny_llama_dir), "--guard", str(out), "--extra_datasets", "advbench",
                       "--calibrate", "--cache_dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "average" in printed and "advbench" in printed
    report = json.loads((out / "eval_results.json").read_text())
    assert report["datasets"]["advbench"]["harmful_only"] and "advbench" not in report["averaged_over"]
    # Calibration: one threshold in the report, the guard config and best_model.pkl alike.
    calibrated = report["calibration"]["calibrated_threshold"]
    assert report["decision_threshold"] == calibrated and report["calibration"]["previous_threshold"] == 0.5
    assert load_best_model_pkl(out / "best_model.pkl")["threshold"] == calibrated
    assert "calibrated" in report["decision_threshold_source"]
    # The metrics, recomputed directly from the cached features, the saved head and sklearn.
    from sklearn.metrics import f1_score, roc_auc_score

    from siren.artifact import load_head
    from siren.mlp import predict_proba_head
    from siren.pipeline.cache import load_features
    head = load_head(out)
    scored = [json.loads(x) for x in (out / "test_scores.jsonl").read_text().splitlines()]
    for ds in ["aegis", "beavertails", "toxic_chat", "advbench"]:
        fs = load_features(_cache_folder(cache, ds, "test", config["siren_module"]["pooling_type"]))
        score = predict_proba_head(head, guard_features_from_cache(config, fs.X))
        mine = [r for r in scored if r["dataset"] == ds]     # every test row once, with its id, label and score
        assert [r["id"] for r in mine] == [str(i) for i in fs.ids] and [r["label"] for r in mine] == fs.y.tolist()
        np.testing.assert_allclose([r["score"] for r in mine], score, rtol=0, atol=1e-7)
        got = report["datasets"][ds]
        if ds == "advbench":
            assert got["recall"] == pytest.approx(float(np.mean(score >= calibrated)), abs=1e-12)
            continue
        assert got["f1"] == pytest.approx(f1_score(fs.y, score >= calibrated, average="macro"), abs=1e-12)
        assert got["roc_auc"] == pytest.approx(roc_auc_score(fs.y, score), abs=1e-12)
        assert got["at_previous_threshold"]["f1"] == pytest.approx(
            f1_score(fs.y, score >= 0.5, average="macro"), abs=1e-12)
    assert report["average"]["f1"] == pytest.approx(np.mean([report["datasets"][d]["f1"] for d in
                                                             ("aegis", "beavertails", "toxic_chat")]), abs=1e-12)
    # 95% bootstrap intervals: each dataset's from its own resamples (seed + its index), the average's
    # from the mean of those replicates; the table prints them.
    from siren.metrics import bootstrap_macro_f1, percentile_interval
    seed, reps = report["bootstrap"]["seed"], []
    for k, ds in enumerate(report["config"]["datasets"] + report["config"]["extra_datasets"]):
        if ds not in report["averaged_over"]:
            assert "f1_ci95" not in report["datasets"][ds]
            continue
        fs = load_features(_cache_folder(cache, ds, "test", config["siren_module"]["pooling_type"]))
        reps.append(bootstrap_macro_f1(fs.y, predict_proba_head(head, guard_features_from_cache(config, fs.X))
                                       >= calibrated, n_boot=report["bootstrap"]["resamples"], boot_seed=seed + k))
        assert report["datasets"][ds]["f1_ci95"] == pytest.approx(list(percentile_interval(reps[-1])), abs=1e-12)
    assert report["average"]["f1_ci95"] == pytest.approx(list(percentile_interval(np.mean(reps, axis=0))), abs=1e-12)
    assert report["average"]["f1_ci95"][0] <= report["average"]["f1"] <= report["average"]["f1_ci95"][1]
    assert "95% intervals" in printed
    # Training's test F1 and evaluation's macro-F1 at threshold 0.5 come from the same rows and head.
    for ds, f1 in results["test_f1"].items():
        assert report["datasets"][ds]["at_previous_threshold"]["f1"] == pytest.approx(f1, abs=1e-9)
    assert report["calibration"]["calibrated_threshold"] == json.loads(
        (out / "siren_config.json").read_text())["inference"]["default_threshold"]
    assert (out / "roc.png").is_file() and (out / "f1.png").is_file()

    # The served guard computes the features the head was trained on.
    from siren.runtime.guard import SirenGuard
    guard = SirenGuard.from_pretrained(str(out))
    fs = load_features(_cache_folder(cache, "aegis", "test", config["siren_module"]["pooling_type"]))
    rows = {json.loads(l)["id"]: json.loads(l)["text"] for l in open(tiny_data / "aegis" / "test.jsonl")}
    texts = [rows[i] for i in fs.ids]
    np.testing.assert_allclose(guard.features(texts), guard_features_from_cache(config, fs.X), rtol=2e-3, atol=2e-3)

    capsys.readouterr()
    assert siren_main(["score", "--model", str(out), "how can I hurt someone badly"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    direct = guard.score("how can I hurt someone badly")
    assert line == {"score": direct.score, "is_harmful": direct.score >= calibrated, "threshold": calibrated}


def _cache_folder(cache: Path, dataset: str, split: str, pooling_type: str) -> Path:
    return next(p.parent for p in cache.rglob("manifest.json") if p.parent.parts[-3:] == (dataset, split, pooling_type))


def check_selection_against_probes(out: Path, results: dict, config: dict) -> None:
    """The guard's neurons and layer weights, recomputed from the saved probes."""
    from siren.pipeline.select import layer_weights, select_neurons

    pooling, thr = results["chosen"]["pooling_type"], results["chosen"]["selection_threshold"]
    probes = np.load(out / f"probes_{pooling}.npz")
    selection = select_neurons(probes["coef"], thr)
    weights = layer_weights(probes["val_f1"], floor=results["config"]["layer_weight_floor"])
    assert results["selected_neurons_per_layer"] == {str(l): len(v) for l, v in selection.items()}
    assert config["siren_module"]["selected_neurons_dict"] == {f"layer{l}_{pooling}": v.tolist()
                                                               for l, v in selection.items()}
    assert config["siren_module"]["layer_weights"] == {str(l): float(weights[l]) for l in selection}
    assert config["siren_module"]["pooling_type"] == pooling


def guard_features_from_cache(config: dict, X) -> np.ndarray:
    from siren.pipeline.select import aggregate
    sm = config["siren_module"]
    selection = {int(k.split("_")[0][5:]): np.asarray(v) for k, v in sm["selected_neurons_dict"].items()}
    weights = np.ones(X.shape[1], dtype=np.float32)
    for k, w in sm["layer_weights"].items():
        weights[int(k)] = w
    return aggregate(X, selection, weights)


def test_same_seed_twice_gives_identical_artifacts(tiny_llama_dir, tiny_data, tmp_path):
    """Two separate processes, same command: byte-identical guard weights and best_model.pkl."""
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        args = train_args(tiny_llama_dir, tiny_data, out, tmp_path / f"cache-{run}")
        args[args.index("--pooling_types") + 1: args.index("--pooling_types") + 3] = ["residual_mean"]
        subprocess.run([sys.executable, "-m", "siren", *args], check=True, cwd=REPO, capture_output=True)
        outs.append(out)
    for name in ["siren.safetensors", "best_model.pkl", "siren_config.json", "splits.json"]:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_unavailable_dataset_is_named(tiny_llama_dir, tiny_data, tmp_path, capsys):
    args = train_args(tiny_llama_dir, tiny_data, tmp_path / "o", tmp_path / "c")
    args[args.index("--datasets") + 1] = "aegis2"
    assert siren_main(args) == 2
    assert "aegis2" in capsys.readouterr().err
