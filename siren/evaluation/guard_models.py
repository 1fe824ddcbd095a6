"""Generative guard models as comparison systems: Qwen3Guard-Gen and Llama Guard 3.

Reads: a guard model (a registry name from `configs/backbones.yaml` such as `qwen3guard-0.6b`
or `llama-guard3-1b`, optionally pointed at a local folder) and rows with `prompt` /
`response` (or only `text`). Writes nothing; `siren.evaluation.report` turns the output into
table rows.

How a row is scored (the same for both families):

1. Messages: `[user: prompt]`, plus `[assistant: response]` when the row has a response (the
   guard then judges the response). Each message's content is cut to `max_length` tokens
   before templating, so truncation never cuts the template itself.
2. Prompt text: the model's own chat template (`apply_chat_template(..., add_generation_prompt=True)`;
   templates that always open the assistant turn ignore the flag), followed by the fixed text
   the guard always writes before its verdict word (`Safety:` for Qwen3Guard-Gen, nothing for
   Llama Guard 3). Conditioning on a prefix the model writes anyway does not change the
   verdict and puts the verdict word at the first generated position.
3. Batched greedy generation (left padding) of the verdict tokens only (`max_new_tokens` = the
   longest verdict word plus room for leading whitespace), keeping the logits.
4. Verdict: the parser reads prefix + generated text (`Safety: Safe|Unsafe|Controversial`;
   `safe` / `unsafe` + `S<n>` categories). An output that does not parse is recorded as
   unparsed (counted in the report) and is not flagged; no verdict is ever made up.
5. Probability: at the first generated step whose token is not whitespace, the softmax over
   the vocabulary restricted to the first non-whitespace token of each verdict word, normalised over those
   words; P(unsafe) sums the unsafe words (Qwen3Guard strict: Unsafe + Controversial; loose:
   Unsafe). If two verdict words share their first token there is no such probability and the
   score is the hard verdict (so ROC-AUC degenerates to one point); the report says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from siren import config
from siren.errors import SirenError

__all__ = ["GuardSpec", "GUARD_FAMILIES", "spec_for", "parse_qwen3guard", "parse_llama_guard", "build_messages",
           "build_prompt", "GuardScorer", "GuardOutput", "load_guard_model", "PAPER_GUARD_OF"]

# The guard the paper compares each backbone with (its "Guard" rows).
PAPER_GUARD_OF = {"qwen3-0.6b": "qwen3guard-0.6b", "llama3.2-1b": "llama-guard3-1b",
                  "qwen3-4b": "qwen3guard-4b", "llama3.1-8b": "llama-guard3-8b"}

_QWEN_VERDICT = re.compile(r"Safety:\s*(Safe|Unsafe|Controversial)\b")
_LLAMA_CATEGORY = re.compile(r"\bS(\d{1,2})\b")


def parse_qwen3guard(text: str) -> str | None:
    """Qwen3Guard-Gen output -> "safe" | "unsafe" | "controversial", or None if it has no verdict line."""
    m = _QWEN_VERDICT.search(text or "")
    return m.group(1).lower() if m else None


def parse_llama_guard(text: str) -> tuple[str | None, list[str]]:
    """Llama Guard 3 output -> ("safe" | "unsafe" | None, categories such as ["S1", "S10"]).

    The verdict is the first non-empty line; for "unsafe" the next line lists the categories.
    """
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines or lines[0].lower() not in ("safe", "unsafe"):
        return None, []
    verdict = lines[0].lower()
    cats = [f"S{n}" for n in _LLAMA_CATEGORY.findall(lines[1])] if verdict == "unsafe" and len(lines) > 1 else []
    return verdict, cats


@dataclass(frozen=True)
class GuardFamily:
    """What differs between guard families: the prefix before the verdict and the verdict words.

    verdict_words: verdict -> the text that follows `verdict_prefix` in the model's answer.
    modes: reading -> the verdicts that count as harmful (Qwen3Guard's strict and loose).
    """

    name: str
    verdict_prefix: str
    verdict_words: dict[str, str]
    modes: dict[str, tuple[str, ...]]

    def parse(self, text: str) -> str | None:
        if self.name == "qwen3guard":
            return parse_qwen3guard(text)
        return parse_llama_guard(text)[0]


GUARD_FAMILIES = {
    "qwen3guard": GuardFamily("qwen3guard", "Safety:",
                              {"safe": " Safe", "unsafe": " Unsafe", "controversial": " Controversial"},
                              {"strict": ("unsafe", "controversial"), "loose": ("unsafe",)}),
    "llama-guard3": GuardFamily("llama-guard3", "", {"safe": "safe", "unsafe": "unsafe"},
                                {"default": ("unsafe",)}),
}


def family_of(name: str) -> GuardFamily:
    """The family of a guard named like the registry's entries (qwen3guard-*, llama-guard3-*)."""
    key = name.lower().replace("_", "-")
    if "qwen3guard" in key:
        return GUARD_FAMILIES["qwen3guard"]
    if "llama-guard-3" in key or "llama-guard3" in key or "llamaguard3" in key:
        return GUARD_FAMILIES["llama-guard3"]
    raise SirenError(f"guard {name!r}: unknown family; name it like qwen3guard-0.6b or llama-guard3-1b "
                     "(optionally NAME=FOLDER for a local copy)")


@dataclass(frozen=True)
class GuardSpec:
    """A guard to run: its name (used in the report), where its weights are, and its family."""

    name: str
    model_id: str
    family: GuardFamily


def spec_for(arg: str) -> GuardSpec:
    """`NAME` (registry name or Hub id) or `NAME=FOLDER` -> GuardSpec."""
    name, _, folder = arg.partition("=")
    family = family_of(name)
    if folder:
        return GuardSpec(name, folder, family)
    from siren.backbones import registry

    entry = registry().get(name)
    model_id = entry["hub_id"] if entry and "hub_id" in entry else name
    return GuardSpec(name, model_id, family)


def build_messages(prompt: str | None, response: str | None, text: str | None = None) -> list[dict]:
    """One row -> chat messages: the user turn, and the assistant turn when there is a response."""
    user = prompt if prompt not in (None, "") else text
    if user is None:
        raise SirenError("a row has neither prompt nor text")
    messages = [{"role": "user", "content": str(user)}]
    if response not in (None, ""):
        messages.append({"role": "assistant", "content": str(response)})
    return messages


def _cut(tokenizer, content: str, max_length: int) -> str:
    ids = tokenizer(content, add_special_tokens=False)["input_ids"]
    return content if len(ids) <= max_length else tokenizer.decode(ids[:max_length])


def build_prompt(tokenizer, messages: list[dict], family: GuardFamily, max_length: int | None = None) -> str:
    """Messages -> the text the guard continues: its chat template + the family's verdict prefix.
    max_length: tokens per message at most (None: the config's max_length)."""
    max_length = config.default("max_length") if max_length is None else max_length
    cut = [{**m, "content": _cut(tokenizer, m["content"], max_length)} for m in messages]
    text = tokenizer.apply_chat_template(cut, tokenize=False, add_generation_prompt=True)
    return text + family.verdict_prefix


@dataclass
class GuardOutput:
    """Per row: the generated text (prefix included), the parsed verdict (None: unparsed), and
    per reading (e.g. strict/loose) P(harmful) (n,) float64 (NaN where no probability)."""

    texts: list[str]
    verdicts: list[str | None]
    p_harmful: dict[str, np.ndarray]
    seconds: float
    has_probability: bool
    notes: list[str] = field(default_factory=list)

    def predictions(self, mode: str, family: GuardFamily) -> np.ndarray:
        """(n,) int64: 1 where the verdict is harmful in `mode`; unparsed rows are 0 (not flagged)."""
        harmful = set(family.modes[mode])
        return np.array([1 if v in harmful else 0 for v in self.verdicts], dtype=np.int64)

    def scores(self, mode: str, family: GuardFamily) -> np.ndarray:
        """(n,) float64: P(harmful) where available, else the hard verdict (1.0 / 0.0)."""
        p = self.p_harmful[mode].copy()
        hard = self.predictions(mode, family).astype(np.float64)
        missing = np.isnan(p)
        p[missing] = hard[missing]
        return p

    @property
    def n_unparsed(self) -> int:
        return sum(v is None for v in self.verdicts)


class GuardScorer:
    """Scores rows with a causal-LM guard. model: a *ForCausalLM; tokenizer with a chat template."""

    def __init__(self, model, tokenizer, family: GuardFamily, *, max_length: int | None = None,
                 whitespace_steps: int = 2):
        if not getattr(tokenizer, "chat_template", None):
            raise SirenError("the guard's tokenizer has no chat template; a guard model must ship its own")
        self.model, self.tokenizer, self.family = model, tokenizer, family
        self.max_length = int(config.default("max_length") if max_length is None else max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise SirenError("the guard's tokenizer has neither a pad nor an eos token")
        first = {}
        longest = 1
        for verdict, word in family.verdict_words.items():
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            longest = max(longest, len(ids))
            # The step read is the first non-whitespace one, so a word's leading whitespace
            # tokens (a tokenizer that splits " Safe" into " " + "Safe") are skipped here too.
            while len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
                ids = ids[1:]
            first[verdict] = ids[0]
        self.first_token = first                      # verdict -> first token id of its word
        self.distinct = len(set(first.values())) == len(first)
        self.max_new_tokens = longest + int(whitespace_steps)
        self.device = next(model.parameters()).device

    def prompts(self, rows: Sequence[dict]) -> list[str]:
        return [build_prompt(self.tokenizer, build_messages(r.get("prompt"), r.get("response"), r.get("text")),
                             self.family, self.max_length) for r in rows]

    def _encode(self, prompts: Sequence[str]):
        import torch

        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):                   # left padding: every row ends where generation starts
            input_ids[i, width - len(x):] = torch.as_tensor(x, dtype=torch.long)
            mask[i, width - len(x):] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _verdict_probs(self, step_logits, generated) -> np.ndarray:
        """step_logits: per step (b, V); generated (b, steps) -> (b, n_verdicts) probabilities over
        the verdict words' first tokens at the first non-whitespace step (NaN if there is none)."""
        import torch

        verdicts = list(self.family.verdict_words)
        token_ids = torch.tensor([self.first_token[v] for v in verdicts])
        b, steps = generated.shape
        out = np.full((b, len(verdicts)), np.nan)
        for i in range(b):
            for s in range(steps):
                tok = int(generated[i, s])
                if tok == self.tokenizer.eos_token_id:
                    break
                if self.tokenizer.decode([tok]).strip():
                    logp = torch.log_softmax(step_logits[s][i].float(), dim=-1)[token_ids]
                    out[i] = torch.softmax(logp, dim=-1).double().cpu().numpy()
                    break
        return out

    def score(self, rows: Sequence[dict], batch_size: int | None = None) -> GuardOutput:
        """rows: dicts with prompt/response (or text) -> GuardOutput, in input order (batch_size
        None: `siren report`'s guard_batch_size)."""
        batch_size = config.default("guard_batch_size", "report") if batch_size is None else batch_size
        import torch

        prompts = self.prompts(rows)
        order = np.argsort([len(p) for p in prompts], kind="stable")   # similar lengths share a batch
        texts: list[str] = [""] * len(prompts)
        probs = np.full((len(prompts), len(self.family.verdict_words)), np.nan)
        start = time.perf_counter()
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            input_ids, mask = self._encode([prompts[i] for i in idx])
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                          do_sample=False, output_logits=True, return_dict_in_generate=True,
                                          pad_token_id=self.pad_id)
            generated = out.sequences[:, input_ids.shape[1]:].cpu()
            if self.distinct:
                probs[idx] = self._verdict_probs([l.cpu() for l in out.logits], generated)
            for j, i in enumerate(idx):
                texts[i] = self.family.verdict_prefix + self.tokenizer.decode(generated[j], skip_special_tokens=True)
        seconds = time.perf_counter() - start
        verdicts = [self.family.parse(t) for t in texts]
        names = list(self.family.verdict_words)
        p_harmful = {mode: probs[:, [names.index(v) for v in harmful]].sum(axis=1) for mode, harmful in
                     self.family.modes.items()}
        notes = [] if self.distinct else ["verdict words share a first token: scores are hard verdicts"]
        return GuardOutput(texts, verdicts, p_harmful, seconds, self.distinct, notes)


def load_guard_model(spec: GuardSpec, *, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer) of a guard, frozen, eval mode; SirenError naming the guard if it cannot load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from siren.backbones import resolve_device, resolve_dtype

    device = resolve_device(device)
    if spec.model_id.startswith((".", "/", "~")) and not Path(spec.model_id).expanduser().is_dir():
        raise SirenError(f"guard {spec.name}: no folder {spec.model_id}; pass {spec.name}=FOLDER with the "
                         "downloaded model, or a registry name with Hub access")
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.model_id)
        model = AutoModelForCausalLM.from_pretrained(spec.model_id, dtype=resolve_dtype(dtype, device, spec.model_id))
    except (OSError, ValueError) as err:
        raise SirenError(f"guard {spec.name}: could not load {spec.model_id} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); with no Hub access, pass {spec.name}=FOLDER") from err
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer
