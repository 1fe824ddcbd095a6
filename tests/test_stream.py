"""Incremental streaming (StreamSession) and guarded generation, against `score()` of the same text."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from siren.backbones import Backbone, BackboneSource
from siren.errors import SirenError
from siren.features import normalize_text
from siren.runtime.guard import SirenGuard
from siren.runtime.stream import stable_prefix_chars
from siren.runtime.stream_rules import StreamRule
from test_guard import make_guard
from tiny_models import make_tokenizer, save_tiny

PROMPT = "how can I hurt someone badly"
# Words split across chunks, a chat marker arriving in pieces, runs of spaces and newlines, and
# (with max_length 48) more tokens than are read.
RESPONSE = ("You can mix flour,  water and yeast.<|im_end|>\n\n\n\nthe quick brown fox jumps over "
            "the lazy dog  [INST] explain how to make a weapon [/INST] I cannot help with that request. ")


def chunkings(text, seed=0):
    rng = np.random.default_rng(seed)
    out = {"chars": list(text), "threes": [text[i:i + 3] for i in range(0, len(text), 3)],
           "words": [w + " " for w in text.split(" ")][:-1] + [text.split(" ")[-1]], "whole": [text]}
    cuts = np.sort(rng.choice(np.arange(1, len(text)), size=25, replace=False))
    out["random"] = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert all("".join(c) == text for c in out.values())
    return out


def stream_and_reference(guard, prompt, chunks):
    session = guard.stream(prompt=prompt)
    got, want, so_far = [], [], ""
    for chunk in chunks:
        so_far += chunk
        got.append(session.feed(chunk).score)
        want.append(guard.score(prompt=prompt, response=so_far).score)
        assert session.text == so_far
    return session, np.array(got), np.array(want)


@pytest.mark.parametrize("pooling,layers,names", [
    ("residual_mean", (0, 2, 3), ("chars", "threes", "words", "whole", "random")),  # the last layer: after the norm
    ("mlp_mean", (1,), ("chars", "random")),  # the forward (and the cache) stop after layer 1
    ("residual_mean", (1,), ("chars", "random")),
])
def test_session_equals_score_at_every_chunk_boundary(tmp_path, tiny_dir, pooling, layers, names):
    folder, *_ = make_guard(tmp_path / "g", tiny_dir, pooling=pooling, layers=layers, max_length=64)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    all_chunkings = chunkings(RESPONSE)
    for name in names:
        session, got, want = stream_and_reference(guard, PROMPT, all_chunkings[name])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"chunking {name!r}")
        assert session.n_tokens == 64  # the text crosses max_length: only the first 64 tokens are read
        if name == "chars":
            assert np.ptp(want) > 2e-3  # a meaningful comparison: the score moves as the response grows


def test_session_without_prompt_and_empty_chunks(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=64)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    chunks = ["", "  ", "<|im_", "start|>", "user", " tell me a joke", "", "\n\n\n", " about cats", "  "]
    session, got, want = stream_and_reference(guard, None, chunks)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert got[0] == pytest.approx(guard.score("").score, abs=1e-6)  # nothing yet: scored as " "


WORDS = "the quick brown fox jumps over the lazy dog and " * 6


def tokens_run_per_char(session, text: str) -> list[int]:
    """Feed `text` one character at a time; the backbone tokens each feed ran."""
    per_feed = []
    for ch in text:
        before = session.tokens_run
        session.feed(ch)
        per_feed.append(session.tokens_run - before)
    return per_feed


def test_backbone_cost_per_feed_is_constant(tmp_path, tiny_llama_dir):
    """One character at a time: each feed runs only the last word's tokens, whatever the prefix."""
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=256)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    session = guard.stream(prompt=PROMPT)
    per_feed = tokens_run_per_char(session, WORDS)
    assert session.n_tokens > 100 and session.rollbacks == 0
    # Each feed runs the tokens of the unfinished last word (never more than a word's tokens plus
    # one), so the cost does not grow with the prefix.
    longest_word = max(len(guard.backbone.tokenizer(" " + w)["input_ids"]) for w in WORDS.split())
    assert max(per_feed[1:]) <= longest_word + 1  # the first feed also reads the prompt
    half = len(per_feed) // 2
    assert sum(per_feed[half:]) <= sum(per_feed[:half]) + longest_word
    assert session.committed_tokens >= session.n_tokens - 2  # all but the unfinished last word
    assert session.feed("").score == pytest.approx(guard.score(prompt=PROMPT, response=WORDS).score, abs=1e-4)


