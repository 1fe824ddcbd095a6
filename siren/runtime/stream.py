"""Incremental streaming: score a response as it grows, at a constant backbone cost per token.

    session = guard.stream(prompt="How do I ...?")            # or rule=StreamRule(...), debounce=2
    for chunk in llm_output:
        result = session.feed(chunk)      # .score: prompt + "\\n" + the response so far; .prompt, .response
        if session.flagged:               # the stop rule fired (siren.runtime.stream_rules)
            print(session.flagged_by, session.flagged_at)     # "response", FlagPoint(token=..., char=..., ...)
            break

After every `feed`, the result is the one `guard.score(prompt=prompt, response=session.text)`
gives (within fp32 round-off; tested to 1e-4): same normalisation, same tokens, same truncation.
`.score` is the whole text's, `.prompt` the prompt's verdict (computed once, at the first feed,
from the prompt's rows when its tokens open the joined text, else by scoring the prompt alone),
and with an answer head `.response` the answer's: the answer head on the mean of the rows of the
answer's tokens only (`siren.features.answer_spans`; the prompt's tokens are in the KV cache and
in the whole-text sum, not in the answer's), None until the answer has a token.
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
(its cache entries and rows are kept, but only while the next feed's tokens still have the same
id at the same position: from the first that differs on, they are cropped and recomputed) while
any of these holds:

- it is among the last `holdback_tokens` tokens (default 1; this also keeps a tokenizer's
  trailing special token, such as an appended EOS, out of the cache),
- it ends after the last whitespace of the normalised text (the last word can still grow),
- it overlaps a trailing piece of text that could still become a chat-template marker.

So a feed costs the backbone only the tokens that differ from the last feed's: the new tokens,
plus, when the new text re-tokenises the unfinished last word ("wat" + "er"), that word's tokens
from the first changed one on, whatever the prefix length. If appended text ever changes a committed token anyway (a tokenizer whose
merges cross whitespace, say), the session notices that the token ids differ, rolls the cache
and the running sum back to the common prefix and recomputes from there: the score stays exact,
only that feed costs more.

**Past `max_length`.** Like `score()`, the session reads only the first `max_length` tokens of
the normalised prompt + response. Once those are all committed, later chunks change neither
the tokens read nor the score; the session then stops tokenising and running the backbone, and
`feed` only appends to `session.text` and returns the same score (`n_tokens` stays at
`max_length`). A harmful continuation after that point is not seen: score a sliding window or
raise `inference.max_length` if answers are that long.

**The stop rule.** Each feed is one observation of a `StreamRule` (debounce, minimum answer
tokens, EMA; `siren.runtime.stream_rules`): of the answer verdict's score with an answer head
(`flagged_by == "response"`; feeds before the answer's first token are not observed), else of the
whole text's score (`flagged_by == "text"`, today's behaviour: `debounce` consecutive scores >=
threshold). `flagged` stays true until `reset()`; `flagged_at` is where the flagging run began:
the number of tokens read (prompt included), of response characters fed and of answer tokens.
Each `ScoreResult.is_harmful` is the plain `score >= threshold` of that feed, as in `score()`.
"""

from __future__ import annotations

import inspect
import re
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
from transformers import DynamicCache

from siren.errors import SirenError, check_unicode
from siren.features import CHAT_TOKENS, EMPTY_TEXT, _Stop, answer_char_start, join_prompt_response, normalize_text
from siren.runtime.results import ScoreResult, Verdict
from siren.runtime.stream_rules import StreamRule

HOLDBACK_TOKENS = 1  # trailing tokens never committed, whatever the text looks like
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")  # the last whitespace character of a text


@dataclass(frozen=True)
class FlagPoint:
    """Where a run of above-threshold scores began.

    token: tokens the backbone had read for that score (prompt included, at most max_length).
    char: characters of the response fed by then (None when not known).
    answer_tokens: answer tokens read by then (None when not known).
    """

    token: int
    char: int | None
    score: float
    answer_tokens: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


