"""Guarding `generate()` in the same process: score each new token, stop when the guard flags.

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(backbone_folder)   # the guard's backbone, with its LM head
    guard = SirenGuard.from_pretrained(guard_folder, backbone=Backbone(model.model, tokenizer, source))
    with guard.attach(model, debounce=2) as guarded:
        out = model.generate(**inputs, stopping_criteria=[guarded], max_new_tokens=200)
    guarded.flagged_at     # per row: FlagPoint(token, char, score, answer_tokens) or None

**In-process** (the generating model is the guard's backbone: the same modules, or equal
weights and dtype in every layer the guard reads): forward hooks on the generating model add
each forward's selected neurons, per row, to running per-layer sums, so the guard runs no
forward of its own; scoring a step costs an index-select per selected layer (in the hooks), one
concatenation and sum, and the MLP head. What is scored is the mean over every token the model
has read (chat-template tokens and prompt included, at most `max_length` of them, padding
excluded through the attention mask), i.e. the sequence the model sees. `score()` strips chat-template tokens and
re-tokenises text, so on a templated conversation the two scores differ; on untemplated text
whose tokens round-trip through decode/encode they are equal (tested).

**Fallback** (any other model): the new tokens are decoded with `tokenizer` and fed to one
`StreamSession` per row (`prompt` is the untemplated prompt to join with), so the guard runs
its own incremental forward of about one token per step.

**When it stops.** `generate()` calls the criteria after sampling a token, before the model has
read it, so a step's score covers the prompt and the answer tokens before the newest one.
When the score crosses (after `debounce` consecutive steps) the row is stopped: the output
holds one token the guard has not read. `flagged_at.answer_tokens` counts the answer tokens
read when the run of high scores began (cut the answer there to drop everything after it);
`char` is their length in characters when a tokenizer is given. With `stop=False` the
criteria only records (`history`, `flagged_at`) and never stops generation.

A new `generate()` call starts afresh (its first forward reads an empty KV cache, and its first
criteria call does not continue the previous sequence); call `reset()` to clear the results by
hand and `detach()` (or leave the `with` block) to remove the hooks.
"""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteria

from siren.errors import SirenError
from siren.features import base_decoder, decoder_parts, feature_modules
from siren.runtime.guard import ScoreResult
from siren.runtime.stream import Debounce, FlagPoint, StreamSession


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    for k, x in sa.items():
        y = sb[k]
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y.to(x.device)):
            return False
    return True


def shares_backbone(guard, model) -> bool:
    """Whether `model` computes the guard's features: the same decoder modules, or the same
    architecture with equal weights (and dtype) in the embeddings and every layer up to the
    deepest one the guard reads."""
    g_base, m_base = base_decoder(guard.backbone.model), base_decoder(model)
    if g_base is m_base or g_base.layers is m_base.layers:
        return True
    if type(g_base) is not type(m_base) or len(g_base.layers) != len(m_base.layers):
        return False
    deepest = max(guard.layers)
    pairs = [(g_base.layers[i], m_base.layers[i]) for i in range(deepest + 1)]
    if deepest == len(g_base.layers) - 1:
        pairs.append((g_base.norm, m_base.norm))
    g_emb, m_emb = getattr(g_base, "embed_tokens", None), getattr(m_base, "embed_tokens", None)
    if g_emb is None or m_emb is None:
        return False
    pairs.append((g_emb, m_emb))
    return all(_same_weights(a, b) for a, b in pairs)


