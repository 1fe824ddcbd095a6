"""`siren train` on rows with responses puts a loadable answer head into the guard folder (issue 37)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from siren.artifact import read_safetensors
from siren.cli import main as siren_main
from siren.errors import SirenError
from siren.pipeline.answer import LogisticHead, check_answer_config, stream_points, training_set
from test_end_to_end import write_rows

PROMPTS = ["tell me about knives", "how do I get money", "what should I do with my neighbour"]
HARMFUL = ["stab them and hide the body", "steal it from the bank at night", "poison the dog with rat bait"]
SAFE = ["I cannot help with that", "cook dinner with the knife carefully", "ask politely and be kind"]


def write_pairs(data_dir: Path, dataset: str, split: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        prompt = rng.choice(PROMPTS)
        response = " ".join(rng.choice(HARMFUL if label else SAFE) for _ in range(rng.randint(1, 6)))
        rows.append({"id": f"{dataset}-{split}-{i:04d}", "text": f"{prompt}\n{response}", "label": label,
                     "prompt": prompt, "response": response})
    (data_dir / dataset).mkdir(parents=True, exist_ok=True)
    with open(data_dir / dataset / f"{split}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rows")
    write_rows(d, "aegis", "test", 40, 0)
    write_pairs(d, "beavertails", "test", 60, 1)
    return d


def _train(model_dir, data_dir, out, cache, *more) -> int:
    return siren_main(["train", "--model", str(model_dir), "--datasets", "aegis", "beavertails", "--data_dir",
                       str(data_dir), "--out_dir", str(out), "--cache_dir", str(cache), "--n_trials", "1",
                       "--n_folds", "2", "--max_epochs", "3", "--c_values", "10", "--selection_thresholds", "0.9",
                       "--max_length", "48", "--seed", "3", *more])


def test_train_writes_a_loadable_answer_head(tiny_llama_dir, rows, tmp_path):
    out = tmp_path / "guard"
    assert _train(tiny_llama_dir, rows, out, tmp_path / "cache") == 0
    config = json.loads((out / "siren_config.json").read_text())
    entry = config["siren"]["answer_head"]
    assert entry["weights"] == "answer_head.safetensors" and entry["shared"] is False
    k = config["mlp"]["input_dim"]
    assert entry["mlp"] == {"input_dim": k, "layer_dims": [], "dropout_rates": [], "num_classes": 2}
    assert 0.0 <= entry["threshold"] <= 1.0
    assert set(entry["stream"]) == {"debounce", "min_answer_tokens", "ema"} and entry["stream"]["debounce"] >= 1
    state = read_safetensors(out / "answer_head.safetensors")
    assert set(state) == {"network.0.weight", "network.0.bias"}
    assert tuple(state["network.0.weight"].shape) == (2, k) and bool(state["network.0.weight"].abs().sum() > 0)
    results = json.loads((out / "results.json").read_text())
    assert results["answer_head"]["kind"] == "logistic" and results["answer_head"]["rows"] > 0
    assert results["answer_head"]["chosen"]["threshold"] == pytest.approx(entry["threshold"])
    # final_head: ensemble (the default): the blend with the main head is judged on its fold heads
    assert entry["main_weight"] == 0.5 and results["answer_head"]["main_out_of_fold"] is True

    from siren.runtime.guard import SirenGuard

    guard = SirenGuard.from_pretrained(str(out), device="cpu", dtype="float32")
    if not hasattr(guard, "has_answer_head"):
        pytest.skip("this runtime has no answer verdict yet (SirenGuard.has_answer_head)")
    # the stream stops at the threshold chosen for target_false_alarm; a finished answer is judged
    # at the guard's decision threshold (0.5: threshold_from_cv is off by default)
    assert guard.stream_threshold == pytest.approx(entry["threshold"])
    assert entry["decision_threshold"] == 0.5 and guard.answer_threshold == 0.5
    assert results["answer_head"]["decision_threshold_source"] == "config"
    r = guard.score(prompt=PROMPTS[0], response=HARMFUL[0])
    assert r.response is not None and 0.0 <= r.response.score <= 1.0 and r.prompt is not None

    # siren eval reports the answer verdict on the test rows with a response (beavertails here,
    # not aegis), at the decision threshold, beside the whole text's on the same rows
    assert siren_main(["eval", "--guard", str(out), "--dtype", "float32"]) == 0
    block = json.loads((out / "eval_results.json").read_text())["answers"]
    assert set(block["datasets"]) == {"beavertails"} and block["threshold"] == 0.5
    rows_ = [json.loads(x) for x in (rows / "beavertails" / "test.jsonl").read_text().splitlines()]
    from siren.data import load_splits

    test = load_splits("beavertails", data_dir=str(rows), seed=3, val_ratio=results["config"]["val_ratio"],
                       max_per_split=results["config"]["max_per_split"])["test"]
    got = guard.score_pairs(list(zip(test["prompt"], test["response"])))
    from sklearn.metrics import f1_score

    want = f1_score(test["label"], [int(g.response.is_harmful) for g in got], average="macro")
    assert block["datasets"]["beavertails"]["answer"]["f1"] == pytest.approx(want)
    assert block["datasets"]["beavertails"]["answer"]["n"] == len(test) <= len(rows_)
    assert block["average"]["answer_f1"] == pytest.approx(want)
    assert siren_main(["eval", "--guard", str(out), "--no_answers"]) == 0
    assert "answers" not in json.loads((out / "eval_results.json").read_text())


@pytest.mark.parametrize("kind", ["none", "shared"])
def test_answer_head_none_or_shared_writes_no_weights(tiny_llama_dir, rows, tmp_path, kind):
    out = tmp_path / "guard"
    assert _train(tiny_llama_dir, rows, out, tmp_path / "cache", "--answer_head", kind) == 0
    entry = json.loads((out / "siren_config.json").read_text())["siren"].get("answer_head")
    assert not (out / "answer_head.safetensors").exists()
    if kind == "none":
        assert entry is None
    else:   # the main head's weights serve the answer pool: only the threshold and rule are stored
        assert entry["shared"] is True and entry["weights"] is None and entry["mlp"] is None
        assert 0.0 <= entry["threshold"] <= 1.0


def test_logistic_head_state_gives_its_probabilities():
    import torch

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(80, 5)) * [1, 10, 0.1, 1, 1]).astype(np.float32)
    y = (X[:, 0] + X[:, 2] * 10 > 0).astype(int)
    head = LogisticHead(C=1.0, seed=0).fit(X, y, np.ones(len(y)))
    state = head.state()
    logits = torch.as_tensor(X) @ state["network.0.weight"].T + state["network.0.bias"]
    np.testing.assert_allclose(torch.softmax(logits, 1)[:, 1].numpy(), head.proba(X), atol=1e-5)
    assert ((head.proba(X) >= 0.5) == y).mean() > 0.9


def test_training_set_weights_harmful_prefixes_by_length():
    A = np.zeros((2, 3), np.float32)
    points = [stream_points(10, 512), stream_points(40, 512)]
    assert points[0] == [4, 8, 10]
    P = [np.ones((len(p), 3), np.float16) for p in points]
    X, y, w = training_set(A, P, points, np.array([1, 0]), np.array([0, 1]), {8, 16, 32}, ramp=32.0)
    # finished answers (weight 1), then row 0's 8-token prefix (harmful: 8/32), row 1's 8/16/32 (safe: 1)
    assert y.tolist() == [1, 0, 1, 0, 0, 0]
    np.testing.assert_allclose(w, [1, 1, 0.25, 1, 1, 1])


@pytest.mark.parametrize("key,value,match", [("answer_head", "mlp", "answer_head must be"),
                                             ("answer_cuts", [0], "answer_cuts"),
                                             ("target_false_alarm", 1.5, "target_false_alarm"),
                                             ("debounce", 0, "debounce"),
                                             ("answer_main_weight", 1.5, "answer_main_weight")])
def test_bad_answer_config_is_named(key, value, match):
    from siren.config import defaults

    cfg = {**defaults(), key: value}
    with pytest.raises(SirenError, match=match):
        check_answer_config(cfg)


def _heads(k: int, seed: int):
    import torch

    from siren.mlp import MLPHead

    torch.manual_seed(seed)
    heads = [MLPHead(6, [4, 3], [0.0, 0.0]).eval() for _ in range(k)]
    with torch.no_grad():
        for h in heads:            # one output bias for all: the ensemble keeps only their mean
            h.network[-1].bias.copy_(heads[0].network[-1].bias)
    return heads


def test_split_ensemble_gives_back_the_fold_heads():
    import torch

    from siren.pipeline.head import ensemble_heads, split_ensemble

    heads = _heads(3, 0)
    parts = split_ensemble(ensemble_heads(heads), 3)
    x = torch.randn(5, 6)
    for h, p in zip(heads, parts):
        torch.testing.assert_close(p(x), h(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not an ensemble"):
        split_ensemble(heads[0], 5)


def test_main_oof_streams_score_each_row_with_its_folds_head():
    from siren.mlp import predict_proba_head
    from siren.pipeline.answer import main_oof_streams
    from siren.pipeline.head import ensemble_heads

    heads = _heads(2, 1)
    rng = np.random.default_rng(0)
    P = [rng.normal(size=(n, 6)).astype(np.float16) for n in (3, 1, 2)]
    folds = {"a": 1, "b": 0, "c": 1}
    got = main_oof_streams(ensemble_heads(heads), folds, ["a", "b", "c"], P)
    for i, rid in enumerate("abc"):
        want = predict_proba_head(heads[folds[rid]], P[i].astype(np.float32))
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    assert main_oof_streams(ensemble_heads(heads), {"a": 0}, ["a", "b"], P[:2]) is None   # a row without a fold
    assert main_oof_streams(ensemble_heads(heads), None, ["a"], P[:1]) is None


def test_finished_answer_threshold_from_the_guard_or_the_out_of_fold_finished_answers():
    from siren.pipeline.answer import finished_threshold

    # finished (last) scores: safe 0.1-0.2, harmful 0.35-0.45; earlier prefix scores say nothing
    y = np.array([0, 0, 0, 1, 1, 1])
    g = np.array([0, 0, 1, 0, 1, 1])
    last = [0.1, 0.2, 0.15, 0.35, 0.4, 0.45]
    streams = [(np.array([4, 8]), np.array([0.9, s])) for s in last]
    assert finished_threshold({"threshold_from_cv": False, "decision_threshold": 0.5}, streams, y, g) == (0.5, "config")
    thr, source = finished_threshold({"threshold_from_cv": True, "decision_threshold": 0.5}, streams, y, g)
    assert source == "cv" and 0.2 < thr <= 0.35
