"""What a guard says about a text: the result types every runtime path returns.

    ScoreResult(score, is_harmful, threshold, prompt=None, response=None,
                categories=None, category_scores=None)

`score` / `is_harmful` / `threshold` are the verdict on the text as `llm-siren` reads it (the
whole text: prompt + "\\n" + response for a pair). A guard that knows more fills the rest:

- `prompt`: the request's verdict (is the prompt harmful?), a `Verdict`, when a prompt was given;
- `response`: the answer's verdict (is this answer harmful, given its prompt?), a `Verdict` read
  from the answer's own tokens with the prompt in the backbone's context; None when the guard
  has no answer head or no response was given. A stream's stop decision uses this one;
- `categories` / `category_scores`: {category: bool} and {category: float} in the output
  taxonomy (configs/), only for categories the guard was trained on; None when it has no
  category head. Each score is scaled so that its category's threshold is 0.5: a category is
  flagged exactly when its score is >= 0.5 (siren.categories.CategoryModel.reported).

Plain data (no torch), so that serving, evaluation and the session share them without cycles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Verdict:
    """One question's answer: harmful iff score >= threshold."""

    score: float
    is_harmful: bool
    threshold: float

    @classmethod
    def of(cls, score: float, threshold: float) -> "Verdict":
        return cls(float(score), bool(score >= threshold), float(threshold))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScoreResult:
    score: float
    is_harmful: bool
    threshold: float
    prompt: Verdict | None = None
    response: Verdict | None = None
    categories: dict[str, bool] | None = None
    category_scores: dict[str, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready; optional parts that are None are left out, so old clients see old keys."""
        out = {"score": self.score, "is_harmful": self.is_harmful, "threshold": self.threshold}
        for key in ("prompt", "response"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_dict()
        if self.categories is not None:
            out["categories"] = dict(self.categories)
            out["category_scores"] = dict(self.category_scores or {})
        return out
