"""The one feature function: text -> per-layer pooled vectors.

Used by both extraction (training) and the guard (serving), so the two cannot drift.

For decoder layer `l` (0-based):
- `residual_mean`: masked mean over real tokens of `hidden_states[l + 1]` of a forward with
  `output_hidden_states=True`, i.e. the output of layer `l`, except that for the **last** layer
  it is taken after the final norm (that is what `hidden_states[-1]` holds, and what the
  authors' runtime `llm-siren` computes);
- `mlp_mean`: masked mean of the output of `layers[l].mlp`.

Both are captured with forward hooks and pooled inside the hook (so a `(batch, tokens, d)`
tensor is never kept per layer), and the forward stops right after the deepest needed module.
Positions come from the attention mask, so results do not depend on padding side, and a text's
vector does not depend on its batch mates (within fp32 round-off).

Text handling (the runtime's): chat-template tokens removed, runs of spaces/tabs collapsed,
3+ newlines -> 2, stripped; prompt and response joined with "\\n"; tokenised with the
tokenizer's special tokens; right truncation at `max_length`. A text that is empty after
normalisation is scored as a single space " " (as `llm-siren` does), so it gets a defined,
finite vector rather than an error or a division by zero.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import torch

from siren.errors import SirenError

# The pooled vectors a layer can give (the guard format's `pooling_type`; see the module docstring).
POOLING_TYPES = ("residual_mean", "mlp_mean")
# Bump when normalize_text or tokenisation rules change: part of every feature-cache manifest.
NORMALIZATION_VERSION = 1

# Chat-template markers that normalisation removes (in this order: the first matching alternative wins).
CHAT_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|im_sep|>",
    "<|system|>", "<|user|>", "<|assistant|>",
    "<|begin_of_text|>", "<|end_of_text|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
    "<<SYS>>", "<</SYS>>", "[INST]", "[/INST]",
    "<s>", "</s>", "<|s|>", "<|/s|>",
)
_CHAT_TOKENS = re.compile("|".join(re.escape(t) for t in CHAT_TOKENS))
_HORIZONTAL_SPACE = re.compile(r"[ \t]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
EMPTY_TEXT = " "  # what an empty text is scored as


def normalize_text(text: str | None) -> str:
    """Strip chat-template tokens and collapse whitespace; empty -> EMPTY_TEXT."""
    if not text:
        return EMPTY_TEXT
    cleaned = _CHAT_TOKENS.sub(" ", text)
    cleaned = _HORIZONTAL_SPACE.sub(" ", cleaned)
    cleaned = _MANY_NEWLINES.sub("\n\n", cleaned)
    return cleaned.strip() or EMPTY_TEXT


def join_prompt_response(prompt: str | None, response: str | None) -> str:
    """The paper's convention for response-level inputs: prompt + "\\n" + response."""
    return "\n".join(p for p in (prompt, response) if p)


def check_pooling_types(pooling_types: Iterable[str]) -> tuple[str, ...]:
    pooling_types = tuple(pooling_types)
    for rep in pooling_types:
        if rep not in POOLING_TYPES:
            raise SirenError(f"unknown pooling type {rep!r}: use one of {', '.join(POOLING_TYPES)}")
    if not pooling_types:
        raise SirenError("no pooling types given: use residual_mean and/or mlp_mean")
    return pooling_types


def base_decoder(model) -> torch.nn.Module:
    """The module holding `layers` and `norm`: the model itself, or the base model a *ForCausalLM wraps."""
    for candidate in (model, getattr(model, "model", None), getattr(model, "language_model", None)):
        if candidate is not None and hasattr(candidate, "layers") and hasattr(candidate, "norm"):
            return candidate
    raise SirenError(
        f"{type(model).__name__} does not expose `layers` and `norm` (a Llama/Qwen-style decoder): "
        "this architecture is not supported yet"
    )


