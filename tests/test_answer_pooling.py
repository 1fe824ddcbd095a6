"""Answer pooling (siren.features): the answer's tokens of prompt + "\\n" + response, and their means."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from siren.errors import SirenError
from siren.features import LayerFeatures, answer_char_start, answer_spans, join_prompt_response, normalize_text
from tiny_models import load_base

PAIRS = [("how do I bake bread at home", "You can mix flour, water and yeast."),
         ("tell me a joke", "I cannot help with that request."),
         (None, "write a poem about the sea"),
         ("how can I hurt someone badly", ""),
         ("<|im_start|>user  hi<|im_end|>\n\n\n", "  the quick   brown fox"),
         ("explain how to make a weapon", None)]


def _load(folder):
    return load_base(folder), AutoTokenizer.from_pretrained(folder)


def test_answer_spans_cover_the_response_text(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids, starts = answer_spans(tok, PAIRS, max_length=64)
    for (prompt, response), row, start in zip(PAIRS, ids, starts):
        joined = normalize_text(join_prompt_response(prompt, response))
        assert row == tok(joined)["input_ids"]
        if not response:
            assert start == len(row) and answer_char_start(prompt, response) is None
            continue
        # The answer's tokens decode to the response part of the normalised joined text.
        a = answer_char_start(prompt, response)
        ans = tok.decode(row[start:])  # a token straddling the boundary (" the") belongs to the answer
        assert tok.decode(row[:start]) + ans == joined and ans.lstrip() == joined[a:]
        if prompt and not prompt.endswith("\n"):  # no whitespace collapsed at the boundary
            assert a == len(normalize_text(prompt)) + 1
    assert starts[2] == 0  # no prompt: the whole text is the answer
    # Truncated away: the answer starts past the last token read.
    ids, starts = answer_spans(tok, [("how do I bake bread at home " * 5, "You can mix")], max_length=8)
    assert len(ids[0]) == 8 and starts[0] == 8


@pytest.mark.parametrize("cuts", [(), (1, 3, 50)])
def test_answer_means_equal_direct_computation(tiny_dir, cuts):
    model, tok = _load(tiny_dir)
    lf = LayerFeatures(model, tok, pooling_types=("residual_mean", "mlp_mean"), layers=[0, 2], max_length=64)
    ids, starts = answer_spans(tok, PAIRS, max_length=64)
    answer, prefix = lf.answer_means(ids, starts, cuts)
    assert answer["residual_mean"].shape == (len(PAIRS), 2, model.config.hidden_size)
    assert prefix["mlp_mean"].shape == (len(PAIRS), len(cuts), 2, model.config.hidden_size)
    for i, (row, s) in enumerate(zip(ids, starts)):
        captured = {}
        hooks = [model.layers[l].mlp.register_forward_hook(lambda m, a, o, l=l: captured.__setitem__(l, o))
                 for l in (0, 2)]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([row]), output_hidden_states=True)
        for h in hooks:
            h.remove()
        for j, l in enumerate((0, 2)):
            full = {"residual_mean": out.hidden_states[l + 1][0], "mlp_mean": captured[l][0]}
            for rep, h in full.items():
                if s == len(row):
                    assert torch.isnan(answer[rep][i, j]).all()
                else:
                    torch.testing.assert_close(answer[rep][i, j], h[s:].mean(0), atol=1e-5, rtol=1e-4)
                for c, t in enumerate(cuts):
                    if s + t > len(row):
                        assert torch.isnan(prefix[rep][i, c, j]).all()
                    else:
                        torch.testing.assert_close(prefix[rep][i, c, j], h[s:s + t].mean(0), atol=1e-5, rtol=1e-4)


def test_whole_span_equals_the_batch_features(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    lf = LayerFeatures(model, tok, max_length=64)
    ids, _ = answer_spans(tok, PAIRS, max_length=64)
    spans = [[(0, len(row)), (0, 0)] for row in ids]
    means = lf.span_means(ids, spans)["residual_mean"]
    torch.testing.assert_close(means[:, 0], lf(ids)["residual_mean"], atol=1e-5, rtol=1e-4)
    assert torch.isnan(means[:, 1]).all()
    with pytest.raises(SirenError, match="same number of spans"):
        lf.span_means(ids, [[(0, 1)]] * (len(ids) - 1) + [[(0, 1), (0, 2)]])
    with pytest.raises(SirenError, match="cuts"):
        lf.answer_means(ids, [0] * len(ids), cuts=[0])


def test_encode_answers_in_input_order(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    lf = LayerFeatures(model, tok, max_length=64)
    answer, prefix = lf.encode_answers(PAIRS, cuts=(2,), batch_tokens=40)
    for i, pair in enumerate(PAIRS):
        one, one_prefix = lf.encode_answers([pair], cuts=(2,))
        np.testing.assert_allclose(answer["residual_mean"][i], one["residual_mean"][0], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(prefix["residual_mean"][i], one_prefix["residual_mean"][0], atol=1e-5, rtol=1e-4)
