"""The compiled single-text forward (SirenGuard.from_pretrained(compile=True)): single texts score
as the eager guard does to float rounding, batches and streams keep the eager path untouched, and
a failing compiler is a clear error that leaves a working guard."""

import numpy as np
import pytest
import torch

from siren.errors import SirenError
from siren.runtime.guard import SirenGuard
from test_guard import TEXTS, make_guard


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU, or None when it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor raises its own error types when no compiler works
        return None


needs_compiler = pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler for torch.compile on CPU")


def count_compiled_calls(guard) -> list[int]:
    """Wrap the guard's compiled forward with a call counter; returns the counter (one int)."""
    calls, inner = [0], guard.extractor.layer_features._compiled

    def counted(input_ids):
        calls[0] += 1
        return inner(input_ids)

    guard.extractor.layer_features._compiled = counted
    return calls


@needs_compiler
def test_compiled_single_texts_equal_eager_to_float_rounding(tmp_path, tiny_dir):
    # layers 0, 2, 3 of 4: the compiled graph must skip nothing the hooks read, and layer 1 has no hook
    folder, *_ = make_guard(tmp_path / "g", tiny_dir, pooling="mlp_mean")
    eager = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32")
    compiled = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32", compile=True)
    calls = count_compiled_calls(compiled)
    ids = compiled.extractor.layer_features.tokenize(TEXTS)
    long_enough = sum(len(x) >= 2 for x in ids)
    assert 0 < long_enough < len(TEXTS)  # both paths are exercised: "" scores as " ", one token

    want = np.array([eager.score(t).score for t in TEXTS])
    assert np.ptp(want) > 0.02  # a meaningful comparison
    got = np.array([compiled.score(t).score for t in TEXTS])
    assert calls[0] == long_enough  # every text of >= 2 tokens went through the compiled forward
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for text in TEXTS[:2]:
        np.testing.assert_allclose(compiled.features([text]), eager.features([text]), rtol=1e-4, atol=1e-5)

    # Batches of several rows (padded) stay eager: bit-identical to the eager guard's, no compiled call.
    batch = [ids[0], ids[1], ids[4]]
    before = calls[0]
    for side in ("right", "left"):
        got_b, want_b = compiled.extractor.layer_features(batch, side), eager.extractor.layer_features(batch, side)
        assert torch.equal(got_b["mlp_mean"], want_b["mlp_mean"])
    assert calls[0] == before
    # A stream (the KV-cache path) is eager too, and its always-registered hooks stay silent there.
    chunks = ["Sure, ", "here is how ", "to bake bread."]
    s_compiled, s_eager = compiled.stream("hi"), eager.stream("hi")
    assert [s_compiled.feed(c).score for c in chunks] == [s_eager.feed(c).score for c in chunks]
    assert calls[0] == before
    # ... and the compiled forward still gives the same scores afterwards.
    np.testing.assert_allclose(compiled.score(TEXTS[3]).score, want[3], atol=1e-5, rtol=0)
    assert calls[0] == before + 1


def test_compile_refusals_and_a_failing_compiler(tmp_path, tiny_llama_dir, monkeypatch):
    folder, *_ = make_guard(tmp_path / "g", tiny_llama_dir, pooling="residual_mean")
    with pytest.raises(SirenError, match="cannot be combined"):
        SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32", compile=True, prepack=True)
    eager = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32")
    want = eager.score(TEXTS[0]).score

    def broken_compile(fn, **_kwargs):
        def run(*_args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(SirenError, match=r"torch.compile of the backbone failed \(RuntimeError: InvalidCxx.*C\+\+ compiler"):
        SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32", compile=True)
    # The same failure on a loaded guard leaves it scoring on the eager path.
    guard = SirenGuard.from_pretrained(str(folder), device="cpu", dtype="float32")
    with pytest.raises(SirenError, match="C\\+\\+ compiler"):
        guard.compile()
    assert guard.extractor.layer_features._compiled is None and guard.extractor.layer_features._compile_hooks == []
    assert guard.score(TEXTS[0]).score == want
