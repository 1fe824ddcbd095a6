"""When a stream of scores should stop an answer: the decision rule, in plain Python + numpy.

    rule = StreamRule(threshold=0.7, debounce=2, min_answer_tokens=8, ema=None)
    state = rule.start()
    for answer_tokens, score in observations:      # one observation per token or per chunk
        if state.update(answer_tokens, score):     # sticky: stays True once flagged
            print(state.flagged_at)                # (answer tokens, score) where the run began
            break

An observation is whatever the caller scores (a token, a chunk of tokens): the rule counts
observations, not tokens, so `debounce=2` over per-token scores is Qwen3Guard-Stream's
"2 consecutive unsafe tokens".

- `ema`: None reads the raw scores; alpha in (0, 1] smooths them, s_t = alpha * x_t +
  (1 - alpha) * s_{t-1}, starting at s_0 = x_0 (alpha = 1 is the raw score). Smoothing runs
  over every observation, also those before `min_answer_tokens`, so the first eligible value
  already carries the history.
- An observation is unsafe when its (smoothed) value is >= threshold.
- `min_answer_tokens`: observations made with fewer answer tokens read never count towards a
  run (a one-token answer says too little to stop it), so a flag's run begins at or after it.
- `debounce`: the state flags at the `debounce`-th consecutive unsafe eligible observation and
  stays flagged (a stopped stream stays stopped).

`first_flag` answers the same question for a whole trace (used by offline metrics), and is
tested to equal feeding a `RuleState` score by score. `threshold_for_false_alarm` picks the
lowest threshold at which at most a target fraction of safe streams would be flagged: flagging
is monotone in the threshold (a run of values >= t is a run for every lower t), so a stream is
flagged at t iff its peak (the best over eligible windows of `debounce` observations of the
window's lowest value) is >= t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from siren.errors import SirenError


@dataclass(frozen=True)
class StreamRule:
    threshold: float  # score >= threshold counts as unsafe
    debounce: int = 1  # flag after this many consecutive unsafe scores (>= 1)
    min_answer_tokens: int = 0  # never flag before this many answer tokens were read (>= 0)
    ema: float | None = None  # None: raw scores; alpha in (0, 1]: smoothed

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold):
            raise SirenError(f"stream rule threshold must be a finite number, got {self.threshold!r}")
        if isinstance(self.debounce, bool) or not isinstance(self.debounce, (int, np.integer)) or self.debounce < 1:
            raise SirenError(f"stream rule debounce must be a whole number >= 1 (consecutive scores), "
                             f"got {self.debounce!r}")
        if isinstance(self.min_answer_tokens, bool) or not isinstance(self.min_answer_tokens, (int, np.integer)) \
                or self.min_answer_tokens < 0:
            raise SirenError(f"stream rule min_answer_tokens must be a whole number >= 0, "
                             f"got {self.min_answer_tokens!r}")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0.0 < self.ema <= 1.0):
            raise SirenError(f"stream rule ema must be null (raw scores) or an alpha in (0, 1], got {self.ema!r}")

    def start(self) -> "RuleState":
        return RuleState(self)

    def with_threshold(self, threshold: float) -> "StreamRule":
        return StreamRule(float(threshold), self.debounce, self.min_answer_tokens, self.ema)


class RuleState:
    """One stream's running decision under a `StreamRule`."""

    def __init__(self, rule: StreamRule):
        self.rule = rule
        self.value: float | None = None  # last (smoothed) score
        self.flagged_at: tuple[int, float] | None = None  # (answer tokens, score) where the flagging run began
        self._run = 0
        self._run_start: tuple[int, float] | None = None

    @property
    def flagged(self) -> bool:
        return self.flagged_at is not None

    def update(self, answer_tokens: int, score: float) -> bool:
        """Read one observation; returns whether the stream is flagged (sticky)."""
        score = float(score)
        if not math.isfinite(score):
            raise SirenError(f"stream rule got a non-finite score {score!r} at {answer_tokens} answer tokens: "
                             "scores must be finite numbers")
        alpha = self.rule.ema
        self.value = score if alpha is None or self.value is None else alpha * score + (1.0 - alpha) * self.value
        if self.flagged_at is not None:
            return True
        if int(answer_tokens) >= self.rule.min_answer_tokens and self.value >= self.rule.threshold:
            if self._run == 0:
                self._run_start = (int(answer_tokens), float(self.value))
            self._run += 1
            if self._run >= self.rule.debounce:
                self.flagged_at = self._run_start
        else:
            self._run, self._run_start = 0, None
        return self.flagged_at is not None


