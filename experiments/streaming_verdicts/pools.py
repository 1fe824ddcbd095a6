"""Stage 1 of the streaming-verdicts experiment: per-layer pools of response-level rows.

One forward per row (prompt + "\\n" + response, normalised as the runtime does, right-truncated
at max_length) with hooks on every layer's MLP (`mlp_mean`); from the per-token outputs it
keeps, in float16, all L*d dims (so any guard's selection can be applied afterwards):

- `prompt`  (n, L*d)  mean over the prompt's tokens,
- `answer`  (n, L*d)  mean over the answer's tokens (the contract's rule: a token belongs to the
                      answer when its character span ends after the answer's first character),
- `whole`   (n, L*d)  mean over all tokens (what today's guard reads),
- `answer_pref` / `whole_pref` (m, L*d) the same cumulative means after every EVERY answer
  tokens and at the last one (`pref_row`, `pref_t`: row index and answer tokens), and, with
  --response_alone, `resp_pref`: the answer read alone (its own forward, its own tokens).

Raw float16 files plus `meta.json` (shapes) and `rows.json` (ids, labels, counts): written
under --out, outside the repository. Usage:

    python -m experiments.streaming_verdicts.pools --data_dir DATA --out WORK/pools \
        --datasets beavertails safe_rlhf --splits train validation test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from siren.features import batch_width, decoder_parts, join_prompt_response, length_batches, normalize_text

EVERY = 4


def answer_mask(tokenizer, prompt: str, response: str, max_length: int):
    """(ids, is_answer bool array) of the normalised joined text, right-truncated."""
    joined = normalize_text(join_prompt_response(prompt, response))
    start = len(normalize_text(prompt)) + 1 if prompt else 0
    enc = tokenizer(joined, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ends = np.array([e for _s, e in enc["offset_mapping"]])
    specials = np.array([s == e for s, e in enc["offset_mapping"]])
    return list(enc["input_ids"]), (ends > start) & ~specials


class Hooked:
    """Per-token MLP outputs of every layer for a batch: __call__(list of ids) -> [(T_i, L*d) float32].

    Rows are right-padded to the feature ladder's width (`batch_width`): a causal model's real
    positions do not see the padding after them, and a few fixed shapes spare the CPU kernels
    a set-up per new length (that set-up cost 10-30 s per row when every row had its own)."""

    def __init__(self, model):
        self.model = model
        layers, _norm = decoder_parts(model)
        self.pad = 0
        self.sink: list[torch.Tensor] = []
        for layer in layers:
            layer.mlp.register_forward_hook(lambda _m, _i, out: self.sink.append(out[0] if isinstance(out, tuple) else out))

    @torch.inference_mode()
    def __call__(self, batch: list[list[int]]) -> list[np.ndarray]:
        width = batch_width([len(ids) for ids in batch])
        x = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            x[i, :len(ids)] = torch.as_tensor(ids)
            mask[i, :len(ids)] = 1
        self.sink.clear()
        self.model(input_ids=x, attention_mask=mask if len(batch) > 1 else None, use_cache=False)
        h = torch.cat([s.float() for s in self.sink], dim=2)  # (b, W, L*d)
        self.sink.clear()
        return [h[i, :len(ids)].numpy() for i, ids in enumerate(batch)]


class GuardReader:
    """A trained guard's backbone with MLP hooks, reading rows on the guard's own selected neurons:
    `selected(h)` maps per-token outputs h (T, L*d) to (T, k), the selected neurons times their
    layer weights, in the order of the guard's features. Also `tokenizer`, `hooked` and `config`
    (the run's results.json config)."""

    def __init__(self, guard: Path):
        from siren.artifact import load_guard_config, selection_from_config
        from siren.backbones import load_backbone

        self.config = json.loads((Path(guard) / "results.json").read_text())["config"]
        _layers, sel, layer_w = selection_from_config(load_guard_config(guard))
        bb = load_backbone(self.config["model"], device="cpu", dtype=self.config.get("dtype"))
        self.tokenizer, self.hooked = bb.tokenizer, Hooked(bb.model)
        self.hooked.pad = bb.tokenizer.pad_token_id
        d = bb.model.config.hidden_size
        self.cols = np.concatenate([l * d + np.asarray(sel[l]) for l in sorted(sel)])
        self.weight = np.concatenate([np.full(len(sel[l]), layer_w[l], np.float32) for l in sorted(sel)])
        assert self.cols.max() < bb.model.config.num_hidden_layers * d

    def selected(self, h: np.ndarray) -> np.ndarray:
        return h[:, self.cols] * self.weight

    def pairs(self, rows: list[dict]) -> list[tuple[list[int], np.ndarray]]:
        """[(ids, is_answer)] of rows with prompt and response, as answer_mask encodes them."""
        return [answer_mask(self.tokenizer, r["prompt"], r["response"], self.config.get("max_length", 512))
                for r in rows]


def prefix_points(n: int) -> list[int]:
    """Answer-token counts where a stream is scored: every EVERY tokens and the last one."""
    pts = list(range(EVERY, n + 1, EVERY))
    if n and (not pts or pts[-1] != n):
        pts.append(n)
    return pts


def row_pools(h: np.ndarray, is_ans: np.ndarray, with_whole_pref: bool) -> dict:
    """Pools of one row from its per-token outputs h (T, L*d)."""
    n_ans = int(is_ans.sum())
    first = int(np.argmax(is_ans)) if n_ans else len(h)
    zero = np.zeros(h.shape[1], np.float32)
    out = {"prompt": h[:first].mean(0) if first else zero, "whole": h.mean(0), "n_prompt": first, "n_answer": n_ans}
    ans = np.cumsum(h[first:], axis=0)
    out["answer"] = ans[-1] / n_ans if n_ans else zero
    pts = prefix_points(n_ans)
    out["pref_t"] = pts
    out["answer_pref"] = np.stack([ans[t - 1] / t for t in pts]) if pts else np.zeros((0, h.shape[1]))
    if with_whole_pref:
        csum = np.cumsum(h, axis=0)
        out["whole_pref"] = np.stack([csum[first + t - 1] / (first + t) for t in pts]) if pts else np.zeros((0, h.shape[1]))
    return {k: v.astype(np.float16) if isinstance(v, np.ndarray) else v for k, v in out.items()}


def forward_all(hooked, id_lists: list[list[int]], fn, batch_tokens: int = 2048) -> list:
    """fn(i, per-token outputs) for every row, batched by length; results in row order."""
    out = [None] * len(id_lists)
    for idx in length_batches([len(x) for x in id_lists], batch_tokens, max_batch_size=32):
        for i, h in zip(idx, hooked([id_lists[i] for i in idx])):
            out[int(i)] = fn(int(i), h)
    return out


def run_split(hooked, tokenizer, rows, out: Path, max_length: int, response_alone: bool) -> None:
    t0 = time.time()
    enc = [answer_mask(tokenizer, r["prompt"], r["response"], max_length) for r in rows]
    pools = forward_all(hooked, [ids for ids, _m in enc], lambda i, h: row_pools(h, enc[i][1], response_alone))
    print(f"{out}: {len(rows)} rows joined in {time.time() - t0:.0f} s", flush=True)
    info = {"id": [r["id"] for r in rows], "label": [int(r["label"]) for r in rows],
            "n_prompt": [p["n_prompt"] for p in pools], "n_answer": [p["n_answer"] for p in pools],
            "pref_row": [i for i, p in enumerate(pools) for _t in p["pref_t"]],
            "pref_t": [t for p in pools for t in p["pref_t"]]}
    out.mkdir(parents=True, exist_ok=True)
    kinds = ["prompt", "answer", "whole", "answer_pref"] + (["whole_pref"] if response_alone else [])
    for k in kinds:
        with open(out / f"{k}.f16", "wb") as f:
            for p in pools:
                f.write(p[k].tobytes())
    dim = int(pools[0]["answer"].shape[-1])
    if response_alone:   # the answer read alone (today's response-only streams): its own tokens
        rids = [list(tokenizer(normalize_text(r["response"]), truncation=True, max_length=max_length)["input_ids"])
                for r in rows]

        def resp(i, h):
            c = np.cumsum(h, axis=0)
            return [(c[t - 1] / t).astype(np.float16) for t in prefix_points(len(h))]

        rp = forward_all(hooked, rids, resp)
        info["resp_row"] = [i for i, r in enumerate(rp) for _x in r]
        info["resp_t"] = [t for ids in rids for t in prefix_points(len(ids))]
        with open(out / "resp_pref.f16", "wb") as f:
            for r in rp:
                for x in r:
                    f.write(x.tobytes())
        kinds.append("resp_pref")
        print(f"{out}: response alone done at {time.time() - t0:.0f} s", flush=True)
    (out / "rows.json").write_text(json.dumps(info))
    (out / "meta.json").write_text(json.dumps({"dim": dim, "every": EVERY, "max_length": max_length, "files": kinds}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default=None)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", nargs="+", default=["beavertails", "safe_rlhf"])
    p.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    p.add_argument("--max_length", type=int, default=512)
    a = p.parse_args()
    from siren.backbones import load_backbone

    bb = load_backbone(a.model, device="cpu", dtype=a.dtype)
    hooked = Hooked(bb.model)
    hooked.pad = bb.tokenizer.pad_token_id
    for split in a.splits:
        for ds in a.datasets:
            out = Path(a.out) / ds / split
            if (out / "meta.json").exists():
                continue
            rows = [json.loads(x) for x in open(Path(a.data_dir) / ds / f"{split}.jsonl")]
            run_split(hooked, bb.tokenizer, rows, out, a.max_length, response_alone=split == "test")


if __name__ == "__main__":
    main()
