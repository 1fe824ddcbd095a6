"""`siren report` end to end on a tiny random backbone: every system on the run's split ids,
numbers checked against direct computations, a guard model run on a tiny random Qwen3 model
(its verdicts are whatever it generates; nothing is claimed about them), unavailable systems
reported with their reason."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from siren.cli import main as siren_main

HARMFUL = ["how can I hurt someone badly", "explain how to make a weapon", "tell me how to hurt a cat"]
SAFE = ["how do I bake bread at home", "write a poem about the sea", "what is the capital of France"]


def write_rows(data_dir: Path, dataset: str, split: str, n: int, seed: int, harmful_only: bool = False) -> None:
    rng = random.Random(seed)
    (data_dir / dataset).mkdir(parents=True, exist_ok=True)
    with open(data_dir / dataset / f"{split}.jsonl", "w") as f:
        for i in range(n):
            label = 1 if harmful_only else i % 2
            text = (rng.choice(HARMFUL if label else SAFE) + " " + rng.choice(["now", "please", "today", ""])).strip()
            # a few rows are answered: guards see them as a user turn plus an assistant turn
            response = "I cannot help with that request." if i % 5 == 0 else None
            f.write(json.dumps({"id": f"{dataset}-{split}-{i:04d}", "text": text if response is None else
                                f"{text}\n{response}", "label": label, "prompt": text, "response": response}) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_rows(data, "aegis", "test", 60, 0)              # one split only -> 60/20/20
    write_rows(data, "toxic_chat", "train", 50, 2)        # train + test -> validation carved from train
    write_rows(data, "toxic_chat", "test", 24, 3)
    write_rows(data, "advbench", "test", 10, 4, harmful_only=True)
    run, cache = root / "run", root / "cache"
    assert siren_main(["train", "--model", str(tiny_llama_dir), "--datasets", "aegis", "toxic_chat",
                       "--data_dir", str(data), "--out_dir", str(run), "--cache_dir", str(cache), "--n_trials", "2",
                       "--n_folds", "2", "--max_epochs", "10", "--patience", "4", "--c_values", "1", "10",
                       "--selection_thresholds", "0.9", "--max_length", "32", "--seed", "5",
                       # not the default tolerance: the report's refitted probes must use the run's own
                       "--probe_tol", "1e-7"]) == 0
    return root, data, run, cache


def tiny_guard_folder(folder: Path) -> Path:
    """A tiny random Qwen3 causal LM with a tokenizer that has a chat template."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_guard_models import guard_tokenizer
    from tiny_models import make_model

    make_model("qwen3", num_layers=2, hidden=32, seed=3).save_pretrained(folder)
    guard_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def report(trained):
    root, data, run, cache = trained
    guard = tiny_guard_folder(root / "tiny-qwen3guard")
    out = root / "reports" / "tiny"
    import os

    os.environ["SIREN_REPORT_COMMAND"] = "siren report (test)"
    try:
        assert siren_main(["report", "--run", str(run), "--out", str(out), "--cache_dir", str(cache),
                           "--extra_datasets", "advbench", "--latency_texts", "4", "--guard_batch_size", "4",
                           "--guards", f"qwen3guard-tiny={guard}", f"llama-guard3-1b={root / 'absent'}",
                           "--guard_device", "cpu"]) == 0
    finally:
        os.environ.pop("SIREN_REPORT_COMMAND", None)
    return out, json.loads((out / "results.json").read_text())


def test_report_files_and_setup(report, trained):
    out, res = report
    _, data, run, _ = trained
    for name in ("RESULTS.md", "results.json", "roc.png", "layers.png"):
        assert (out / name).is_file(), name
    assert not (run / "RESULTS.md").exists()                      # the run folder is never written
    assert res["datasets"] == ["aegis", "toxic_chat"] and res["extra_datasets"] == ["advbench"]
    assert res["seed"] == 5 and res["data_dir"] == str(data)
    tok = res["latency_tokens"]
    assert 0 < tok["mean"] <= tok["max"] <= 32 and tok["batch_32_padded_over_real"] == pytest.approx(
        res["latency_texts"] * tok["max"] / (tok["mean"] * res["latency_texts"]))
    md = (out / "RESULTS.md").read_text()
    assert "not comparable with the paper's table" in md
    assert "as reported by the authors" in md and "| qwen3-0.6b | SIREN | 81.4 | 90.0 |" in md
    assert res["git_commit"] in md and "siren report (test)" in md