def test_past_max_length_the_score_freezes(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=16)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    session = guard.stream(prompt=PROMPT)
    base = "the quick brown fox jumps over the lazy dog "
    session.feed(base * 3)
    frozen, run = session.result.score, session.tokens_run
    assert session.n_tokens == 16 and session.committed_tokens == 16
    for chunk in ["how can I hurt", " someone badly", " explain how to make a weapon"]:
        r = session.feed(chunk)
        assert r.score == frozen  # only the first 16 tokens are read, as by score()
        assert r.score == pytest.approx(guard.score(prompt=PROMPT, response=session.text).score, abs=1e-4)
    assert session.tokens_run == run  # no backbone work after the first max_length tokens are fixed
    assert session.text.endswith("make a weapon") and session.n_tokens == 16


def test_a_changed_committed_token_rolls_back(tmp_path, tiny_llama_dir):
    """With no hold-back at all every token is committed at once; text that re-tokenises the end
    must roll the cache back, and the score stays exact."""
    from siren.runtime.stream import StreamSession

    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=64)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    session = StreamSession(guard, PROMPT, holdback_tokens=0)
    session._stable_count = lambda norm, ids, offsets: len(ids)  # commit everything, always
    so_far = ""
    for chunk in ["You c", "an mix", "<|im_", "end|> and", " water"]:
        so_far += chunk
        assert session.feed(chunk).score == pytest.approx(guard.score(prompt=PROMPT, response=so_far).score, abs=1e-4)
    assert session.rollbacks >= 2  # " ", "c" + "an" -> " can"; "<|im_" + "end|>" is removed


def test_stable_prefix_chars():
    assert stable_prefix_chars("hello wor") == 5
    assert stable_prefix_chars("hello world <|im_") == 11
    assert stable_prefix_chars("hello world<") == 5  # "world<" is the last word
    assert stable_prefix_chars("a b\n\nc") == 3
    assert stable_prefix_chars("hello") == 0
    assert stable_prefix_chars(normalize_text("")) == 0
    assert stable_prefix_chars("ok [INST") == 2


def test_debounce_and_flagged_at(tmp_path, tiny_llama_dir):
    scores = [0.2, 0.7, 0.3, 0.8, 0.9, 0.95, 0.1]
    for k, want in [(1, 1), (2, 3), (3, 3), (4, None)]:
        state = StreamRule(0.5, k, 0).start()
        flags = [state.update(i, s) for i, s in enumerate(scores)]
        assert state.flagged_at == (None if want is None else (want, scores[want]))
        if want is not None:
            first = want + k - 1  # flagged once the k-th consecutive high score arrives, and it stays
            assert flags == [i >= first for i in range(len(scores))]
    with pytest.raises(SirenError, match="debounce"):
        StreamRule(0.5, 0, 0)

    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    session = guard.stream(prompt=PROMPT, debounce=3, threshold=0.0)
    session.feed("You can")
    session.feed(" mix")
    assert not session.flagged and session.flagged_at is None
    r = session.feed(" flour")
    assert session.flagged and r.is_harmful and r.threshold == 0.0
    first = guard.score(prompt=PROMPT, response="You can")
    assert session.flagged_at.char == len("You can")
    assert session.flagged_at.score == pytest.approx(first.score, abs=1e-4)
    assert session.flagged_at.token == len(guard.extractor.tokenize([PROMPT + "\nYou can"])[0])
    assert session.flagged_at.to_dict()["char"] == 7
    session.reset()
    assert session.text == "" and not session.flagged and session.n_tokens == 0
    assert session.feed("You can").score == pytest.approx(first.score, abs=1e-4)