def decoder_parts(model) -> tuple[Sequence[torch.nn.Module], torch.nn.Module]:
    """(decoder layers, final norm) of a base model or a *ForCausalLM wrapping one."""
    base = base_decoder(model)
    return base.layers, base.norm


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Normalise and tokenise, right-truncated at max_length. Returns token id lists."""
    normed = [normalize_text(t) for t in texts]
    enc = tokenizer(normed, truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def answer_char_start(prompt: str | None, response: str | None) -> int | None:
    """Where the answer starts in `normalize_text(join_prompt_response(prompt, response))`: at its
    normalised response's first character, i.e. `len(normalize_text(prompt)) + 1` (after the
    joining "\\n") unless whitespace at the boundary collapsed, and 0 without a prompt. None when
    the response is empty after normalisation (no answer to pool)."""
    answer = normalize_text(response)
    if answer == EMPTY_TEXT:
        return None
    joined = normalize_text(join_prompt_response(prompt, response))
    # Normalisation works inside the response as it does alone (no chat marker holds "\n", and
    # whitespace collapses the same): so the joined text ends with the normalised response.
    if joined.endswith(answer):
        return len(joined) - len(answer)
    return min(len(normalize_text(prompt)) + 1, len(joined)) if prompt else 0  # not expected: the contract's rule


def answer_spans(tokenizer, pairs: Sequence[tuple[str | None, str | None]],
                 max_length: int) -> tuple[list[list[int]], list[int]]:
    """(prompt, response) pairs -> (token ids of the normalised joined text, right-truncated at
    max_length; per row the index of its first answer token).

    A token belongs to the answer when it ends after the answer's first character (so a token
    straddling the boundary, and a trailing special token, count as answer); the answer's tokens are
    ids[start:]. start == len(ids) when there is no answer token (empty response, or truncated
    away): the answer pool is empty. Needs a fast tokenizer (character offsets).
    """
    pairs = list(pairs)
    normed = [normalize_text(join_prompt_response(p, r)) for p, r in pairs]
    if not getattr(tokenizer, "is_fast", False):
        raise SirenError("answer pooling needs a fast tokenizer (character offsets): load the backbone's "
                         "tokenizer with use_fast=True")
    enc = tokenizer(normed, truncation=True, max_length=max_length, padding=False, return_offsets_mapping=True)
    ids_out, starts = [], []
    for (prompt, response), ids, offsets in zip(pairs, enc["input_ids"], enc["offset_mapping"]):
        a = answer_char_start(prompt, response)
        start = len(ids)
        if a is not None:
            start = next((i for i, (_lo, hi) in enumerate(offsets) if hi > a), len(ids))
        ids_out.append(list(ids))
        starts.append(start)
    return ids_out, starts


# Batch widths come from a fixed ladder (multiples of WIDTH_QUANTUM, each rung about
# WIDTH_STEP above the last), so extraction sees a few dozen distinct (rows, width) shapes
# instead of hundreds. Measured on three offline-six datasets (smollm2-135m, bf16, 2 cores;
# reports/batch_shapes/): 29 shapes instead of 266 and 0.3 GiB less peak memory in every run
# (every new shape left the allocator's free lists more fragmented: memory kept growing
# with the number of shapes seen), at about the same time although 25% of the positions
# there are padding instead of 3% (fewer, fuller batches and no kernel set-up per new shape).
WIDTH_QUANTUM, WIDTH_STEP = 8, 0.125


def padded_width(length: int) -> int:
    """The smallest ladder rung >= length (>= 1): 8, 16, 24, ..., 64, 72, 88, 104, ..."""
    width = WIDTH_QUANTUM
    while width < length:
        width = max(width + WIDTH_QUANTUM, -(-int(width * (1 + WIDTH_STEP)) // WIDTH_QUANTUM) * WIDTH_QUANTUM)
    return width


def batch_width(lengths: Sequence[int]) -> int:
    """The width a batch of texts with these token counts is padded to: its ladder rung, or the
    text's own length for a single text (nothing to pad against, so no mask is needed)."""
    longest = max(1, max(int(x) for x in lengths))
    return longest if len(lengths) == 1 else padded_width(longest)


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int | None = None,
                   fill: bool = True) -> list[np.ndarray]:
    """Group indices into batches of a few fixed shapes that fit a token budget.

    lengths: (n,) token counts. Texts are taken longest first; each batch starts with the
    longest text left, is padded to that text's ladder rung W (`padded_width`), and takes
    up to min(batch_tokens // W, max_batch_size) texts (at least one), which all fit in W.
    fill=True (extraction: thousands of texts, most rungs full): the batch takes the next
    texts whatever their rung, so every batch but a group's last has one of a few dozen
    shapes. fill=False (scoring a few texts of mixed lengths): a batch holds one rung's texts
    only, so no text is padded by more than one rung step (about 12.5% + 8 tokens), at the cost
    of partial batches. Returns index arrays, longest batches first (so an out-of-memory
    error shows up at once, not at the end); pad each to `batch_width` of its lengths.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    i = 0
    while i < len(order):
        width = padded_width(int(lengths[order[i]]))
        rows = max(1, int(batch_tokens) // width)
        if max_batch_size is not None:
            rows = min(rows, int(max_batch_size))
        end = min(i + rows, len(order))
        if not fill:
            j = i + 1
            while j < end and padded_width(int(lengths[order[j]])) == width:
                j += 1
            end = j
        batches.append(order[i:end])
        i = end
    return batches


def feature_modules(decoder_layers: Sequence[torch.nn.Module], final_norm: torch.nn.Module,
                    pooling_types: Sequence[str], layers: Sequence[int]) -> list[tuple[str, int, torch.nn.Module]]:
    """(pooling type, layer, module whose output is that layer's vector), in firing order.

    The last layer's `residual_mean` is read after the final norm (`hidden_states[-1]`). Shared by
    the batch feature function, the streaming session and in-process generation hooks.
    """
    last = len(decoder_layers) - 1
    wanted = []
    for l in sorted(layers):
        if "mlp_mean" in pooling_types:
            wanted.append(("mlp_mean", l, decoder_layers[l].mlp))
        if "residual_mean" in pooling_types:
            wanted.append(("residual_mean", l, final_norm if l == last else decoder_layers[l]))
    return wanted


class _Stop(Exception):
    """Raised by the last needed hook so the forward skips the layers nobody reads."""


class LayerFeatures:
    """Computes pooled per-layer vectors for batches of token id lists.

    model: a base decoder (e.g. LlamaModel, Qwen3Model) or a *ForCausalLM.
    layers: which decoder layers to return (default: all), ascending.
    """

    def __init__(self, model, tokenizer, *, pooling_types: Sequence[str] = ("residual_mean",),
                 layers: Sequence[int] | None = None, max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.pooling_types = check_pooling_types(pooling_types)
        self.decoder_layers, self.final_norm = decoder_parts(model)
        self.num_layers = len(self.decoder_layers)
        self.layers = list(range(self.num_layers)) if layers is None else sorted(int(l) for l in layers)
        if not self.layers or self.layers[0] < 0 or self.layers[-1] >= self.num_layers:
            raise SirenError(f"layers {self.layers} out of range for a backbone with {self.num_layers} layers")
        self.max_length = int(max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self._compiled = None        # set by compile(): the compiled forward of single texts
        self._compile_hooks: list = []  # its always-registered hooks (handles)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, texts, self.max_length)

    def _modules(self) -> list[tuple[str, int, torch.nn.Module]]:
        return feature_modules(self.decoder_layers, self.final_norm, self.pooling_types, self.layers)

    def compile(self, enabled: bool = True) -> None:
        """Run single texts (one row of >= 2 tokens, unpadded) through a `torch.compile`d forward.

        Inductor fuses the decoder's elementwise work (norms, rotary, SiLU, residual adds) and
        drops every op the pooled sums do not need (the layers after the deepest hooked module, the
        final norm), which the eager path can only approximate by stopping. It rounds to the
        backbone dtype where eager does (`emulate_precision_casts`), so features differ from the
        eager ones only by the order of float operations. Batches (padded or several rows) keep
        the eager path: a compiled graph per batch shape would recompile mid-serving. The first
        call compiles (one to two minutes on a 2-core CPU; a C++ compiler is needed on CPU).
        `compile(False)` goes back to the eager path for every call.
        """
        if not enabled:
            for handle in self._compile_hooks:
                handle.remove()
            self._compile_hooks, self._compiled = [], None
            return
        if self._compiled is not None:
            return
        import torch._inductor.config as inductor_config

        if not hasattr(inductor_config, "emulate_precision_casts"):
            raise SirenError(f"compiling needs a torch whose compiler can round like eager mode (torch "
                             f"{torch.__version__} cannot): upgrade torch (requirements.txt pins 2.13.0)")
        base = base_decoder(self.model)
        sink: list[torch.Tensor] = []   # the hooks' (1, d) float32 sums, in firing order
        collecting = [False]            # the hooks stay registered; they read only compiled calls

        def collect(_module, _inputs, output):
            if collecting[0]:
                h = output[0] if isinstance(output, tuple) else output  # (1, T, d)
                sink.append(h.sum(dim=1, dtype=torch.float32))

        self._compile_hooks = [module.register_forward_hook(collect) for _rep, _layer, module in self._modules()]

        def pooled_sums(input_ids: torch.Tensor) -> torch.Tensor:
            """input_ids (1, T) -> (1, len(self._modules()), d) float32 sums over the T tokens."""
            base(input_ids=input_ids, use_cache=False)
            return torch.stack(sink, dim=1)

        compiled = torch.compile(pooled_sums, dynamic=True, options={"emulate_precision_casts": True})

        def run(input_ids: torch.Tensor) -> torch.Tensor:
            collecting[0] = True
            try:
                return compiled(input_ids)
            finally:
                collecting[0] = False
                sink.clear()

        self._compiled = run

    # inference_mode rather than no_grad: no version counters or view tracking on the
    # activations; the same numbers, and one text's forward about 6% faster (smollm2-135m, bf16).
    @torch.inference_mode()
    def __call__(self, batch: Sequence[Sequence[int]], padding_side: str = "right",
                 width: int | None = None) -> dict[str, torch.Tensor]:
        """batch: token id lists, padded to `batch_width` of their lengths (the ladder rung; a
        single text is not padded), or to `width` if that is wider. Returns {pooling type:
        (b, len(layers), d) float32 tensor on CPU} (inference tensors: read them, or clone them
        before an in-place change outside inference mode)."""
        b = len(batch)
        width = max(batch_width([len(ids) for ids in batch]), width or 0)
        if self._compiled is not None and b == 1 and len(batch[0]) == width >= 2:
            return self._compiled_call(batch[0])
        mask, kw = self._inputs(batch, padding_side, width)
        left = padding_side != "right"
        # No padding (one text, or texts of one length): no mask and default positions give the
        # same vectors, and let attention take its plain causal path instead of building a 4D
        # mask every call (most of the per-call overhead when scoring one short text).
        unpadded = "attention_mask" not in kw
        # (b, T, 1): which positions are real tokens, as a bool for where() (left padding) or as
        # 0/1 float32 to multiply by (right padding); not needed when every position is real
        keep = None if unpadded else mask.unsqueeze(-1).bool() if left else mask.unsqueeze(-1).to(torch.float32)
        counts = mask.sum(dim=1, keepdim=True).to(torch.float32)  # (b, 1)

        def reduce(h: torch.Tensor) -> torch.Tensor:  # (b, T, d) -> (b, d) masked mean
            if unpadded:  # every position counts: the same float32 sums, without the mask's copy
                summed = h.sum(dim=1, dtype=torch.float32)
            elif left:    # where() rather than multiply: left-padded positions may hold inf/nan
                summed = torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=h.device)).sum(dim=1, dtype=torch.float32)
            else:       # right padding: every position is finite; the same sum, about 2x faster
                summed = (h.float() * keep).sum(dim=1)
            return summed / counts

        return self._by_pooling(self._hooked(kw, reduce))

    def _inputs(self, batch: Sequence[Sequence[int]], padding_side: str, width: int) -> tuple[torch.Tensor, dict]:
        """(attention mask (b, width) on the device, the forward's keyword arguments): padded ids,
        and the mask and positions unless every row fills the width."""
        b = len(batch)
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, ids in enumerate(batch):
            span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
            input_ids[i, span] = torch.as_tensor(ids, dtype=torch.long)
            mask[i, span] = 1
        # Positions count real tokens only, so left padding gives the same vectors as right padding.
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        input_ids, mask, position_ids = (t.to(self.device) for t in (input_ids, mask, position_ids))
        if all(len(ids) == width for ids in batch):
            return mask, dict(input_ids=input_ids, use_cache=False)
        return mask, dict(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)

    def _hooked(self, kw: dict, reduce) -> list[torch.Tensor]:
        """Run the backbone with `kw` up to the deepest needed module; `reduce(h)` of each needed
        module's output (b, T, d), in `_modules()` order."""
        wanted = self._modules()
        pooled: list[torch.Tensor | None] = [None] * len(wanted)
        remaining = [len(wanted)]

        def make_hook(i: int):
            def hook(_module, _inputs, output):
                pooled[i] = reduce(output[0] if isinstance(output, tuple) else output)
                remaining[0] -= 1
                if remaining[0] == 0:
                    raise _Stop

            return hook

        handles = [module.register_forward_hook(make_hook(i)) for i, (_rep, _l, module) in enumerate(wanted)]
        try:
            self.model(**kw)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [(rep, l) for (rep, l, _module), v in zip(wanted, pooled) if v is None]
        if missing:
            raise SirenError(f"hooks did not fire for {missing[:3]}...: unsupported backbone layout")
        return pooled

    @torch.inference_mode()
    def span_means(self, batch: Sequence[Sequence[int]], spans: Sequence[Sequence[tuple[int, int]]],
                   width: int | None = None) -> dict[str, torch.Tensor]:
        """Masked means over token spans, one forward: batch as in `__call__` (right padding); spans:
        per row the same number S of [lo, hi) index ranges into that row's ids. Returns {pooling
        type: (b, S, len(layers), d) float32 on CPU}, NaN for an empty span. (0, len(ids)) gives
        `__call__`'s vector to float32 round-off (the sums run in another order)."""
        b = len(batch)
        n_spans = {len(row) for row in spans}
        if len(spans) != b or len(n_spans) != 1:
            raise SirenError(f"span_means: give the same number of spans for each of the {b} rows")
        width = max(batch_width([len(ids) for ids in batch]), width or 0)
        mask, kw = self._inputs(batch, "right", width)
        select = torch.zeros((b, n_spans.pop(), width), dtype=torch.float32)  # (b, S, T) 0/1
        for i, row in enumerate(spans):
            for j, (lo, hi) in enumerate(row):
                select[i, j, max(0, int(lo)):min(int(hi), len(batch[i]))] = 1.0
        counts = select.sum(dim=2, keepdim=True)  # (b, S, 1); 0 -> NaN means
        select, counts = select.to(self.device), counts.to(self.device)
        real = mask.bool().unsqueeze(-1)

        def reduce(h: torch.Tensor) -> torch.Tensor:  # (b, T, d) -> (b, S, d)
            hf = h.float().masked_fill(~real, 0.0)  # padded positions may hold anything: zero them
            return torch.bmm(select, hf) / counts

        pooled = self._hooked(kw, reduce)
        out = {rep: [None] * len(self.layers) for rep in self.pooling_types}
        slot = {l: i for i, l in enumerate(self.layers)}
        for (rep, layer, _module), v in zip(self._modules(), pooled):
            out[rep][slot[layer]] = v
        return {rep: torch.stack(vs, dim=2).cpu() for rep, vs in out.items()}

    def answer_means(self, batch: Sequence[Sequence[int]], starts: Sequence[int], cuts: Sequence[int] = (),
                     width: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The answer's pool and its prefixes' pools, one forward (see `answer_spans` for ids/starts).

        Returns ({pooling type: (b, len(layers), d)} over ids[start:], {pooling type: (b, len(cuts),
        len(layers), d)} over ids[start:start + t] for t in cuts); NaN where a row has no answer
        token, or fewer than t answer tokens read (a prefix is never padded with the text after it).
        """
        cuts = [int(t) for t in cuts]
        if any(t < 1 for t in cuts):
            raise SirenError(f"answer cuts must be whole numbers >= 1 (answer tokens), got {cuts}")
        spans = []
        for ids, s in zip(batch, starts):
            n = len(ids)
            spans.append([(s, n)] + [(s, s + t) if s + t <= n else (0, 0) for t in cuts])
        means = self.span_means(batch, spans, width=width)
        return ({rep: v[:, 0] for rep, v in means.items()}, {rep: v[:, 1:] for rep, v in means.items()})

    def encode_answers(self, pairs: Sequence[tuple[str | None, str | None]], cuts: Sequence[int] = (),
                       batch_tokens: int = 16384) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(prompt, response) pairs -> `answer_means` for all rows, length-bucketed, in input order:
        ({pooling type: (n, len(layers), d)}, {pooling type: (n, len(cuts), len(layers), d)}) float32."""
        ids, starts = answer_spans(self.tokenizer, pairs, self.max_length)
        d = int(self.model.config.hidden_size)
        n, L = len(ids), len(self.layers)
        answer = {rep: np.full((n, L, d), np.nan, dtype=np.float32) for rep in self.pooling_types}
        prefix = {rep: np.full((n, len(cuts), L, d), np.nan, dtype=np.float32) for rep in self.pooling_types}
        for idx in length_batches([len(x) for x in ids], batch_tokens):
            a, p = self.answer_means([ids[i] for i in idx], [starts[i] for i in idx], cuts)
            for rep in self.pooling_types:
                answer[rep][idx] = a[rep].numpy()
                prefix[rep][idx] = p[rep].numpy()
        return answer, prefix

    def _by_pooling(self, pooled: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """(b, d) vectors in `_modules()` order -> {pooling type: (b, len(layers), d) on CPU}."""
        out = {rep: [None] * len(self.layers) for rep in self.pooling_types}
        slot = {l: i for i, l in enumerate(self.layers)}
        for (rep, layer, _module), v in zip(self._modules(), pooled):
            out[rep][slot[layer]] = v
        return {rep: torch.stack(vs, dim=1).cpu() for rep, vs in out.items()}

    def _compiled_call(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """One unpadded text through the compiled forward; the same return as `__call__`."""
        sums = self._compiled(torch.as_tensor([list(ids)], dtype=torch.long, device=self.device))
        means = sums / float(len(ids))  # (1, len(self._modules()), d)
        return self._by_pooling(means.unbind(dim=1))

    def encode(self, texts: Sequence[str], batch_tokens: int = 16384) -> dict[str, np.ndarray]:
        """Texts -> {pooling type: (n, len(layers), d) float32}, length-bucketed, in input order."""
        ids = self.tokenize(texts)
        d = int(self.model.config.hidden_size)
        result = {rep: np.zeros((len(ids), len(self.layers), d), dtype=np.float32) for rep in self.pooling_types}
        for idx in length_batches([len(x) for x in ids], batch_tokens):
            feats = self([ids[i] for i in idx])
            for rep, v in feats.items():
                result[rep][idx] = v.numpy()
        return result