def _trace(positions, scores) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(positions).reshape(-1)
    val = np.asarray(scores, dtype=np.float64).reshape(-1)
    if pos.shape != val.shape:
        raise SirenError(f"stream trace has {pos.size} positions but {val.size} scores: give one score per position")
    if not np.all(np.isfinite(val)):
        raise SirenError("stream trace has non-finite scores: scores must be finite numbers")
    return pos, val


def smoothed(scores: np.ndarray, ema: float | None) -> np.ndarray:
    """The values the rule compares with its threshold (the raw scores, or their EMA)."""
    val = np.asarray(scores, dtype=np.float64).reshape(-1)
    if ema is None or ema == 1.0 or val.size == 0:
        return val.copy()
    out = np.empty_like(val)
    acc = val[0]
    for i, x in enumerate(val):  # a sequential recurrence; traces are short enough for a loop
        acc = x if i == 0 else ema * x + (1.0 - ema) * acc
        out[i] = acc
    return out


def first_flag(positions: np.ndarray, scores: np.ndarray, rule: StreamRule) -> int | None:
    """Index into `positions` of the observation at which the rule flags (the run's last one), or None.

    The run began `rule.debounce - 1` observations earlier (what `RuleState.flagged_at` reports)."""
    pos, val = _trace(positions, scores)
    state = rule.start()
    for i in range(pos.size):
        if state.update(int(pos[i]), float(val[i])):
            return i
    return None


def stream_peak(positions: np.ndarray, scores: np.ndarray, rule: StreamRule) -> float:
    """The highest threshold at which `rule` would flag this trace (-inf if it never can)."""
    pos, val = _trace(positions, scores)
    k = int(rule.debounce)
    if pos.size < k:
        return -math.inf
    vals = np.where(pos >= rule.min_answer_tokens, smoothed(val, rule.ema), -np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(vals, k).min(axis=1)
    return float(windows.max())


def false_alarm_rate(safe: Sequence[tuple[np.ndarray, np.ndarray]], rule: StreamRule) -> float:
    """Fraction of the given (safe) traces that `rule` flags."""
    if len(safe) == 0:
        raise SirenError("false_alarm_rate needs at least one safe stream trace")
    return float(np.mean([stream_peak(p, s, rule) >= rule.threshold for p, s in safe]))


def threshold_for_false_alarm(safe: Sequence[tuple[np.ndarray, np.ndarray]], rule: StreamRule,
                              target: float) -> float:
    """The lowest threshold at which at most `target` of the safe traces are flagged under `rule`.

    `safe` holds (positions in answer tokens, scores) per safe stream; `rule.threshold` is ignored.
    When every threshold meets the target (too few streams can flag at all), returns the lowest
    eligible value seen (every score is unsafe there), or 0.0 when none is eligible."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target <= 1.0:
        raise SirenError(f"target false-alarm rate must be a fraction in [0, 1], got {target!r}")
    if len(safe) == 0:
        raise SirenError("threshold_for_false_alarm needs at least one safe stream trace (validation streams)")
    peaks = np.sort(np.array([stream_peak(p, s, rule) for p, s in safe]))[::-1]
    allowed = int(math.floor(target * len(peaks) + 1e-9))  # 1e-9: 0.1 * 10 must allow 1 stream
    if allowed >= len(peaks) or not math.isfinite(peaks[allowed]):
        eligible = [smoothed(s, rule.ema)[np.asarray(p).reshape(-1) >= rule.min_answer_tokens] for p, s in safe]
        eligible = np.concatenate(eligible) if eligible else np.empty(0)
        return float(eligible.min()) if eligible.size else 0.0
    # flagged at t iff peak >= t: the (allowed + 1)-th highest peak must fall just below t
    return float(np.nextafter(peaks[allowed], np.inf))