class RuleTracker:
    """A `StreamRule`'s running decision over observations at `FlagPoint`s; remembers the point
    where the flagging run began (the rule flags at the `debounce`-th consecutive eligible unsafe
    observation, so the run began `debounce - 1` observations earlier). Sticky until `reset()`."""

    def __init__(self, rule: StreamRule):
        if not isinstance(rule, StreamRule):
            raise SirenError(f"rule must be a siren.runtime.stream_rules.StreamRule, got a {type(rule).__name__}")
        self.rule = rule
        self.reset()

    def reset(self) -> None:
        self.state = self.rule.start()
        self._recent: deque[FlagPoint] = deque(maxlen=self.rule.debounce)
        self.flagged_at: FlagPoint | None = None

    @property
    def flagged(self) -> bool:
        return self.flagged_at is not None

    def update(self, point: FlagPoint) -> bool:
        """Observe one score; returns whether the stream is flagged."""
        self._recent.append(point)
        answer = point.token if point.answer_tokens is None else point.answer_tokens
        if self.state.update(answer, point.score) and self.flagged_at is None:
            self.flagged_at = self._recent[0]
        return self.flagged


class StreamSession:
    """Scores prompt + "\\n" + a response that arrives in chunks. Build with `guard.stream(...)`."""

    def __init__(self, guard, prompt: str | None = None, *, rule: StreamRule | None = None,
                 debounce: int | None = None, threshold: float | None = None,
                 holdback_tokens: int = HOLDBACK_TOKENS):
        if prompt is not None and not isinstance(prompt, str):
            raise SirenError(f"prompt must be a string or None, got a {type(prompt).__name__}")
        if isinstance(holdback_tokens, bool) or not isinstance(holdback_tokens, int) or holdback_tokens < 0:
            raise SirenError(f"holdback_tokens must be a whole number >= 0, got {holdback_tokens!r}")
        self.guard = guard
        self.prompt = prompt
        self.threshold = guard.threshold_of(threshold)
        self.rule = guard.stream_rule(rule=rule, debounce=debounce, threshold=threshold)
        self.holdback_tokens = holdback_tokens
        self._tracker = RuleTracker(self.rule)
        self._answers = bool(guard.has_answer_head)
        extractor = guard.extractor
        self._extractor = extractor
        self._model = extractor.model
        self._tokenizer = extractor.tokenizer
        self._fast = bool(getattr(self._tokenizer, "is_fast", False))
        if self._answers and not self._fast:
            raise SirenError("streaming the answer verdict needs a fast tokenizer (character offsets): load the "
                             "backbone's tokenizer with use_fast=True")
        self._max_length = extractor.max_length
        self._device = extractor.device
        # transformers renamed `past_key_values` to `cache` during 5.x: pass whichever this version takes.
        params = inspect.signature(self._model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._modules = extractor.modules()  # one per selected layer, ascending, in firing order
        self._slot = {l: i for i, l in enumerate(extractor.layers)}
        self._index = [idx.to(self._device) for idx in extractor.index]
        self._scale = extractor.scale  # per feature column: its layer's weight, so features = mean * scale
        self._prompt_verdict: Verdict | None = None  # computed at the first feed; the prompt never changes
        self._prompt_len = 0  # the prompt's own tokens (set with its verdict)
        self.reset()

    # ------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the response (the prompt stays): the next feed starts a new one."""
        dim = self._extractor.input_dim
        self._text = ""
        self._cache = DynamicCache()
        self._ids: list[int] = []  # committed token ids, their KV entries are in the cache
        self._rows = torch.zeros((self._max_length, dim), dtype=torch.float32)
        self._sum = torch.zeros(dim, dtype=torch.float64)  # sum of committed rows
        self._tail_ids: list[int] = []  # uncommitted tokens after the committed ones, and their rows
        self._tail_rows = torch.zeros((0, dim), dtype=torch.float32)
        self._n_tokens = 0
        self._answer_start = 0  # index of the answer's first token (== n_tokens while it has none)
        self._before_answer: tuple[int, torch.Tensor] | None = None  # (start, sum of committed rows before it)
        self.tokens_run = 0  # tokens run through the backbone since the last reset (cost counter)
        self.rollbacks = 0  # times appended text changed a committed token (see "Hold-back")
        self._frozen = False
        self._result: ScoreResult | None = None
        self._tracker.reset()

    @property
    def text(self) -> str:
        """The response fed so far (raw, as given)."""
        return self._text

    @property
    def n_tokens(self) -> int:
        """Tokens the backbone reads for the current prompt + response (capped at max_length)."""
        return self._n_tokens

    @property
    def answer_tokens(self) -> int:
        """Tokens of the answer among them (0 before its first token; without an answer head, the
        tokens after the prompt's all the same)."""
        return self._n_tokens - self._answer_start

    @property
    def committed_tokens(self) -> int:
        """Tokens that later text cannot change (the uncommitted ones after them are kept too, but
        checked against the new tokens at each feed)."""
        return len(self._ids)

    @property
    def result(self) -> ScoreResult | None:
        """The latest score (None before the first feed)."""
        return self._result

    @property
    def flagged(self) -> bool:
        return self._tracker.flagged

    @property
    def flagged_at(self) -> FlagPoint | None:
        return self._tracker.flagged_at

    @property
    def flagged_by(self) -> str | None:
        """Which verdict stopped the stream: "response" (the answer's), "text" (the whole text's,
        a guard without an answer head), None while not flagged."""
        if not self.flagged:
            return None
        return "response" if self._answers else "text"

    # ------------------------------------------------------------ feeding

    def feed(self, text_chunk: str) -> ScoreResult:
        """Append a chunk of the response; returns the score of prompt + "\\n" + the response so far."""
        # Validated before it touches the session: a refused chunk leaves the session as it was.
        if not isinstance(text_chunk, str):
            raise SirenError(f"feed() takes a string chunk of the response, got a {type(text_chunk).__name__}")
        check_unicode(text_chunk, "the chunk")
        self._text += text_chunk
        if not self._frozen or self._result is None:
            self._result = self._update()
        observed = self._result.response if self._answers else self._result
        if observed is not None:
            self._tracker.update(FlagPoint(self._n_tokens, len(self._text), observed.score, self.answer_tokens))
        return self._result

    @torch.no_grad()
    def _update(self) -> ScoreResult:
        norm = normalize_text(join_prompt_response(self.prompt, self._text))
        enc = self._tokenizer(norm, truncation=True, max_length=self._max_length, padding=False,
                              return_offsets_mapping=self._fast)
        ids = list(enc["input_ids"])
        if not ids:
            raise SirenError("the tokenizer returned no tokens for the text: it cannot be scored")
        self._advance(norm, ids, enc.get("offset_mapping"))
        self._n_tokens = len(ids)
        if len(self._ids) == self._max_length:
            self._frozen = True  # the first max_length tokens are fixed: nothing later is read
        total = self._sum + self._tail_rows.sum(dim=0, dtype=torch.float64)
        z = (total / len(ids)).to(torch.float32) * self._scale
        if self.prompt is not None and self._prompt_verdict is None:
            self._prompt_verdict = self._score_prompt(ids)
        z_answer = None
        if self._answers:
            self._answer_start = self._find_answer_start(norm, enc["offset_mapping"])
            z_answer = self._answer_features(total, len(ids))
        else:
            self._answer_start = min(self._prompt_tokens(), len(ids))
        # One call of the main head for the whole text and the answer pool (the answer verdict blends
        # it in): its weights are read from memory once per feed, not twice.
        rows = z[None] if z_answer is None else torch.stack([z, z_answer])
        main = self.guard.proba_from_features(rows)
        whole = self.guard.results_from_features(z[None].numpy(), self.threshold, probs=main[:1])[0]
        response = None
        if z_answer is not None:
            score = float(self.guard.answer_proba_from_features(z_answer[None], main=main[1:])[0])
            response = Verdict.of(score, self.guard.answer_threshold)
        return replace(whole, prompt=self._prompt_verdict, response=response)

    def _advance(self, norm: str, ids: list[int], offsets) -> None:
        """Bring the committed tokens, the cache and the rows up to `ids` (see "Hold-back")."""
        keep = _common_prefix(self._ids, ids)
        if keep < len(self._ids):
            self._rollback(keep)
        start = len(self._ids)
        tail = ids[start:]
        if tail != self._tail_ids:
            # The last feed's uncommitted tokens that `ids` still has at the same positions keep
            # their cache entries and rows; the backbone runs only on the tokens after them.
            same = _common_prefix(self._tail_ids, tail)
            self._crop_cache(start + same)
            rows = self._tail_rows[:same]
            if same < len(tail):
                rows = torch.cat([rows, self._forward(tail[same:], start + same)])
            commit = self._stable_count(norm, ids, offsets) - start
            commit = max(0, min(commit, len(tail)))
            self._rows[start:start + commit] = rows[:commit]
            self._sum += rows[:commit].sum(dim=0, dtype=torch.float64)
            self._ids.extend(tail[:commit])
            self._tail_ids, self._tail_rows = tail[commit:], rows[commit:]
        elif tail and len(ids) == self._max_length and self._stable_count(norm, ids, offsets) == len(ids):
            # The same uncommitted tokens as last time (so the same rows), and now every one of the
            # max_length tokens read is stable: commit them (nothing will ever run after them).
            self._rows[start:] = self._tail_rows
            self._sum += self._tail_rows.sum(dim=0, dtype=torch.float64)
            self._ids.extend(tail)
            self._tail_ids, self._tail_rows = [], self._tail_rows[:0]
        # else: the same uncommitted tokens as last time, so the same rows; nothing to run.

    def _crop_cache(self, n: int) -> None:
        """Keep the cache entries of the first `n` tokens read (it holds those of the committed
        tokens and then of the uncommitted ones)."""
        drop = len(self._ids) + len(self._tail_ids) - n
        if n == 0:
            self._cache = DynamicCache()
        elif drop > 0:
            self._cache.crop(-drop)  # transformers 5.x: a negative count of trailing tokens to remove

    def _rows_sum(self, end: int) -> torch.Tensor:
        """float64 sum of the rows of tokens [0, end) (committed, then uncommitted)."""
        committed = len(self._ids)
        if end <= committed:
            return self._rows[:end].sum(dim=0, dtype=torch.float64)
        return self._sum + self._tail_rows[:end - committed].sum(dim=0, dtype=torch.float64)

    def _prompt_tokens(self) -> int:
        return 0 if self.prompt is None else self._prompt_len

    def _score_prompt(self, ids: list[int]) -> Verdict:
        """The prompt's verdict: the main head on its own tokens' rows when they open `ids` (a causal
        backbone's prompt tokens do not see the answer), else on a forward of the prompt alone."""
        pids = self._extractor.tokenize([self.prompt])[0]
        self._prompt_len = len(pids)
        if ids[:len(pids)] == pids:
            z = (self._rows_sum(len(pids)) / len(pids)).to(torch.float32) * self._scale
        else:
            z = torch.as_tensor(self._extractor.features([self.prompt])[0])
        return Verdict.of(float(self.guard.proba_from_features(z[None])[0]), self.threshold)

    def _find_answer_start(self, norm: str, offsets) -> int:
        """Index of the answer's first token (as `siren.features.answer_spans` finds it)."""
        a = answer_char_start(self.prompt, self._text)
        if a is None:
            return len(offsets)
        return next((i for i, (_lo, hi) in enumerate(offsets) if hi > a), len(offsets))

    def _answer_features(self, total: torch.Tensor, n: int) -> torch.Tensor | None:
        """(input_dim,) the mean of the answer tokens' rows (None before the answer's first token):
        the whole sum less the rows before the answer (kept while they are committed, so a feed
        costs no more than a row sum)."""
        start = self._answer_start
        if start >= n:
            return None
        if self._before_answer is not None and self._before_answer[0] == start:
            before = self._before_answer[1]
        else:
            before = self._rows_sum(start)
            self._before_answer = (start, before) if start <= len(self._ids) else None
        return ((total - before) / (n - start)).to(torch.float32) * self._scale

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
        """Drop the tokens read from position `keep` on (committed or not: their cache entries and rows)."""
        self.rollbacks += 1
        self._crop_cache(keep)
        del self._ids[keep:]
        self._sum = self._rows[:keep].sum(dim=0, dtype=torch.float64)
        if self._before_answer is not None and self._before_answer[0] > keep:
            self._before_answer = None
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
