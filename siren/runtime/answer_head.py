"""The answer head of a guard folder: `siren_config.json["siren"]["answer_head"]`.

    {"weights": "answer_head.safetensors" | null,
     "mlp": {input_dim, layer_dims, dropout_rates, num_classes: 2} | null,
     "shared": bool,          # true: the answer verdict uses the main head (weights and mlp null)
     "threshold": float,      # the stream's stop threshold on the answer verdict (its rule's)
     "decision_threshold": float,  # optional, default `threshold`: a finished answer's verdict
                              # (`ScoreResult.response.is_harmful`) is harmful at score >= this
     "stream": {"debounce": int, "min_answer_tokens": int, "ema": float | null},
     "main_weight": float}    # optional, default 0: the verdict is (1 - w) * answer head + w * main
                              # head, both on the answer pool (ignored when shared)

It reads the same `(input_dim,)` features as the main head, pooled over the answer's tokens only
(`siren.features.answer_spans`); its weights use siren.safetensors' layout (`network.<k>.*`).
`llm-siren` ignores the key, so a guard with an answer head still loads there, with equal scores.

Two thresholds, because a stream and a finished answer are different decisions: a stream is
stopped the first time any prefix crosses `threshold` (chosen for a target false-alarm rate on
safe streams, so it sits high), while a finished answer is judged once, at `decision_threshold`
(the guard's decision threshold, as the whole text's verdict). Folders written before the split
have one threshold for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from siren.artifact import build_head, load_head_state
from siren.checks import check_decision_threshold
from siren.errors import SirenError
from siren.runtime.stream_rules import StreamRule

ANSWER_HEAD_WEIGHTS = "answer_head.safetensors"


@dataclass(frozen=True)
class AnswerHeadSpec:
    """The parsed `answer_head` entry (weights not loaded)."""

    shared: bool
    threshold: float
    rule: StreamRule          # the stream's stop rule on the answer verdict (threshold included)
    weights: str | None
    mlp: dict | None
    main_weight: float = 0.0  # the answer verdict = (1 - w) * answer head + w * main head, on the answer pool
    decision_threshold: float | None = None   # a finished answer's verdict; None: `threshold`

    @property
    def verdict_threshold(self) -> float:
        """The threshold of `ScoreResult.response` (the stream's stop uses `rule.threshold`)."""
        return self.threshold if self.decision_threshold is None else self.decision_threshold


def parse_answer_head(config: dict, source: str) -> AnswerHeadSpec | None:
    """The folder's answer head entry, checked; None when the guard has none."""
    entry = (config.get("siren") or {}).get("answer_head")
    if entry is None:
        return None
    where = f"{source}: siren.answer_head"
    if not isinstance(entry, dict):
        raise SirenError(f"{where} must be an object (see siren.runtime.answer_head), got {type(entry).__name__}")
    shared = entry.get("shared", False)
    if not isinstance(shared, bool):
        raise SirenError(f"{where}.shared must be true or false, got {shared!r}")
    if "threshold" not in entry:
        raise SirenError(f"{where} has no threshold: add \"threshold\": <a number in [0, 1]>")
    threshold = check_decision_threshold(entry["threshold"], f"{where}.threshold")
    decision = entry.get("decision_threshold")
    if decision is not None:
        decision = check_decision_threshold(decision, f"{where}.decision_threshold")
    stream = entry.get("stream") or {}
    if not isinstance(stream, dict):
        raise SirenError(f"{where}.stream must be an object {{debounce, min_answer_tokens, ema}}")
    unknown = set(stream) - {"debounce", "min_answer_tokens", "ema"}
    if unknown:
        raise SirenError(f"{where}.stream has unknown keys {sorted(unknown)}: use debounce, min_answer_tokens, ema")
    rule = StreamRule(threshold, stream.get("debounce"), stream.get("min_answer_tokens"), stream.get("ema"))  # absent: the YAML's
    weights, mlp = entry.get("weights"), entry.get("mlp")
    if shared and (weights is not None or mlp is not None):
        raise SirenError(f"{where} is shared with the main head, so its weights and mlp must be null")
    if not shared:
        if not isinstance(weights, str) or not weights or "/" in weights or "\\" in weights or weights.startswith("."):
            raise SirenError(f"{where}.weights must name a file in the guard folder (e.g. {ANSWER_HEAD_WEIGHTS!r}), "
                             f"got {weights!r}")
        if not isinstance(mlp, dict) or not {"input_dim", "layer_dims", "dropout_rates"} <= set(mlp):
            raise SirenError(f"{where}.mlp must be an object {{input_dim, layer_dims, dropout_rates, num_classes}}")
        if mlp["input_dim"] != config["mlp"]["input_dim"]:
            raise SirenError(f"{where}.mlp.input_dim is {mlp['input_dim']} but the guard's features have "
                             f"{config['mlp']['input_dim']} columns: the answer head belongs to another guard")
    main_weight = entry.get("main_weight", 0.0)
    if isinstance(main_weight, bool) or not isinstance(main_weight, (int, float)) or not 0.0 <= main_weight <= 1.0:
        raise SirenError(f"{where}.main_weight must be a number in [0, 1] (0: the answer head alone), got {main_weight!r}")
    return AnswerHeadSpec(shared, threshold, rule, weights, mlp, 0.0 if shared else float(main_weight), decision)


def load_answer_head(spec: AnswerHeadSpec, fetch: Callable[[str], object]) -> torch.nn.Module | None:
    """The answer head's MLP (fp32, CPU, eval), or None when it shares the main head.
    fetch(file name) -> local path of that file of the guard folder (or Hub repo)."""
    if spec.shared:
        return None
    config = {"mlp": {"num_classes": 2, **spec.mlp}}
    return build_head(config, load_head_state(fetch(spec.weights), config))