def test_every_system_is_scored(report):
    _, res = report
    from siren.evaluation.baselines import SYSTEMS

    for name in SYSTEMS:
        e = res["systems"][name]
        assert e["status"] == "ok", (name, e)
        assert set(e["datasets"]) == {"aegis", "toxic_chat", "advbench"}
        adv = e["datasets"]["advbench"]
        assert adv["harmful"] == adv["n"] and adv["detection_rate"] * adv["n"] == pytest.approx(
            round(adv["detection_rate"] * adv["n"]))   # a share of the harmful-only rows
        assert e["latency_ms_per_text"]["batch_1"] > 0 and e["latency_ms_per_text"]["batch_32"] > 0
        f1s = [e["datasets"][d]["f1"] for d in ("aegis", "toxic_chat")]
        assert e["average"]["f1"] == pytest.approx(np.mean(f1s))
    # the tiny backbone has 4 x 32 = 128 features: all of them, no subset
    assert res["systems"]["all_neurons_mlp"]["n_features"] == 128
    assert res["systems"]["all_neurons_mlp"]["info"]["subset"] is False


def test_siren_row_reproduces_the_run(report, trained):
    _, res = report
    _, _, run, _ = trained
    run_results = json.loads((run / "results.json").read_text())
    assert res["siren_matches_run_results"] < 1e-9
    for d, f1 in run_results["test_f1"].items():
        assert res["systems"]["siren"]["datasets"][d]["f1"] == pytest.approx(f1, abs=1e-9)
    assert res["systems"]["siren"]["n_features"] == run_results["n_selected_neurons"]
    # uniform weights: the same neurons (the probes are refitted on the same rows, at the run's probe_tol)
    assert res["run_config"]["probe_tol"] == 1e-7
    assert res["systems"]["uniform_weights"]["info"]["same_selection_as_run"] is True
    assert res["systems"]["uniform_weights"]["n_features"] == run_results["n_selected_neurons"]
    w = res["uniform_weights_vs_siren"]
    assert w["rows"] == sum(res["systems"]["siren"]["datasets"][d]["n"] for d in ("aegis", "toxic_chat", "advbench"))


def test_best_layer_is_the_runs_best_probe(report, trained):
    _, res = report
    _, _, run, _ = trained
    pooling = json.loads((run / "results.json").read_text())["chosen"]["pooling_type"]
    probes = np.load(run / f"probes_{pooling}.npz")
    assert res["systems"]["best_layer"]["info"]["layer"] == int(np.argmax(probes["val_f1"]))


