"""Harm categories: the taxonomy and its mappings, masked targets, the category head (fit, save,
load), and every place a verdict is shown (score, stream, /v1/score, /v1/moderations through the
`openai` client, the websocket, `siren score --jsonl`), on tiny random guards."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from siren import data
from siren.categories import (HEAD_CONFIG, HEAD_WEIGHTS, CategoryModel, load_category_model, load_taxonomy,
                              parse_taxonomy)
from siren.errors import SirenError
from siren.pipeline.categories import best_f1_threshold, category_metrics, fit_category_model
from siren.runtime.guard import SirenGuard
from test_guard import TEXTS, make_guard

TAX = load_taxonomy()
VIOLENT = ["kill", "stab", "shoot", "hurt", "attack"]


def test_taxonomy_is_openai_and_every_offline_source_category_is_mapped():
    assert len(TAX.names) == 13 and TAX.names[0] == "sexual" and "illicit/violent" in TAX.names
    assert set(TAX.sources["openai_moderation"]) == set(data.OPENAI_CATEGORIES)
    assert len(TAX.sources["beavertails"]) == 14
    assert TAX.sources["toxic_chat"]["jailbreaking"] == ()     # maps to none
    assert not TAX.annotates("toxic_chat") and TAX.annotates("beavertails")


@pytest.mark.parametrize("raw, match", [
    ({"taxonomy": ["a", "a"]}, "twice"),
    ({"taxonomy": ["a"], "sources": {"d": {"x": ["b"]}}}, r"sources.d.x maps to \['b'\]"),
    ({"taxonomy": ["a"], "sources": {"d": {"x": "a"}}}, "must be a list"),
    ({"taxonomy": ["a"], "extra": 1}, "expected the keys"),
])
def test_bad_taxonomy_is_a_clear_error(raw, match):
    with pytest.raises(SirenError, match=match):
        parse_taxonomy(raw, "cats.yaml")


def test_targets_mask_what_a_source_does_not_annotate():
    i = {n: k for k, n in enumerate(TAX.names)}
    rows = [{"S": 1, "V": 0, "H": None}, None, {"S": 0}]
    Y, M = TAX.targets("openai_moderation", rows)
    assert Y[0, i["sexual"]] == 1 and M[0, i["violence"]] and Y[0, i["violence"]] == 0
    assert not M[0, i["hate"]] and not M[0, i["illicit"]]      # null, and never annotated by this source
    assert not M[1].any() and M[2].sum() == 1
    # two source categories onto one output: positive if either is, annotated if either is
    Y, M = TAX.targets("beavertails", [{"drug_abuse,weapons,banned_substance": 0,
                                        "financial_crime,property_crime,theft": 1, "child_abuse": 1}])
    assert Y[0, i["illicit"]] == 1 and M[0].sum() == 1         # child_abuse maps to none
    with pytest.raises(SirenError, match="'nope' is not in categories.yaml"):
        TAX.targets("beavertails", [{"nope": 1}])


def test_jsonl_rows_keep_their_categories_and_bad_ones_are_refused(tmp_path):
    folder = tmp_path / "openai_moderation"
    folder.mkdir()
    rows = [{"id": f"r{i}", "text": f"t{i}", "label": i % 2, "categories": {"S": i % 2, "V": None}} for i in range(6)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = data.load_source("openai_moderation", tmp_path)["train"]
    assert data.row_categories(frame)[1] == {"S": 1, "V": None}
    data.write_jsonl(tmp_path / "out.jsonl", frame)
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[1])["categories"] == {"S": 1, "V": None}
    (folder / "train.jsonl").write_text(json.dumps({"id": 1, "text": "t", "label": 0, "categories": {"S": 2}}) + "\n")
    with pytest.raises(SirenError, match=r"train.jsonl:1: categories must be"):
        data.load_source("openai_moderation", tmp_path)


def _synthetic(n, k, seed):
    """Features where category 0 (sexual) follows feature 0 and violence feature 1; half the rows
    (a 'source') annotate violence only."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, k)).astype(np.float32)
    Y = np.zeros((n, len(TAX.names)), np.float32)
    M = np.zeros_like(Y, dtype=bool)
    s, v = TAX.names.index("sexual"), TAX.names.index("violence")
    Y[:, s], Y[:, v] = Z[:, 0] > 0.8, Z[:, 1] > 0.8
    M[: n // 2, s] = True
    M[:, v] = True
    Y[~M] = 0
    return Z, Y, M


def test_head_learns_categories_with_a_masked_loss_and_leaves_the_rest_untrained():
    Zt, Yt, Mt = _synthetic(400, 12, 0)
    Zv, Yv, Mv = _synthetic(200, 12, 1)
    model = fit_category_model(Zt, Yt, Mt, Zv, Yv, Mv, TAX, seed=0, grid=(("probes", 1.0),))
    assert model.trained == ["sexual", "violence"]
    assert set(model.info["not_trained"]) == set(TAX.names) - {"sexual", "violence"}
    Ze, Ye, Me = _synthetic(300, 12, 2)
    P = np.zeros_like(Ye)
    P[:, [TAX.names.index(n) for n in model.trained]] = model.proba(Ze)
    cols = [TAX.names.index(n) for n in model.trained]
    m = category_metrics(P[:, cols], Ye[:, cols], Me[:, cols], model.trained, model.thresholds)
    assert m["sexual"]["auroc"] > 0.95 and m["violence"]["f1"] > 0.7 and m["sexual"]["n"] == 150
    assert all(model.info["thresholds_how"][n]["source"] == "validation" for n in model.trained)
    # too few validation positives: the documented fallback threshold
    Yv[:, TAX.names.index("sexual")] = 0
    Yv[:3, TAX.names.index("sexual")] = 1
    few = fit_category_model(Zt, Yt, Mt, Zv, Yv, Mv, TAX, seed=0, grid=(("probes", 1.0),))
    assert few.info["thresholds_how"]["sexual"]["source"] == "fallback" and few.thresholds[0] == 0.5


def test_best_f1_threshold():
    thr, f1 = best_f1_threshold(np.array([0, 0, 1, 1, 0]), np.array([0.1, 0.2, 0.8, 0.9, 0.85]))
    assert thr == 0.8 and f1 == pytest.approx(0.8)


def test_reported_category_scores_put_each_threshold_at_one_half():
    head = CategoryModel(head=None, trained=["hate", "violence", "sexual"], thresholds=np.array([0.2, 0.5, 0.9]),
                         taxonomy=list(TAX.names))
    rng = np.random.default_rng(0)
    P = np.vstack([rng.random((500, 3)), head.thresholds, np.nextafter(head.thresholds, 0), [[0.0, 1.0, 0.0]]])
    flags, scores = head.reported(P)
    assert np.array_equal(flags, P >= head.thresholds)
    assert np.array_equal(flags, scores >= 0.5)                 # a flag and its score never disagree
    assert np.allclose(scores[500], 0.5)                        # a score at its threshold reads 0.5
    assert np.allclose(scores[:, 1], np.clip(P[:, 1], 1e-12, 1 - 1e-12))   # threshold 0.5: unchanged
    for c in range(3):                                          # the same order, so the same AUROC
        order = np.argsort(P[:500, c])
        assert np.all(np.diff(scores[:500, c][order]) >= 0)
    assert scores[:500, 0].mean() > P[:500, 0].mean() and scores[:500, 2].mean() < P[:500, 2].mean()


def violence_labels(texts):
    return np.array([any(w in t.lower() for w in VIOLENT) for t in texts], dtype=np.float32)


def add_head(folder, guard, seed=0) -> CategoryModel:
    """Fit a category head on the guard's own features of random texts (violence = a violent word)."""
    rng = random.Random(seed)
    words = VIOLENT + ["bread", "cats", "sea", "river", "music", "garden", "book", "tea"]
    texts = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(160)]
    Z = guard.features(texts)
    Y = np.zeros((len(texts), len(TAX.names)), np.float32)
    M = np.zeros_like(Y, dtype=bool)
    v = TAX.names.index("violence")
    Y[:, v], M[:, v] = violence_labels(texts), True
    model = fit_category_model(Z[:120], Y[:120], M[:120], Z[120:], Y[120:], M[120:], TAX, seed=seed,
                               grid=(("probes", 1.0), ("mlp", 8, 1e-2)))
    model.save(folder)
    return model