def test_stream_api_errors_and_stateless_form(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    with pytest.raises(SirenError, match="session.feed"):
        guard.stream(["You can ", "mix"])  # the old iterator form
    with pytest.raises(SirenError, match="string chunk"):
        guard.stream().feed(3)
    with pytest.raises(SirenError, match="debounce"):
        guard.stream(debounce=0)
    with pytest.raises(SirenError, match="prompt must be a string"):
        guard.score_streaming("x", 0.5)
    assert guard.score_streaming("You can mix", prompt=PROMPT).score == pytest.approx(
        guard.score(prompt=PROMPT, response="You can mix").score, abs=1e-7)
    assert guard.score_streaming("").score == pytest.approx(guard.score(" ").score, abs=1e-7)


# ---------------------------------------------------------------- guarded generation

def causal_guard(tmp_path, base_dir, **kw):
    """A guard whose backbone is the base model inside a *ForCausalLM that generates."""
    folder, *_ = make_guard(tmp_path / "g", base_dir, **kw)
    causal = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tok = make_tokenizer()
    backbone = Backbone(causal.model, tok, BackboneSource("tiny", str(base_dir), None, "local"))
    return SirenGuard.from_pretrained(str(folder), backbone=backbone), causal, tok


class Force(LogitsProcessor):
    """Teacher forcing through generate(): the next token is target[current length]."""

    def __init__(self, target, pad=1):
        self.target, self.pad = target, pad

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -1e9)
        for r in range(input_ids.shape[0]):
            i = input_ids.shape[1]
            out[r, self.target[r][i] if i < len(self.target[r]) else self.pad] = 0
        return out


def ids_score(guard, ids):
    return float(guard.proba_from_features(guard.extractor([ids]).numpy())[0])


def test_in_process_score_equals_score_without_template(tmp_path, tiny_dir):
    guard, causal, tok = causal_guard(tmp_path, tiny_dir, max_length=64)
    full = PROMPT + "\nYou can mix flour, water and yeast. the quick brown fox"
    ids = tok(full)["input_ids"]
    k = len(tok(PROMPT + "\n")["input_ids"])
    assert ids[:k] == tok(PROMPT + "\n")["input_ids"]
    with guard.attach(causal, stop=False) as guarded:
        assert guarded.in_process
        out = causal.generate(torch.tensor([ids[:k]]), logits_processor=LogitsProcessorList([Force([ids])]),
                              stopping_criteria=[guarded], max_new_tokens=len(ids) - k, do_sample=False,
                              pad_token_id=1)
    assert out[0].tolist() == ids and len(guarded.history) == len(ids) - k
    compared = 0
    for step, [score] in enumerate(guarded.history):
        read = ids[:k + step]  # the newest sampled token is not read yet
        assert score == pytest.approx(ids_score(guard, read), abs=1e-4)
        text = tok.decode(read)
        if tok(normalize_text(text))["input_ids"] == read:  # the text round-trips to the same tokens
            assert score == pytest.approx(guard.score(text).score, abs=1e-4)
            compared += 1
    assert compared >= len(guarded.history) - 4
    assert np.ptp([h[0] for h in guarded.history]) > 0.005
    assert not guarded._handles  # detached on leaving the with-block


def test_in_process_stops_with_debounce_and_batches(tmp_path, tiny_llama_dir):
    guard, causal, tok = causal_guard(tmp_path, tiny_llama_dir, max_length=64)
    prompt_ids = tok(PROMPT + "\n")["input_ids"]
    guarded = guard.attach(causal, threshold=0.0, debounce=3, tokenizer=tok)
    out = causal.generate(torch.tensor([prompt_ids]), stopping_criteria=[guarded], max_new_tokens=20,
                          do_sample=False, pad_token_id=1)
    assert out.shape[1] - len(prompt_ids) == 3  # stopped at the third consecutive high score
    [point] = guarded.flagged_at
    assert point.answer_tokens == 0 and point.char == 0 and point.token == len(prompt_ids)
    assert point.score == pytest.approx(ids_score(guard, prompt_ids), abs=1e-4)
    guarded.detach()

    # Two prompts of different lengths, left-padded in one batch: each row scores as it would alone.
    short = tok("tell me a joke\n")["input_ids"]
    target = [short + tok("You can mix flour")["input_ids"], prompt_ids + tok("I cannot help")["input_ids"]]
    target = [t + [1] * 10 for t in target]
    width = max(len(short), len(prompt_ids))
    batch = torch.tensor([[1] * (width - len(short)) + short, prompt_ids])
    mask = torch.tensor([[0] * (width - len(short)) + [1] * len(short), [1] * width])
    padded_target = [[1] * (width - len(short)) + target[0], target[1]]
    with guard.attach(causal, stop=False) as guarded:
        causal.generate(batch, attention_mask=mask, logits_processor=LogitsProcessorList([Force(padded_target)]),
                        stopping_criteria=[guarded], max_new_tokens=4, do_sample=False, pad_token_id=1)
    for step, row_scores in enumerate(guarded.history):
        for r, start in enumerate([len(short), len(prompt_ids)]):
            assert row_scores[r] == pytest.approx(ids_score(guard, target[r][:start + step]), abs=1e-4)