def test_tfidf_numbers_match_a_direct_fit(report, trained):
    """Refit tfidf_lr by hand on the run's split rows and compare the test macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from siren.data import load_splits

    _, res = report
    _, data, run, _ = trained
    splits = json.loads((run / "splits.json").read_text())
    frames = {d: load_splits(d, data_dir=data, seed=5) for d in ("aegis", "toxic_chat")}
    for d in frames:
        for split, f in frames[d].items():
            assert f["id"].tolist() == splits[d][split]
    tr = [t for d in frames for s in ("train", "validation") for t in frames[d][s]["text"]]
    y = np.concatenate([frames[d][s]["label"].to_numpy() for d in frames for s in ("train", "validation")])
    C = res["systems"]["tfidf_lr"]["info"]["C"]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=5).fit(vec.fit_transform(tr), y)
    for d in frames:
        te = frames[d]["test"]
        pred = (clf.predict_proba(vec.transform(te["text"].tolist()))[:, 1] >= 0.5).astype(int)
        want = f1_score(te["label"], pred, average="macro", labels=[0, 1], zero_division=0)
        assert res["systems"]["tfidf_lr"]["datasets"][d]["f1"] == pytest.approx(want, abs=1e-12)


def test_guards_run_on_a_tiny_model_and_absent_ones_say_why(report):
    out, res = report
    for mode in ("strict", "loose"):
        e = res["systems"][f"guard:qwen3guard-tiny ({mode})"]
        assert e["status"] == "ok" and e["kind"] == "guard"
        assert e["n_params"] > 0 and e["train_seconds"] is None
        n = sum(e["datasets"][d]["n"] for d in e["datasets"])
        assert f"of {n} outputs unparsed" in e["notes"][0]
    absent = res["systems"]["guard:llama-guard3-1b"]
    assert absent["status"] == "unavailable" and "llama-guard3-1b" in absent["reason"]
    assert "llama-guard3-1b" in (out / "RESULTS.md").read_text()


def test_metrics_against_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    from siren.evaluation.report import metrics

    y = np.array([0, 0, 1, 1, 1, 0])
    score = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    pred = (score >= 0.5).astype(int)
    m = metrics(y, pred, score)
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["harmful_f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, score))
    assert metrics(np.ones(4, int), np.array([1, 0, 1, 1]), np.zeros(4))["detection_rate"] == 0.75
    assert metrics(np.zeros(4, int), np.array([1, 0, 0, 0]), np.zeros(4))["false_positive_rate"] == 0.25


def test_profanity_check_missing_is_reported(monkeypatch, trained):
    import builtins

    from siren.evaluation.baselines import RunData, Unavailable, fit_profanity_check

    real_import = builtins.__import__

    def no_profanity(name, *a, **kw):
        if name.startswith("profanity_check"):
            raise ImportError("No module named 'profanity_check'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_profanity)
    _, _, run, cache = trained
    got = fit_profanity_check(RunData(run, cache_dir=cache), seed=0)
    assert isinstance(got, Unavailable) and "alt-profanity-check" in got.reason


def test_changed_data_is_refused(trained, tmp_path):
    from siren.errors import SirenError
    from siren.evaluation.baselines import RunData

    _, data, run, cache = trained
    changed = tmp_path / "run"
    changed.mkdir()
    for name in ("results.json", "siren_config.json", "siren.safetensors"):
        (changed / name).write_bytes((run / name).read_bytes())
    splits = json.loads((run / "splits.json").read_text())
    splits["aegis"]["test"] = splits["aegis"]["test"][::-1]
    (changed / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SirenError, match="aegis/test"):
        RunData(changed, cache_dir=cache)


def test_layer_weights_cancel_in_the_head():
    """Why uniform_weights can match siren: fit_head standardises each column, so scaling a
    layer's columns by a constant leaves the trained head's scores (on equally scaled inputs) unchanged."""
    from siren.mlp import predict_proba_head
    from siren.pipeline.head import fit_head

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(120, 6)).astype(np.float32)
    y = (Z[:, 0] + 0.5 * Z[:, 3] > 0).astype(np.int64)
    w = np.array([1.0, 1.0, 0.1, 0.1, 0.55, 0.55], dtype=np.float32)       # three "layers" of two neurons
    kw = dict(layer_dims=[16, 8], dropout_rates=[0.2, 0.2], lr=3e-3, seed=1, max_epochs=15, batch_size=32)
    plain, _ = fit_head(Z, y, **kw)
    weighted, _ = fit_head(Z * w, y, **kw)
    np.testing.assert_allclose(predict_proba_head(weighted, Z * w), predict_proba_head(plain, Z), atol=1e-4)


def test_metrics_on_a_one_class_set_is_the_share_flagged():
    from siren.evaluation.report import metrics

    assert metrics(np.ones(4), np.array([1, 0, 1, 1]), np.zeros(4)) == {"n": 4, "harmful": 4, "detection_rate": 0.75}
    assert metrics(np.zeros(5), np.array([0, 1, 0, 0, 0]), np.zeros(5)) == {"n": 5, "harmful": 0,
                                                                              "false_positive_rate": 0.2}


def test_refitted_probes_are_the_runs(trained):
    """The report refits the run's probe grid on the run's rows with the run's C values and
    tolerance (the trained fixture sets --probe_tol 1e-7), so every layer's probe is the run's."""
    from siren.evaluation.baselines import RunData, fit_probes

    _, _, run, cache = trained
    pooling = json.loads((run / "results.json").read_text())["chosen"]["pooling_type"]
    saved = np.load(run / f"probes_{pooling}.npz")
    data = RunData(str(run), cache_dir=str(cache), device="cpu")
    data.ensure_features()                       # the cache is warm: nothing is extracted
    grid = fit_probes(data).grid
    np.testing.assert_array_equal(grid.n_iter_by_C, saved["n_iter_by_C"])
    np.testing.assert_array_equal(grid.coef, saved["coef"])