class GuardedGeneration(StoppingCriteria):
    """A StoppingCriteria that scores every generation step with the guard. Build with `guard.attach`."""

    def __init__(self, guard, model, *, tokenizer=None, prompt: str | None = None, debounce: int | None = None,
                 threshold: float | None = None, stop: bool = True):
        self.guard = guard
        self.model = model
        self.threshold = guard.decision_threshold(threshold)
        self.debounce = Debounce(debounce, self.threshold).k  # validated; None: the config's
        self.stop = bool(stop)
        self.tokenizer = tokenizer
        if prompt is not None and not isinstance(prompt, str):
            raise SirenError(f"prompt must be a string or None, got a {type(prompt).__name__}")
        self.prompt = prompt
        self.in_process = shares_backbone(guard, model)
        if not self.in_process and tokenizer is None:
            raise SirenError("the generating model is not the guard's backbone, so the guard must read the answer "
                             "as text: pass tokenizer=<the generating model's tokenizer> (and prompt=...)")
        self._handles: list = []
        # Feature columns of each selected layer: [lo, hi) in the head's input.
        bounds, lo = [], 0
        for idx in guard._index:
            bounds.append((lo, lo + len(idx)))
            lo += len(idx)
        self._bounds = bounds
        self._scale = torch.cat([torch.full((len(idx),), float(w), dtype=torch.float64)
                                 for idx, w in zip(guard._index, guard._weight)])
        self.reset()
        if self.in_process:
            self._attach_hooks()

    # ------------------------------------------------------------ state

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None  # (b, input_dim) float64: sums of the selected neurons
        self._counts: torch.Tensor | None = None  # (b,) tokens read per row (capped at max_length)
        self._keep: torch.Tensor | None = None  # (b, T) bool: positions of the last forward that count (None: all)
        self._parts: list | None = None  # the last forward's selected neurons per layer, not yet summed
        self._prompt_width: int | None = None
        self._prompt_ids: torch.Tensor | None = None
        self._last_width = 0
        self._debounces: list[Debounce] = []
        self._sessions: list[StreamSession] = []
        self._fed: list[str] = []
        self.history: list[list[float]] = []  # per step: the score of each row
        self.overhead_s = 0.0  # wall time spent in the guard's hooks and criteria calls (cost counter)

    def detach(self) -> None:
        """Remove the hooks from the generating model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "GuardedGeneration":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def flagged(self) -> list[bool]:
        return [d.flagged_at is not None for d in self._debounces]

    @property
    def flagged_at(self) -> list[FlagPoint | None]:
        return [d.flagged_at for d in self._debounces]

    # ------------------------------------------------------------ in-process hooks

    def _attach_hooks(self) -> None:
        base = base_decoder(self.model)
        layers, norm = decoder_parts(self.model)
        device = next(self.model.parameters()).device
        slot = {l: i for i, l in enumerate(self.guard.layers)}
        modules = feature_modules(layers, norm, (self.guard.pooling_type,), self.guard.layers)
        self._handles.append(base.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        for _rep, l, module in modules:
            self._handles.append(module.register_forward_hook(self._make_hook(slot[l], device)))

    def _before_forward(self, _module, args, kwargs):
        """Which positions of this forward count, per row; a forward on an empty cache starts afresh."""
        t0 = time.perf_counter()
        self._flush()
        ref = kwargs.get("input_ids", args[0] if args else None)
        if ref is None:
            ref = kwargs.get("inputs_embeds")
        b, T = int(ref.shape[0]), int(ref.shape[1])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0 if cache is None else int(cache.get_seq_length())
        if past == 0 or self._sums is None or self._sums.shape[0] != b:
            self._sums = torch.zeros((b, self.guard.input_dim), dtype=torch.float64)
            self._counts = torch.zeros(b, dtype=torch.long)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            real = mask[:, -T:].to("cpu").bool()
        else:
            real = torch.ones((b, T), dtype=torch.bool)
        position = self._counts[:, None] + real.long().cumsum(dim=1)  # 1-based rank among real tokens
        keep = real & (position <= self.guard.max_length)  # score() reads only the first max_length tokens
        self._counts += keep.sum(dim=1)
        # None when every position counts (the usual decoding step): no masking needed.
        self._keep = None if bool(keep.all()) else keep.to(ref.device)
        self._parts = [None] * len(self._bounds)
        self.overhead_s += time.perf_counter() - t0
        return None

    def _make_hook(self, slot: int, device):
        idx = self.guard._index[slot].to(device)

        def hook(_module, _inputs, output):
            if self._parts is None:
                return None
            t0 = time.perf_counter()
            h = output[0] if isinstance(output, tuple) else output  # (b, T, d)
            self._parts[slot] = h.index_select(-1, idx)  # (b, T, k): a copy, so later in-place ops cannot touch it
            self.overhead_s += time.perf_counter() - t0
            return None

        return hook

    def _flush(self) -> None:
        """Add the last forward's selected neurons (one block per selected layer) to the running sums."""
        parts = self._parts
        if parts is None or any(p is None for p in parts):
            self._parts = None
            return
        feats = torch.cat(parts, dim=-1)  # (b, T, input_dim)
        if self._keep is not None:
            # where() rather than multiply: padded positions may hold inf/nan.
            feats = torch.where(self._keep[..., None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))
        self._sums += feats.sum(dim=1, dtype=torch.float32).to("cpu", torch.float64)
        self._parts = None

    def results(self) -> list[ScoreResult]:
        """In-process: the score of what the generating model has read so far, per row."""
        if not self.in_process:
            return [s.result for s in self._sessions]
        self._flush()
        if self._sums is None:
            return []
        mean = self._sums / self._counts.clamp(min=1)[:, None].to(torch.float64)
        probs = self.guard.proba_from_features((mean * self._scale).to(torch.float32))
        return [ScoreResult(float(p), bool(p >= self.threshold), self.threshold) for p in probs]

    # ------------------------------------------------------------ the criteria

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        t0 = time.perf_counter()
        b, width = int(input_ids.shape[0]), int(input_ids.shape[1])
        continuing = (self._prompt_width is not None and width == self._last_width + 1
                      and b == len(self._debounces)
                      and torch.equal(input_ids[:, :self._prompt_width], self._prompt_ids))
        if not continuing:
            # A new generation: the first call comes after the first sampled token.
            self._prompt_width = width - 1
            self._prompt_ids = input_ids[:, :width - 1].clone()
            self._debounces = [Debounce(self.debounce, self.threshold) for _ in range(b)]
            if not self.in_process:
                self._sessions = [self.guard.stream(self.prompt, threshold=self.threshold) for _ in range(b)]
                self._fed = [""] * b
            self.history = []
        self._last_width = width
        if self.in_process:
            results = self.results()
            answer_read = width - 1 - self._prompt_width  # the newest token is not read yet
            points = [FlagPoint(int(self._counts[r]), None, results[r].score, answer_read) for r in range(b)]
        else:
            points = [self._feed_row(r, input_ids[r, self._prompt_width:]) for r in range(b)]
        self.history.append([p.score for p in points])
        for r, (deb, point) in enumerate(zip(self._debounces, points)):
            before = deb.flagged_at
            deb.update(point)
            if before is None and deb.flagged_at is not None and deb.flagged_at.char is None and self.tokenizer:
                start = self._prompt_width
                answer = input_ids[r, start:start + deb.flagged_at.answer_tokens]
                text = self.tokenizer.decode(answer, skip_special_tokens=True)
                deb.flagged_at = FlagPoint(deb.flagged_at.token, len(text), deb.flagged_at.score,
                                           deb.flagged_at.answer_tokens)
        done = [self.stop and d.flagged_at is not None for d in self._debounces]
        self.overhead_s += time.perf_counter() - t0
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _feed_row(self, r: int, answer_ids: torch.Tensor) -> FlagPoint:
        """Fallback: decode the answer so far and feed the new text to row r's session."""
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            text = text.rstrip("\ufffd")
        session, fed = self._sessions[r], self._fed[r]
        if not text.startswith(fed):  # the decoder revised earlier text: rescore this row from scratch
            session.reset()
            fed = ""
        result = session.feed(text[len(fed):])
        self._fed[r] = text
        return FlagPoint(session.n_tokens, len(session.text), result.score, len(answer_ids))
