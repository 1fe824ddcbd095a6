"""Stream decision rules: debounce, minimum answer tokens, EMA, stickiness, and the threshold picker."""

import math

import numpy as np
import pytest

from siren.errors import SirenError
from siren.runtime.stream_rules import (RuleState, StreamRule, false_alarm_rate, first_flag, smoothed, stream_peak,
                                        threshold_for_false_alarm)


def feed(rule, scores, start=1):
    state = rule.start()
    return [state.update(start + i, s) for i, s in enumerate(scores)], state


def test_debounce_needs_consecutive_unsafe_scores():
    rule = StreamRule(threshold=0.5, debounce=2)
    flags, state = feed(rule, [0.9, 0.1, 0.9, 0.2, 0.6, 0.7, 0.1])
    assert flags == [False, False, False, False, False, True, True]
    assert state.flagged_at == (5, 0.6)  # where the run began: 5th answer token
    one, _ = feed(StreamRule(threshold=0.5, debounce=1), [0.1, 0.5])
    assert one == [False, True]  # >= threshold counts


def test_min_answer_tokens_gates_the_run():
    rule = StreamRule(threshold=0.5, debounce=2, min_answer_tokens=3)
    flags, state = feed(rule, [0.9, 0.9, 0.9, 0.9])
    assert flags == [False, False, False, True]  # tokens 1, 2 do not count; run = tokens 3, 4
    assert state.flagged_at == (3, 0.9)


def test_ema_smooths_scores():
    rule = StreamRule(threshold=0.5, debounce=1, ema=0.5)
    flags, state = feed(rule, [0.0, 1.0, 0.0, 1.0, 1.0])
    # values: 0, 0.5, 0.25, 0.625, 0.8125
    assert flags == [False, True, True, True, True]
    assert state.flagged_at == (2, 0.5)
    assert state.value == pytest.approx(0.8125)
    np.testing.assert_allclose(smoothed(np.array([0.0, 1.0, 0.0, 1.0, 1.0]), 0.5), [0, 0.5, 0.25, 0.625, 0.8125])
    flags, _ = feed(StreamRule(threshold=0.6, ema=0.5), [0.0, 1.0, 0.0, 1.0, 1.0])
    assert flags == [False, False, False, True, True]


def test_flag_is_sticky():
    rule = StreamRule(threshold=0.5, debounce=1)
    flags, state = feed(rule, [0.9, 0.0, 0.0])
    assert flags == [True, True, True]
    assert state.flagged and state.flagged_at == (1, 0.9)
    assert state.value == 0.0  # the value keeps tracking the scores


@pytest.mark.parametrize("bad", [dict(debounce=0), dict(debounce=1.5), dict(min_answer_tokens=-1),
                                 dict(ema=0.0), dict(ema=1.5), dict(threshold=math.nan)])
def test_bad_rule_is_refused(bad):
    kwargs = dict(threshold=0.5, debounce=1, min_answer_tokens=0, ema=None) | bad
    with pytest.raises(SirenError):
        StreamRule(**kwargs)


def test_nonfinite_score_is_refused():
    with pytest.raises(SirenError):
        StreamRule(threshold=0.5).start().update(1, math.nan)


def random_rules(rng, n):
    for _ in range(n):
        yield StreamRule(threshold=float(rng.uniform(0.2, 0.8)), debounce=int(rng.integers(1, 4)),
                         min_answer_tokens=int(rng.integers(0, 6)),
                         ema=None if rng.random() < 0.5 else float(rng.uniform(0.1, 1.0)))


def test_first_flag_equals_feeding_rule_state():
    rng = np.random.default_rng(0)
    for rule in random_rules(rng, 300):
        n = int(rng.integers(0, 30))
        pos = np.cumsum(rng.integers(1, 4, size=n))
        scores = rng.random(n)
        state, expect = RuleState(rule), None
        for i in range(n):
            if state.update(int(pos[i]), float(scores[i])):
                expect = i
                break
        assert first_flag(pos, scores, rule) == expect
        # the peak says the same for every threshold: flagged at t iff peak >= t
        assert (stream_peak(pos, scores, rule) >= rule.threshold) == (expect is not None)


def test_threshold_for_false_alarm_meets_target_and_is_lowest():
    rng = np.random.default_rng(1)
    safe = [(np.arange(1, 41), rng.beta(2, 5, size=40)) for _ in range(50)]
    for rule in random_rules(rng, 20):
        for target in (0.0, 0.05, 0.1, 0.3):
            t = threshold_for_false_alarm(safe, rule, target)
            assert false_alarm_rate(safe, rule.with_threshold(t)) <= target + 1e-12
            lower = float(np.nextafter(t, -np.inf))
            assert false_alarm_rate(safe, rule.with_threshold(lower)) > target


def test_threshold_for_false_alarm_exact_fraction():
    # ten safe streams, one 2-consecutive run each at a known height: 10% allows one stream
    safe = [(np.arange(1, 5), np.array([0.0, h, h, 0.0])) for h in np.linspace(0.1, 1.0, 10)]
    rule = StreamRule(threshold=0.5, debounce=2)
    t = threshold_for_false_alarm(safe, rule, 0.1)
    assert 0.9 < t <= 0.9 + 1e-12
    assert false_alarm_rate(safe, rule.with_threshold(t)) == pytest.approx(0.1)


def test_threshold_for_false_alarm_bad_input():
    rule = StreamRule(threshold=0.5)
    with pytest.raises(SirenError):
        threshold_for_false_alarm([], rule, 0.1)
    with pytest.raises(SirenError):
        threshold_for_false_alarm([(np.arange(1, 3), np.zeros(2))], rule, 1.5)
    with pytest.raises(SirenError):
        first_flag(np.arange(3), np.zeros(2), rule)


def test_threshold_for_false_alarm_fraction_round_off():
    # 0.29 * 100 is 28.999999999999996 in floating point: the target still allows 29 streams
    safe = [(np.arange(1, 3), np.array([h, h])) for h in np.linspace(0.01, 1.0, 100)]
    rule = StreamRule(threshold=0.5)
    t = threshold_for_false_alarm(safe, rule, 0.29)
    assert false_alarm_rate(safe, rule.with_threshold(t)) == pytest.approx(0.29)
