"""Guarding `generate()` in the same process: score each new token, stop when the guard flags.

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(backbone_folder)   # the guard's backbone, with its LM head
    guard = SirenGuard.from_pretrained(guard_folder, backbone=Backbone(model.model, tokenizer, source))
    with guard.attach(model) as guarded:                                # or rule=StreamRule(...), debounce=2
        out = model.generate(**inputs, stopping_criteria=[guarded], max_new_tokens=200)
    guarded.flagged_at     # per row: FlagPoint(token, char, score, answer_tokens) or None
    guarded.results()      # per row: ScoreResult (.score: all tokens read; .prompt; .response: the answer's)

**In-process** (the generating model is the guard's backbone: the same modules, or equal
weights and dtype in every layer the guard reads): forward hooks on the generating model add
each forward's selected neurons, per row, to running per-layer sums, so the guard runs no
forward of its own; scoring a step costs an index-select per selected layer (in the hooks), one
concatenation and sum, and the MLP head. What is scored is the mean over every token the model
has read (chat-template tokens and prompt included, at most `max_length` of them, padding
excluded through the attention mask), i.e. the sequence the model sees. `score()` strips chat-template tokens and
re-tokenises text, so on a templated conversation the two scores differ; on untemplated text
whose tokens round-trip through decode/encode they are equal (tested). With an answer head the
hooks keep a second running sum over the generated tokens only (every forward after the one that
reads the prompt), so `.response` is the answer head on the answer's own tokens, with the prompt
in context, as `score(prompt=, response=)` pools them; `.prompt` is the main head on the tokens of
the prompt's forward (template included).

**Fallback** (any other model): the new tokens are decoded with `tokenizer` and fed to one
`StreamSession` per row (`prompt` is the untemplated prompt to join with), so the guard runs
its own incremental forward of about one token per step.

**When it stops.** `generate()` calls the criteria after sampling a token, before the model has
read it, so a step's score covers the prompt and the answer tokens before the newest one.
Each step is one observation of the stop rule (`guard.stream_rule`: a `StreamRule` on the answer
verdict with an answer head, steps before the answer's first token read not observed; else on the
whole score). When the rule fires (e.g. after `debounce` consecutive steps) the row is stopped: the output
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
from dataclasses import replace

import torch
from transformers import StoppingCriteria

from siren.errors import SirenError
from siren.features import base_decoder
from siren.runtime.results import ScoreResult, Verdict
from siren.runtime.stream import FlagPoint, RuleTracker, StreamSession
from siren.runtime.stream_rules import StreamRule


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

    def __init__(self, guard, model, *, tokenizer=None, prompt: str | None = None, rule: StreamRule | None = None,
                 debounce: int | None = None, threshold: float | None = None, stop: bool = True):
        self.guard = guard
        self.model = model
        self.threshold = guard.threshold_of(threshold)
        self.rule = guard.stream_rule(rule=rule, debounce=debounce, threshold=threshold)
        self.stop = bool(stop)
        self.tokenizer = tokenizer
        if prompt is not None and not isinstance(prompt, str):
            raise SirenError(f"prompt must be a string or None, got a {type(prompt).__name__}")
        self.prompt = prompt
        self.answers = bool(guard.has_answer_head)
        self.extractor = guard.extractor
        self.in_process = shares_backbone(guard, model)
        if not self.in_process and tokenizer is None:
            raise SirenError("the generating model is not the guard's backbone, so the guard must read the answer "
                             "as text: pass tokenizer=<the generating model's tokenizer> (and prompt=...)")
        self._handles: list = []
        self._scale = self.extractor.scale.to(torch.float64)
        self.reset()
        if self.in_process:
            self._attach_hooks()

    # ------------------------------------------------------------ state

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None  # (b, input_dim) float64: sums of the selected neurons
        self._counts: torch.Tensor | None = None  # (b,) tokens read per row (capped at max_length)
        self._answer_sums: torch.Tensor | None = None  # the same over the generated tokens only
        self._answer_counts: torch.Tensor | None = None
        self._answer_forward = False  # whether the last forward read generated tokens (not the prompt)
        self._keep: torch.Tensor | None = None  # (b, T) bool: positions of the last forward that count (None: all)
        self._parts: list | None = None  # the last forward's selected neurons per layer, not yet summed
        self._prompt_width: int | None = None
        self._prompt_ids: torch.Tensor | None = None
        self._prompt_verdicts: list[Verdict] | None = None  # in-process: per row, at the first step
        self._last_width = 0
        self._trackers: list[RuleTracker] = []
        self._sessions: list[StreamSession] = []
        self._fed: list[str] = []
        self.history: list[list[float]] = []  # per step: the (whole) score of each row
        self.response_history: list[list[float | None]] = []  # per step: the answer verdict's score of each row
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
        return [t.flagged for t in self._trackers]

    @property
    def flagged_at(self) -> list[FlagPoint | None]:
        return [t.flagged_at for t in self._trackers]

    @property
    def flagged_by(self) -> list[str | None]:
        """Per row: "response" (the answer verdict stopped it), "text" (the whole score: no answer
        head), None while not flagged."""
        return [("response" if self.answers else "text") if t.flagged else None for t in self._trackers]

    # ------------------------------------------------------------ in-process hooks

    def _attach_hooks(self) -> None:
        base = base_decoder(self.model)
        device = next(self.model.parameters()).device
        slot = {l: i for i, l in enumerate(self.extractor.layers)}
        self._handles.append(base.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        for _rep, l, module in self.extractor.modules_of(self.model):
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
            self._sums = torch.zeros((b, self.extractor.input_dim), dtype=torch.float64)
            self._counts = torch.zeros(b, dtype=torch.long)
            self._answer_sums = torch.zeros_like(self._sums)
            self._answer_counts = torch.zeros_like(self._counts)
        # The first forward of a generation reads the prompt; every later one, generated tokens.
        self._answer_forward = past > 0
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            real = mask[:, -T:].to("cpu").bool()
        else:
            real = torch.ones((b, T), dtype=torch.bool)
        position = self._counts[:, None] + real.long().cumsum(dim=1)  # 1-based rank among real tokens
        keep = real & (position <= self.guard.max_length)  # score() reads only the first max_length tokens
        self._counts += keep.sum(dim=1)
        if self._answer_forward:
            self._answer_counts += keep.sum(dim=1)
        # None when every position counts (the usual decoding step): no masking needed.
        self._keep = None if bool(keep.all()) else keep.to(ref.device)
        self._parts = [None] * len(self.extractor.index)
        self.overhead_s += time.perf_counter() - t0
        return None

    def _make_hook(self, slot: int, device):
        idx = self.extractor.index[slot].to(device)

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
        summed = feats.sum(dim=1, dtype=torch.float32).to("cpu", torch.float64)
        self._sums += summed
        if self._answer_forward:
            self._answer_sums += summed
        self._parts = None

    def _pooled(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(b, input_dim) head inputs: the rows' pooled means (a row with no token pooled: zeros)."""
        mean = sums / counts.clamp(min=1)[:, None].to(torch.float64)
        return (mean * self._scale).to(torch.float32)

    def results(self) -> list[ScoreResult]:
        """Per row, the verdicts on what has been read so far: in-process, `.score` over every token
        the generating model read, `.prompt` over its prompt forward, `.response` (with an answer
        head) over the generated tokens; with the fallback, what each row's session says."""
        if not self.in_process:
            return [s.result for s in self._sessions]
        self._flush()
        if self._sums is None:
            return []
        z = self._pooled(self._sums, self._counts)
        b = len(z)
        if self.answers:   # one main-head call for the whole texts and the answers (the blend reads it)
            z = torch.cat([z, self._pooled(self._answer_sums, self._answer_counts)])
        main = self.guard.proba_from_features(z)
        whole = self.guard.results_from_features(z[:b].numpy(), self.threshold, probs=main[:b])
        answer = [None] * b
        if self.answers:
            probs = self.guard.answer_proba_from_features(z[b:], main=main[b:])
            answer = [float(p) if int(n) > 0 else None for p, n in zip(probs, self._answer_counts)]
        prompts = self._prompt_verdicts or [None] * b
        a_thr = self.guard.answer_threshold
        return [replace(w, prompt=p, response=None if a is None else Verdict.of(a, a_thr))
                for w, a, p in zip(whole, answer, prompts)]

    # ------------------------------------------------------------ the criteria

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        t0 = time.perf_counter()
        b, width = int(input_ids.shape[0]), int(input_ids.shape[1])
        continuing = (self._prompt_width is not None and width == self._last_width + 1
                      and b == len(self._trackers)
                      and torch.equal(input_ids[:, :self._prompt_width], self._prompt_ids))
        if not continuing:
            self._start(input_ids)
        self._last_width = width
        answer_read = width - 1 - self._prompt_width  # the newest token is not read yet
        if self.in_process:
            results = self.results()
            tokens = [int(self._counts[r]) for r in range(b)]
            chars = [None] * b
        else:
            results = [self._feed_row(r, input_ids[r, self._prompt_width:]) for r in range(b)]
            tokens = [s.n_tokens for s in self._sessions]
            chars = [len(s.text) for s in self._sessions]
        self.history.append([res.score for res in results])
        self.response_history.append([None if res.response is None else res.response.score for res in results])
        for r, (tracker, res) in enumerate(zip(self._trackers, results)):
            observed = res.response if self.answers else res
            if observed is None or tracker.flagged:
                continue
            if tracker.update(FlagPoint(tokens[r], chars[r], observed.score, answer_read)) and self.tokenizer:
                self._add_char(r, tracker, input_ids)
        done = [self.stop and t.flagged for t in self._trackers]
        self.overhead_s += time.perf_counter() - t0
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _start(self, input_ids: torch.Tensor) -> None:
        """A new generation: the first call comes after the first sampled token."""
        b, width = int(input_ids.shape[0]), int(input_ids.shape[1])
        self._prompt_width = width - 1
        self._prompt_ids = input_ids[:, :width - 1].clone()
        self._trackers = [RuleTracker(self.rule) for _ in range(b)]
        self._prompt_verdicts = None
        if self.in_process:  # only the prompt's forward has been read: its verdict, per row
            self._prompt_verdicts = [Verdict.of(res.score, self.threshold) for res in self.results()]
        else:
            self._sessions = [self.guard.stream(self.prompt, rule=self.rule, threshold=self.threshold)
                              for _ in range(b)]
            self._fed = [""] * b
        self.history, self.response_history = [], []

    def _add_char(self, r: int, tracker: RuleTracker, input_ids: torch.Tensor) -> None:
        """In-process: give the flag point its answer length in characters (decoded with the tokenizer)."""
        point = tracker.flagged_at
        if point.char is not None:
            return
        start = self._prompt_width
        text = self.tokenizer.decode(input_ids[r, start:start + point.answer_tokens], skip_special_tokens=True)
        tracker.flagged_at = FlagPoint(point.token, len(text), point.score, point.answer_tokens)

    def _feed_row(self, r: int, answer_ids: torch.Tensor) -> ScoreResult:
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
        return result