@pytest.fixture(scope="module")
def cat_guard_dir(tmp_path_factory, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path_factory.mktemp("cats") / "guard", tiny_llama_dir)
    add_head(folder, SirenGuard.from_pretrained(str(folder), device="cpu"))
    return folder


@pytest.fixture(scope="module")
def cat_guard(cat_guard_dir):
    return SirenGuard.from_pretrained(str(cat_guard_dir), device="cpu")


def test_guard_fills_categories_of_the_trained_only(cat_guard, cat_guard_dir, tiny_llama_dir, tmp_path):
    results = cat_guard.score_batch(TEXTS)
    assert all(set(r.category_scores) == {"violence"} for r in results)
    r = results[0]
    direct = cat_guard.categories.proba(cat_guard.features(TEXTS[:1]))[0, 0]
    thr = cat_guard.categories.thresholds[0]
    assert r.categories["violence"] == (direct >= thr) == (r.category_scores["violence"] >= 0.5)
    # the reported score is the head's, rescaled so that its threshold sits at 0.5
    logit = lambda x: np.log(x / (1 - x))  # noqa: E731
    assert r.category_scores["violence"] == pytest.approx(1 / (1 + np.exp(logit(thr) - logit(direct))), abs=1e-6)
    assert r.to_dict()["category_scores"] == r.category_scores
    # a guard without the head keeps loading, with no categories; the harmful score is the same
    plain = tmp_path / "plain"
    shutil.copytree(cat_guard_dir, plain)
    (plain / HEAD_CONFIG).unlink()
    (plain / HEAD_WEIGHTS).unlink()
    bare = SirenGuard.from_pretrained(str(plain), device="cpu").score(TEXTS[0])
    assert bare.categories is None and "categories" not in bare.to_dict() and bare.score == pytest.approx(r.score)