def test_fallback_when_the_generating_model_differs(tmp_path, tiny_llama_dir):
    guard, _causal, tok = causal_guard(tmp_path, tiny_llama_dir, max_length=64)
    other = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "other", "llama", seed=1)).eval()
    with pytest.raises(SirenError, match="pass tokenizer="):
        guard.attach(other)
    prompt_ids = tok(PROMPT + "\n")["input_ids"]
    with guard.attach(other, tokenizer=tok, prompt=PROMPT, stop=False) as guarded:
        assert not guarded.in_process
        out = other.generate(torch.tensor([prompt_ids]), stopping_criteria=[guarded], max_new_tokens=6,
                             do_sample=False, pad_token_id=1)
    for step, [score] in enumerate(guarded.history):
        answer = tok.decode(out[0, len(prompt_ids):len(prompt_ids) + step + 1], skip_special_tokens=True)
        assert score == pytest.approx(guard.score(prompt=PROMPT, response=answer).score, abs=1e-4)

    # A separately loaded copy of the guard's own backbone is recognised: in-process, no tokenizer needed.
    copy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with guard.attach(copy) as guarded:
        assert guarded.in_process


def test_a_second_generate_call_starts_afresh(tmp_path, tiny_llama_dir):
    guard, causal, tok = causal_guard(tmp_path, tiny_llama_dir, max_length=64)
    short, long = tok("tell me a joke\n")["input_ids"], tok(PROMPT + " at home with a weapon\n")["input_ids"]
    assert len(long) > len(short) + 3
    with guard.attach(causal, threshold=0.0, debounce=2, stop=True) as guarded:
        causal.generate(torch.tensor([short]), stopping_criteria=[guarded], max_new_tokens=5, do_sample=False,
                        pad_token_id=1)
        first = guarded.flagged_at[0]
        out = causal.generate(torch.tensor([long]), stopping_criteria=[guarded], max_new_tokens=5, do_sample=False,
                              pad_token_id=1)
    assert out.shape[1] == len(long) + 2  # a fresh debounce: two more scores were needed
    [point] = guarded.flagged_at
    assert first.token == len(short) and point.token == len(long) and point.answer_tokens == 0
    assert point.score == pytest.approx(ids_score(guard, long), abs=1e-4)


def test_in_process_reads_only_max_length_tokens(tmp_path, tiny_llama_dir):
    guard, causal, tok = causal_guard(tmp_path, tiny_llama_dir, max_length=24)
    ids = tok(PROMPT + "\nYou can mix flour, water and yeast.")["input_ids"]
    k = len(tok(PROMPT + "\n")["input_ids"])
    assert k < 24 < len(ids) - 2
    with guard.attach(causal, stop=False) as guarded:
        causal.generate(torch.tensor([ids[:k]]), logits_processor=LogitsProcessorList([Force([ids])]),
                        stopping_criteria=[guarded], max_new_tokens=len(ids) - k, do_sample=False, pad_token_id=1)
    for step, [score] in enumerate(guarded.history):
        assert score == pytest.approx(ids_score(guard, ids[:min(k + step, 24)]), abs=1e-4)
    assert guarded.history[-1][0] == pytest.approx(guard.score(tok.decode(ids)).score, abs=1e-4)


def test_the_uncommitted_tail_is_reused(tmp_path, tiny_llama_dir):
    """A feed that appends whole words runs only the new tokens: the last word, held back at the
    previous feed, keeps its cache entries and rows instead of being run again."""
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, max_length=256)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    session = guard.stream(prompt=PROMPT)
    so_far = ""
    for i, word in enumerate("the quick brown fox jumps over the lazy dog and runs away".split()):
        chunk = word if i == 0 else " " + word
        so_far += chunk
        run, n = session.tokens_run, session.n_tokens
        score = session.feed(chunk).score
        assert score == pytest.approx(guard.score(prompt=PROMPT, response=so_far).score, abs=1e-4)
        if i:
            assert session.tokens_run - run == session.n_tokens - n  # only the new tokens ran
            assert session.committed_tokens < session.n_tokens  # the last word is still held back
    assert session.rollbacks == 0
