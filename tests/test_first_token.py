"""experiments/head_search_offline6/first_token.py: its batched MLP means, with and without position 0."""

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from siren.features import LayerFeatures, decoder_parts
from tiny_models import load_base

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "head_search_offline6"))
import first_token  # noqa: E402

TEXTS = ["hello there", "a much longer text about something else entirely, with more words", "x",
         "one two three four five"]


def test_means_match_extraction_and_leave_out_only_the_first_token(tiny_llama_dir):
    model, tok = load_base(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    lf = LayerFeatures(model, tok, pooling_types=("mlp_mean",), max_length=64)
    layers, _norm = decoder_parts(model)
    batch = lf.tokenize(TEXTS)
    assert len(batch[2]) == 1 and min(len(t) for i, t in enumerate(batch) if i != 2) >= 3
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # keeping position 0: extraction's mlp_mean, computed one padded batch at a time
    kept = first_token.pooled_mlp(model, layers, batch, pad, skip_first=False).numpy()   # (4, L, d)
    want = np.stack([lf([ids])["mlp_mean"][0].numpy() for ids in batch])
    np.testing.assert_allclose(kept, want, rtol=1e-4, atol=1e-5)

    # leaving it out: the mean of each text's MLP outputs at positions 1..T-1, by hand
    skipped = first_token.pooled_mlp(model, layers, batch, pad, skip_first=True).numpy()
    for i, ids in enumerate(batch):
        outs = []
        hooks = [layer.mlp.register_forward_hook(lambda _m, _i, o: outs.append(o[0])) for layer in layers]
        with torch.inference_mode():
            model(input_ids=torch.as_tensor([ids]), use_cache=False)
        for h in hooks:
            h.remove()
        by_hand = np.stack([o[1:].mean(0).numpy() if len(ids) >= 2 else o.mean(0).numpy() for o in outs])
        np.testing.assert_allclose(skipped[i], by_hand, rtol=1e-4, atol=1e-5)
    # the one-token text keeps its token; the others really changed
    np.testing.assert_array_equal(skipped[2], kept[2])
    assert all(np.abs(skipped[i] - kept[i]).max() > 1e-3 for i in (0, 1, 3))