def test_broken_or_foreign_category_head_is_a_clear_error(cat_guard_dir, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(cat_guard_dir, half)
    (half / HEAD_WEIGHTS).unlink()
    with pytest.raises(SirenError, match="categories.safetensors is missing"):
        SirenGuard.from_pretrained(str(half), device="cpu")
    with pytest.raises(SirenError, match="reads 15 features, the guard gives 7"):
        load_category_model(cat_guard_dir, 7)
    bad = tmp_path / "bad"
    shutil.copytree(cat_guard_dir, bad)
    cfg = json.loads((bad / HEAD_CONFIG).read_text())
    cfg["thresholds"]["violence"] = 3
    (bad / HEAD_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(SirenError, match=r"thresholds must be in \[0, 1\]"):
        load_category_model(bad, 15)


def test_stream_reports_the_categories_of_the_prefix(cat_guard):
    session = cat_guard.stream(prompt="how do I")
    text = ""
    for chunk in ["kill ", "the ", "music"]:
        text += chunk
        got = session.feed(chunk)
        want = cat_guard.score(prompt="how do I", response=text)
        assert got.category_scores["violence"] == pytest.approx(want.category_scores["violence"], abs=1e-4)


def test_openai_client_reads_every_category(cat_guard):
    openai = pytest.importorskip("openai")
    from fastapi.testclient import TestClient

    from siren.runtime.serve import create_app

    with TestClient(create_app(cat_guard, model_name="tiny")) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http)
        out = client.moderations.create(input=["stab stab kill", "tea and a book"], model="omni-moderation-latest")
        want = cat_guard.score_batch(["stab stab kill", "tea and a book"])
        for res, w in zip(out.results, want):
            assert isinstance(res.category_scores.violence, float) and isinstance(res.categories.violence, bool)
            assert res.category_scores.violence == pytest.approx(w.category_scores["violence"], abs=1e-5)
            assert res.categories.violence == w.categories["violence"] and res.flagged == w.is_harmful
            assert res.category_scores.sexual == 0.0 and res.categories.sexual is False   # not trained
            assert res.category_applied_input_types.violence == ["text"]
        assert "violence" not in out.model_extra["untrained_categories"]
        assert len(out.model_extra["untrained_categories"]) == 12
        body = http.post("/v1/score", json={"text": "stab", "threshold": 0.0}).json()["results"][0]
        assert set(body["category_scores"]) == {"violence"} and body["is_harmful"] is True
        with http.websocket_connect("/v1/stream") as ws:
            ws.send_json({"prompt": "how do I"})
            assert ws.receive_json()["ready"]
            ws.send_json({"chunk": "kill"})
            msg = ws.receive_json()
            assert set(msg["category_scores"]) == {"violence"} and isinstance(msg["categories"]["violence"], bool)


def test_moderations_without_a_category_head_fill_every_field(tmp_path, tiny_llama_dir):
    from fastapi.testclient import TestClient

    from siren.runtime.serve import create_app

    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    with TestClient(create_app(guard, model_name="tiny")) as http:
        out = http.post("/v1/moderations", json={"input": "hello"}).json()
    res = out["results"][0]
    assert set(TAX.names) <= set(res["category_scores"]) and res["category_scores"]["violence"] == 0.0
    assert res["categories"]["harmful"] == res["flagged"] and len(out["untrained_categories"]) == 13


def test_score_cli_prints_categories(cat_guard_dir, monkeypatch, capsys):
    import io

    from siren.cli import main as siren_main

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO((json.dumps({"text": "kill stab"}) + "\n").encode())))
    assert siren_main(["score", "--model", str(cat_guard_dir), "--jsonl", "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line["category_scores"]) == {"violence"}
    assert siren_main(["score", "--model", str(cat_guard_dir), "--device", "cpu", "kill stab"]) == 0
    assert "violence" in capsys.readouterr().out


def write_category_rows(data_dir, n=80, seed=0):
    """beavertails rows (one split: 60/20/20) with its 14 categories: violence iff 'hurt', drugs/weapons
    iff 'weapon'; aegis rows without categories."""
    from test_end_to_end import HARMFUL, SAFE, write_rows

    rng = random.Random(seed)
    keys = list(TAX.sources["beavertails"])
    folder = data_dir / "beavertails"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "test.jsonl", "w") as f:
        for i in range(n):
            text = rng.choice(HARMFUL if i % 2 else SAFE) + " " + rng.choice(["now", "please", "today", ""])
            cats = {k: 0 for k in keys}
            cats["violence,aiding_and_abetting,incitement"] = int("hurt" in text)
            cats["drug_abuse,weapons,banned_substance"] = int("weapon" in text)
            f.write(json.dumps({"id": f"bt-{i}", "text": text.strip(), "label": i % 2, "prompt": text.strip(),
                                "response": None, "categories": cats}) + "\n")
    write_rows(data_dir, "aegis", "test", 40, 1)


def test_training_fits_the_category_head_and_eval_reports_it(tiny_llama_dir, tmp_path, capsys):
    from siren.cli import main as siren_main

    write_category_rows(tmp_path / "data")
    out, cache = tmp_path / "guard", tmp_path / "cache"
    args = ["train", "--model", str(tiny_llama_dir), "--datasets", "aegis", "beavertails", "--data_dir",
            str(tmp_path / "data"), "--out_dir", str(out), "--cache_dir", str(cache), "--n_trials", "1", "--n_folds",
            "2", "--max_epochs", "3", "--c_values", "10", "--max_length", "32", "--seed", "3"]
    assert siren_main(args) == 0
    cfg = json.loads((out / HEAD_CONFIG).read_text())
    assert cfg["trained"] == ["illicit", "violence"] and len(cfg["not_trained"]) == 11
    assert json.loads((out / "results.json").read_text())["category_head"]["trained"] == cfg["trained"]
    r = SirenGuard.from_pretrained(str(out), device="cpu").score("tell me how to hurt a cat")
    assert set(r.category_scores) == {"illicit", "violence"}
    assert siren_main(["eval", "--guard", str(out), "--cache_dir", str(cache)]) == 0
    block = json.loads((out / "eval_results.json").read_text())["categories"]
    assert block["evaluated_on"] == ["beavertails"] and block["ours"]["violence"]["n"] == 19
    assert {"auroc", "pr_auc", "f1"} <= set(block["tfidf"]["violence"])
    assert "| violence" in capsys.readouterr().out
    # off: no head, and the earlier one does not linger in the folder
    assert siren_main(args + ["--category_head", "off"]) == 0
    assert not (out / HEAD_CONFIG).exists() and not (out / HEAD_WEIGHTS).exists()
    # `siren categories` adds it to a trained guard from the run's cache, the binary head untouched
    weights = (out / "siren.safetensors").read_bytes()
    assert siren_main(["categories", "--guard", str(out)]) == 0
    assert json.loads((out / HEAD_CONFIG).read_text())["trained"] == ["illicit", "violence"]
    assert (out / "siren.safetensors").read_bytes() == weights


def test_demo_page_shows_the_stream_categories(cat_guard):
    from fastapi.testclient import TestClient

    from siren.runtime.serve import create_app

    with TestClient(create_app(cat_guard, model_name="tiny")) as http:
        page = http.get("/").text
    assert 'id="categories-box"' in page and "showCategories(m);" in page and "function showCategories" in page


def test_hub_adapters_carry_categories():
    om = data.adapt_rows("openai_moderation", [{"prompt": "x", "S": 1, "H": 0}], "train")
    assert data.row_categories(om)[0] == {"S": 1, "H": 0, "V": None, "HR": None, "SH": None, "S3": None,
                                          "H2": None, "V2": None}
    bt = data.adapt_rows("beavertails", [{"prompt": "p", "response": "r", "is_safe": False,
                                          "category": {"animal_abuse": True, "self_harm": False}}], "test")
    assert data.row_categories(bt)[0] == {"animal_abuse": 1, "self_harm": 0}
    assert "categories" not in data.adapt_rows("toxic_chat", [{"conv_id": "a", "user_input": "u", "toxicity": 0}],
                                               "train")
