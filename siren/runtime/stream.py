"""Incremental streaming: score a response as it grows, at a constant backbone cost per token.

    session = guard.stream(prompt="How do I ...?", debounce=2)
    for chunk in llm_output:
        result = session.feed(chunk)      # ScoreResult of prompt + "\\n" + the response so far
        if session.flagged:               # `debounce` consecutive scores >= threshold
            print(session.flagged_at)     # FlagPoint(token=..., char=..., score=...)
            break

After every `feed`, the score is the one `guard.score(prompt=prompt, response=session.text)`
gives (within fp32 round-off; tested to 1e-4): same normalisation, same tokens, same truncation.
(With a bf16 backbone the cached forward and the full forward round differently, so the two
agree to bf16 precision only.)
What changes is the cost. The session keeps

- the token ids the backbone has already read ("committed"), with the backbone's KV cache for
  them (only up to the deepest selected layer: the forward stops there, so deeper layers have
  no cache), and
- for each committed token its selected neurons of every selected layer, fp32, `(n, input_dim)`,
  plus their running sum; the score is `head(sum / n * layer weights)`, which is exactly the
  masked mean the batch scorer takes.

Each `feed` normalises and tokenises the whole text so far (string work, linear in the text but
far cheaper than the backbone), keeps the longest committed prefix that the new tokens still
start with, and runs the backbone only on the tokens after it, against the cache.

**Hold-back.** Appending text can change the tokens at the end of what has been seen: a word
split across chunks ("wat" + "er" is not "wat" + "er" in BPE), a chat-template marker arriving
in pieces ("<|im_" + "end|>" is removed by normalisation), trailing whitespace (stripped now,
kept once more text follows). So not every token read is committed. A token stays uncommitted
(it is run through the backbone at every feed, on top of the cache, and its cache entries are
dropped afterwards) while any of these holds:

- it is among the last `holdback_tokens` tokens (default 1; this also keeps a tokenizer's
  trailing special token, such as an appended EOS, out of the cache),
- it ends after the last whitespace of the normalised text (the last word can still grow),
- it overlaps a trailing piece of text that could still become a chat-template marker.

So a feed costs the backbone the tokens of the last word plus the new tokens, whatever the
prefix length. If appended text ever changes a committed token anyway (a tokenizer whose
merges cross whitespace, say), the session notices that the token ids differ, rolls the cache
and the running sum back to the common prefix and recomputes from there: the score stays exact,
only that feed costs more.

**Past `max_length`.** Like `score()`, the session reads only the first `max_length` tokens of
the normalised prompt + response. Once those are all committed, later chunks change neither
the tokens read nor the score; the session then stops tokenising and running the backbone, and
`feed` only appends to `session.text` and returns the same score (`n_tokens` stays at
`max_length`). A harmful continuation after that point is not seen: score a sliding window or
raise `inference.max_length` if answers are that long.

**Debounce.** `flagged` becomes true after `debounce` consecutive feeds whose score is
`>= threshold`, and stays true until `reset()`. `flagged_at` is where that run of scores began:
the number of tokens read (prompt included) and the number of response characters fed.
Each `ScoreResult.is_harmful` is the plain `score >= threshold` of that feed, as in `score()`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from siren import config
from siren.errors import SirenError
from siren.features import CHAT_TOKENS, EMPTY_TEXT, _Stop, join_prompt_response, normalize_text
from siren.runtime.guard import ScoreResult

HOLDBACK_TOKENS = 1  # trailing tokens never committed, whatever the text looks like
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")  # the last whitespace character of a text


@dataclass(frozen=True)
class FlagPoint:
    """Where a run of above-threshold scores began.

    token: tokens the backbone had read for that score (prompt included, at most max_length).
    char: characters of the response fed by then (None when not known).
    answer_tokens: generated tokens read by then (in-process generation only).
    """

    token: int
    char: int | None
    score: float
    answer_tokens: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Debounce:
    """Flag after `k` consecutive scores >= threshold; remember where the run began. Sticky."""

    def __init__(self, k: int | None, threshold: float):
        k = config.default("debounce") if k is None else k   # None: configs/defaults.yaml's debounce
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SirenError(f"debounce must be a whole number >= 1 (consecutive scores), got {k!r}")
        self.k = k
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.run = 0
        self._run_start: FlagPoint | None = None
        self.flagged_at: FlagPoint | None = None

    def update(self, point: FlagPoint) -> bool:
        """Record one score (at `point`); returns whether the stream is flagged."""
        if point.score >= self.threshold:
            if self.run == 0:
                self._run_start = point
            self.run += 1
            if self.flagged_at is None and self.run >= self.k:
                self.flagged_at = self._run_start
        else:
            self.run = 0
            self._run_start = None
        return self.flagged_at is not None


def stable_prefix_chars(norm: str) -> int:
    """How many leading characters of a normalised text no appended text can change.

    Stops before a trailing piece that could still grow into a chat-template marker, and before
    the last word (it may continue in the next chunk); trailing whitespace is not counted
    either, since normalisation strips it until more text follows.
    """
    if norm == EMPTY_TEXT:
        return 0
    end = len(norm)
    longest = max(len(t) for t in CHAT_TOKENS)
    for k in range(min(len(norm), longest - 1), 0, -1):
        tail = norm[-k:]
        if any(t.startswith(tail) for t in CHAT_TOKENS):
            end = len(norm) - k
            break
    space = _LAST_SPACE.search(norm, 0, end)
    end = space.start() if space else 0
    return len(norm[:end].rstrip())


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class StreamSession:
    """Scores prompt + "\\n" + a response that arrives in chunks. Build with `guard.stream(...)`."""

    def __init__(self, guard, prompt: str | None = None, *, debounce: int | None = None, threshold: float | None = None,
                 holdback_tokens: int = HOLDBACK_TOKENS):
        if prompt is not None and not isinstance(prompt, str):
            raise SirenError(f"prompt must be a string or None, got a {type(prompt).__name__}")
        if isinstance(holdback_tokens, bool) or not isinstance(holdback_tokens, int) or holdback_tokens < 0:
            raise SirenError(f"holdback_tokens must be a whole number >= 0, got {holdback_tokens!r}")
        self.guard = guard
        self.prompt = prompt
        self.threshold = guard.decision_threshold(threshold)
        self.holdback_tokens = holdback_tokens
        self._debounce = Debounce(debounce, self.threshold)
        features = guard._features
        self._model = features.model
        self._tokenizer = features.tokenizer
        self._fast = bool(getattr(self._tokenizer, "is_fast", False))
        self._max_length = guard.max_length
        self._device = features.device
        # transformers renamed `past_key_values` to `cache` during 5.x: pass whichever this version takes.
        params = inspect.signature(self._model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._modules = features._modules()  # one per selected layer, ascending, in firing order
        self._slot = {l: i for i, l in enumerate(guard.layers)}
        self._index = [idx.to(self._device) for idx in guard._index]
        # Per feature column: its layer's weight, so features = mean * scale.
        self._scale = torch.cat([torch.full((len(idx),), float(w)) for idx, w in zip(guard._index, guard._weight)])
        self.reset()

    # ------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the response (the prompt stays): the next feed starts a new one."""
        from transformers import DynamicCache

        self._text = ""
        self._cache = DynamicCache()
        self._ids: list[int] = []  # committed token ids, their KV entries are in the cache
        self._rows = torch.zeros((self._max_length, self.guard.input_dim), dtype=torch.float32)
        self._sum = torch.zeros(self.guard.input_dim, dtype=torch.float64)  # sum of committed rows
        self._tail_ids: list[int] = []  # uncommitted tokens after the committed ones, and their rows
        self._tail_rows = torch.zeros((0, self.guard.input_dim), dtype=torch.float32)
        self._n_tokens = 0
        self.tokens_run = 0  # tokens run through the backbone since the last reset (cost counter)
        self.rollbacks = 0  # times appended text changed a committed token (see "Hold-back")
        self._frozen = False
        self._result: ScoreResult | None = None
        self._debounce.reset()

    @property
    def text(self) -> str:
        """The response fed so far (raw, as given)."""
        return self._text

    @property
    def n_tokens(self) -> int:
        """Tokens the backbone reads for the current prompt + response (capped at max_length)."""
        return self._n_tokens

    @property
    def committed_tokens(self) -> int:
        """Tokens whose KV cache and features are kept (the rest are recomputed at each feed)."""
        return len(self._ids)

    @property
    def result(self) -> ScoreResult | None:
        """The latest score (None before the first feed)."""
        return self._result

    @property
    def flagged(self) -> bool:
        return self._debounce.flagged_at is not None

    @property
    def flagged_at(self) -> FlagPoint | None:
        return self._debounce.flagged_at

    # ------------------------------------------------------------ feeding

    def feed(self, text_chunk: str) -> ScoreResult:
        """Append a chunk of the response; returns the score of prompt + "\\n" + the response so far."""
        if not isinstance(text_chunk, str):
            raise SirenError(f"feed() takes a string chunk of the response, got a {type(text_chunk).__name__}")
        self._text += text_chunk
        if not self._frozen or self._result is None:
            self._result = self._update()
        self._debounce.update(FlagPoint(self._n_tokens, len(self._text), self._result.score))
        return self._result

    @torch.no_grad()
    def _update(self) -> ScoreResult:
        norm = normalize_text(join_prompt_response(self.prompt, self._text))
        enc = self._tokenizer(norm, truncation=True, max_length=self._max_length, padding=False,
                              return_offsets_mapping=self._fast)
        ids = list(enc["input_ids"])
        if not ids:
            raise SirenError("the tokenizer returned no tokens for the text: it cannot be scored")
        keep = _common_prefix(self._ids, ids)
        if keep < len(self._ids):
            self._rollback(keep)
        start = len(self._ids)
        tail = ids[start:]
        if tail != self._tail_ids:
            rows = self._forward(tail, start) if tail else self._tail_rows[:0]
            commit = self._stable_count(norm, ids, enc.get("offset_mapping")) - start
            commit = max(0, min(commit, len(tail)))
            self._rows[start:start + commit] = rows[:commit]
            self._sum += rows[:commit].sum(dim=0, dtype=torch.float64)
            self._ids.extend(tail[:commit])
            dropped = len(tail) - commit
            if dropped:
                self._cache.crop(-dropped)  # the uncommitted tokens' KV entries go
            self._tail_ids, self._tail_rows = tail[commit:], rows[commit:]
        elif tail and len(ids) == self._max_length and self._stable_count(norm, ids, enc.get("offset_mapping")) == len(ids):
            # The same uncommitted tokens as last time (so the same rows), and now every one of the
            # max_length tokens read is stable: commit them without cache entries, since nothing
            # will ever run after them.
            self._rows[start:] = self._tail_rows
            self._sum += self._tail_rows.sum(dim=0, dtype=torch.float64)
            self._ids.extend(tail)
            self._tail_ids, self._tail_rows = [], self._tail_rows[:0]
        # else: the same uncommitted tokens as last time, so the same rows; nothing to run.
        self._n_tokens = len(ids)
        if len(self._ids) == self._max_length:
            self._frozen = True  # the first max_length tokens are fixed: nothing later is read
        total = self._sum + self._tail_rows.sum(dim=0, dtype=torch.float64)
        z = (total / len(ids)).to(torch.float32) * self._scale
        score = float(self.guard.proba_from_features(z[None])[0])
        return ScoreResult(score, bool(score >= self.threshold), self.threshold)

    def _stable_count(self, norm: str, ids: list[int], offsets) -> int:
        """How many leading tokens of `ids` later text cannot change (see the module docstring)."""
        limit = len(ids) - self.holdback_tokens
        if offsets is None:  # slow tokenizer: no character offsets, rely on the hold-back alone
            return max(0, limit)
        truncated = len(ids) == self._max_length and offsets[-1][1] < len(norm)
        if truncated:
            limit = len(ids)  # more tokens follow the last one read: it is as stable as the text under it
        cut = stable_prefix_chars(norm)
        n = len(self._ids)
        while n < limit and offsets[n][1] <= cut:
            n += 1
        return n

    def _rollback(self, keep: int) -> None:
        """Drop committed tokens from position `keep` on (their cache entries and rows)."""
        drop = len(self._ids) - keep
        self.rollbacks += 1
        if keep == 0:
            from transformers import DynamicCache

            self._cache = DynamicCache()
        else:
            self._cache.crop(-drop)
        del self._ids[keep:]
        self._sum = self._rows[:keep].sum(dim=0, dtype=torch.float64)
        self._tail_ids, self._tail_rows = [], self._tail_rows[:0]

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:
        """Run the backbone on `ids` at positions start.. against the cache, up to the deepest
        selected layer. Returns their selected neurons, (len(ids), input_dim) fp32 on CPU."""
        out: list[torch.Tensor | None] = [None] * len(self._index)
        remaining = [len(self._modules)]

        def make_hook(slot: int):
            idx = self._index[slot]

            def hook(_module, _inputs, output):
                h = output[0] if isinstance(output, tuple) else output  # (1, T, d)
                out[slot] = h[0].index_select(-1, idx).to(device="cpu", dtype=torch.float32)
                remaining[0] -= 1
                if remaining[0] == 0:
                    raise _Stop

            return hook

        handles = [module.register_forward_hook(make_hook(self._slot[l])) for _rep, l, module in self._modules]
        self.tokens_run += len(ids)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        position_ids = torch.arange(start, start + len(ids), device=self._device)[None]
        try:
            self._model(input_ids=input_ids, position_ids=position_ids, use_cache=True,
                        **{self._cache_kwarg: self._cache})
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if any(o is None for o in out):
            raise SirenError("hooks did not fire for every selected layer: unsupported backbone layout")
        return torch.cat(out, dim=1)
