"""The runtime guard: text -> harmfulness score, from a guard folder (ours or `llm-siren`'s).

    guard = SirenGuard.from_pretrained("train/probes/optuna/smollm2-135m_general")
    guard.score("how do I make a bomb")            # ScoreResult(score, is_harmful, threshold)
    guard.score(prompt="...", response="...")      # joined with "\\n"; .prompt and .response verdicts
    guard.score_batch(texts)                       # length-bucketed, input order
    guard.score_pairs([(prompt, response), ...])   # both verdicts per pair, batched, input order
    session = guard.stream(prompt=p)               # incremental: constant backbone cost per token
    session.feed(chunk)                            # ScoreResult of p + "\\n" + response so far
    guard.attach(causal_lm)                        # StoppingCriteria for generate(): see runtime.generation

Verdicts (`siren.runtime.results`): `score` is the whole text's (prompt + "\\n" + response, as
`llm-siren` reads it); `.prompt` is the main head on the prompt's tokens alone (a causal backbone's
prompt tokens do not see the answer, so it is the score of the normalised prompt alone: it is read
from the same forward when the prompt's tokens open the joined text, else from a forward of the
prompt); `.response` is the answer head (`siren.runtime.answer_head`) on the mean over the answer's
tokens only, with the prompt in context (`siren.features.answer_spans`); None without an answer head.

Features are exactly `llm-siren`'s (`guard.extractor`, a `siren.runtime.extractor.GuardFeatures`):
for each selected layer (ascending) the pooled vector (`siren.features.LayerFeatures`, the same
function training used) in fp32, indexed by that layer's neurons in the order listed in
`selected_neurons_dict`, times `layer_weights[str(l)]` (1.0 when absent), concatenated; score =
softmax(head(z))[1]; harmful iff score >= threshold.
The backbone runs only up to the deepest selected layer. A bf16 backbone that the guard loads on a
CPU with native bf16 keeps its Linear weights prepacked for oneDNN (`siren.runtime.prepack`, those
reading one input as one product), and runs the head's input layer as a packed bf16 product:
the same scores to bf16 rounding, faster; `prepack=False` gives the plain forward. A fold
ensemble's block-diagonal hidden layers are always computed block by block (the same sums).
`compile=True` instead runs single texts through a `torch.compile`d forward (faster still, equal to
float rounding; it compiles while loading, so it suits servers: `siren serve --compile`).

Text: chat-template tokens removed, whitespace collapsed, empty -> " " (so an empty input has a
defined score); inputs longer than `inference.max_length` tokens are truncated on the right
(only the first max_length tokens are read). Imports no Optuna and no training code.
"""

from __future__ import annotations

import logging
from dataclasses import replace
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from siren.artifact import (CONFIG_NAME, WEIGHTS_NAME, build_head, check_fits, load_config_file, load_head_state,
                            selection_from_config)
from siren.checks import check_decision_threshold
from siren.backbones import Backbone, load_backbone, native_bf16_cpu, registry
from siren.errors import SirenError
from siren.config import command_defaults as config_defaults
from siren.features import answer_spans, default_batch_tokens, join_prompt_response, length_batches
from siren.runtime.answer_head import load_answer_head, parse_answer_head
from siren.runtime.extractor import GuardFeatures
from siren.runtime.generation import GuardedGeneration
from siren.runtime.results import ScoreResult, Verdict  # noqa: F401 (re-exported)
from siren.runtime.prepack import packed_count, prepack_head, prepack_linears, prepack_support, split_block_diagonal
from siren.runtime.stream import StreamSession
from siren.runtime.stream_rules import StreamRule

log = logging.getLogger(__name__)


def _dtype_name(dtype) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    raise SirenError(f"dtype must be a name like 'float32' or a torch.dtype, got {dtype!r}")


def _artifact_fetch(folder_or_hub_id: str):
    """A function: file name -> local path of that file of the guard (a local folder, else
    downloaded from the Hugging Face Hub)."""
    path = Path(folder_or_hub_id).expanduser()
    if path.is_dir():
        return lambda name: path / name
    text = str(folder_or_hub_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise SirenError(f"guard {folder_or_hub_id!r} is neither a folder nor a Hub id like 'org/name'")

    def fetch(name: str) -> Path:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=text, filename=name))
        except Exception as err:  # network, auth, missing repo or file
            raise SirenError(f"could not download {name} of guard {text!r} from the Hugging Face Hub: {err}") from err

    return fetch


def _load_categories(folder_or_hub_id: str, config_path: Path, input_dim: int):
    """The guard's category head (siren.categories), or None when its folder has none. From the
    Hub: its two files when the repo has them (a repo without them is a guard without categories)."""
    from siren.categories import HEAD_CONFIG, HEAD_WEIGHTS, load_category_model

    folder = config_path.parent
    if not Path(folder_or_hub_id).expanduser().is_dir():
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            for name in (HEAD_CONFIG, HEAD_WEIGHTS):
                hf_hub_download(repo_id=str(folder_or_hub_id), filename=name)
        except EntryNotFoundError:
            return None
        except Exception as err:  # network, auth
            raise SirenError(f"could not download the category head of {folder_or_hub_id!r}: {err}") from err
    return load_category_model(folder, input_dim)


def _backbone_model_id(config: dict) -> str:
    """The artifact's base_model.model_id; if it is a local folder missing here (e.g. a converted
    backbone cached on another machine) and our `siren.backbone` names a registry entry, that name."""
    model_id = config["base_model"]["model_id"]
    name = (config.get("siren") or {}).get("backbone")
    if model_id.startswith(("/", "~", ".")) and not Path(model_id).expanduser().is_dir() and name:
        try:
            if name in registry():
                return name
        except OSError:
            pass
    return model_id


def check_backbone(config: dict, backbone: Backbone, where: str | None = None) -> None:
    """The artifact must fit the backbone: layers < L, neurons < d, and our recorded L/d if present."""
    L, d = backbone.num_layers, backbone.hidden_size
    extra = config.get("siren") or {}
    where = f"{where or 'guard'} (base model {config['base_model']['model_id']})"
    if "num_layers" in extra and int(extra["num_layers"]) != L:
        raise SirenError(f"{where}: the guard was trained on a backbone with {extra['num_layers']} layers, "
                         f"the loaded backbone has {L}: wrong backbone")
    if "hidden_size" in extra and int(extra["hidden_size"]) != d:
        raise SirenError(f"{where}: the guard was trained on a backbone with hidden size {extra['hidden_size']}, "
                         f"the loaded backbone has {d}: wrong backbone")
    check_fits(config, L, d, where, what="from the backbone's config")


class SirenGuard:
    """A frozen backbone + selected neurons + MLP head. Build with `from_pretrained`."""

    def __init__(self, config: dict, head: torch.nn.Module, backbone: Backbone, *, where: str | None = None,
                 answer_head: torch.nn.Module | None = None, categories=None):
        """answer_head: the answer head's MLP when the folder has a separate one (`from_pretrained`
        loads it); a shared answer head (`shared: true` in the config) reuses `head`. categories:
        the harm-category head (`siren.categories.CategoryModel`) or None."""
        source = where or "guard"
        check_backbone(config, backbone, source)
        # The harm-category head (siren.categories.CategoryModel) or None: ScoreResult.categories
        # and category_scores are filled from it, over the categories it was trained on.
        self.categories = categories
        self.config = config
        self.backbone = backbone
        self.pooling_type: str = config["siren_module"]["pooling_type"]
        self.layers, neurons, weights = selection_from_config(config)
        self.max_length = int(config["inference"]["max_length"])
        self.default_threshold = float(config["inference"]["default_threshold"])
        self.input_dim = int(config["mlp"]["input_dim"])
        self.device = next(backbone.model.parameters()).device
        self.extractor = GuardFeatures(backbone.model, backbone.tokenizer, pooling_type=self.pooling_type,
                                       layers=self.layers, neurons=neurons, weights=weights,
                                       max_length=self.max_length)
        self.head = self._ready(head)
        self.answer_spec = parse_answer_head(config, source)
        if self.answer_spec is not None and not self.answer_spec.shared and answer_head is None:
            raise SirenError(f"{source}: the config names a separate answer head: pass answer_head= "
                             "(SirenGuard.from_pretrained loads it)")
        self.answer_head = None if self.answer_spec is None else (
            self.head if self.answer_spec.shared else self._ready(answer_head))

    @staticmethod
    def _ready(head: torch.nn.Module) -> torch.nn.Module:
        head = head.to("cpu", torch.float32).eval()
        head.requires_grad_(False)
        split_block_diagonal(head)   # a fold ensemble's hidden layers: K - 1 of K weights are zeros
        return head

    @property
    def has_answer_head(self) -> bool:
        """Whether the guard gives an answer verdict (`ScoreResult.response`)."""
        return self.answer_head is not None

    @property
    def answer_threshold(self) -> float | None:
        """The answer verdict's decision threshold (`ScoreResult.response.is_harmful`)."""
        return None if self.answer_spec is None else self.answer_spec.verdict_threshold

    @property
    def stream_threshold(self) -> float | None:
        """The threshold of the saved stream rule: a stream stops when the answer verdict crosses it."""
        return None if self.answer_spec is None else self.answer_spec.rule.threshold

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, folder_or_hub_id: str, *, device=None, dtype=None, trust_remote_code: bool | None = None,
                        backbone: Backbone | None = None, prepack: bool | None = None,
                        compile: bool | None = None) -> "SirenGuard":
        """Load a guard folder (ours or `llm-siren`'s format) or a Hub repo holding one.

        device: "cpu", "cuda", ... (default: cuda if available). dtype: backbone dtype (default:
        the dtype recorded at training, else auto: bfloat16 where the device runs it natively, else
        float32). backbone: an already loaded Backbone to reuse. prepack: keep the backbone's
        Linear weights in oneDNN's blocked layout, those reading one input side by side, and run
        the head's input layer as a packed bfloat16 product (`siren.runtime.prepack`: faster, scores
        equal to bfloat16 rounding); default: on for a backbone this call loads in bfloat16
        on a CPU with native bfloat16, off for a backbone passed in (True packs that one in place).
        compile: score single texts through a `torch.compile`d forward (`LayerFeatures.compile`):
        faster one text at a time, scores equal to float rounding; it compiles here, before
        returning (one to two minutes on a 2-core CPU), so it suits a long-running process (`siren
        serve --compile`). It replaces prepacking (the two cannot be combined).
        trust_remote_code, compile None: configs/defaults.yaml's (`siren serve`'s).
        """
        defaults = config_defaults("serve")
        trust_remote_code = defaults["trust_remote_code"] if trust_remote_code is None else trust_remote_code
        compile = defaults["compile"] if compile is None else compile
        if compile and prepack:
            raise SirenError("compile=True and prepack=True cannot be combined: the compiler packs the "
                             "weights its own way; drop prepack (or compile)")
        fetch = _artifact_fetch(folder_or_hub_id)
        config_path = fetch(CONFIG_NAME)
        config = load_config_file(config_path)
        head = build_head(config, load_head_state(fetch(WEIGHTS_NAME), config))
        spec = parse_answer_head(config, str(config_path))
        answer_head = None if spec is None else load_answer_head(spec, fetch)
        if backbone is None:
            # Default dtype: the one the guard was trained with (so the served model is the evaluated
            # one), else auto (bf16 only where native).
            dtype = _dtype_name(dtype) or (config.get("siren") or {}).get("dtype")
            kwargs = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            kwargs["revision"] = config["base_model"].get("revision")
            backbone = load_backbone(_backbone_model_id(config), **kwargs)
            if prepack is None:
                prepack = not compile and prepack_support(backbone.model) is None and native_bf16_cpu()
        if compile and packed_count(backbone.model):
            raise SirenError("compile=True needs a backbone with plain Linear weights, but this one was "
                             "prepacked (siren.runtime.prepack): pass a backbone loaded without prepack=True")
        if prepack:
            prepack_linears(backbone.model)
        guard = cls(config, head, backbone, where=str(config_path), answer_head=answer_head,
                    categories=_load_categories(folder_or_hub_id, config_path, int(config["mlp"]["input_dim"])))
        if prepack:
            prepack_head(guard.head)
            if guard.answer_head is not None and guard.answer_head is not guard.head:
                prepack_head(guard.answer_head)
        if compile:
            guard.compile()
        return guard

    def compile(self) -> None:
        """Compile the single-text forward now (see `from_pretrained(compile=True)`), so that the
        first request does not pay for it. Raises SirenError when torch.compile fails here."""
        started = time.perf_counter()
        self.extractor.layer_features.compile()
        try:
            for text in ("warm up", "warm up the compiled forward"):  # two lengths: the dynamic graph
                self.score(text)
        except Exception as err:  # inductor's failures have many types: say what to do about any of them
            self.extractor.layer_features.compile(False)
            # inductor's messages span lines and end in debugging advice: keep what says what failed
            detail = " ".join(line.strip() for line in str(err).splitlines()
                              if line.strip() and not line.startswith(("Set TORCHDYNAMO", ")")))
            raise SirenError(f"torch.compile of the backbone failed ({type(err).__name__}: {detail}); on a CPU it "
                             "needs a C++ compiler (e.g. apt-get install g++): install one, or load "
                             "the guard without compile") from err
        log.info("compiled the single-text forward in %.0f s", time.perf_counter() - started)

    # ------------------------------------------------------------ features and scores

    @torch.inference_mode()
    def _features_of_ids(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.extractor(batch)

    def batching(self, batch_size: int | None, batch_tokens: int | None, n: int) -> tuple[int, int]:
        """(texts, padded tokens) per forward for `n` texts: the values given, else `siren score`'s
        defaults (configs/defaults.yaml; a null batch_tokens follows the device)."""
        defaults = config_defaults("score")
        batch_size = batch_size or defaults["batch_size"] or n or 1
        batch_tokens = batch_tokens or defaults["batch_tokens"] or default_batch_tokens(self.device)
        return max(1, int(batch_size)), int(batch_tokens)

    def features(self, texts: Sequence[str], *, batch_size: int | None = None,
                 batch_tokens: int | None = None) -> np.ndarray:
        """(n, input_dim) float32: the weighted selected-neuron features the head reads.
        batch_size, batch_tokens None: `siren score`'s defaults (configs/defaults.yaml)."""
        texts = list(texts)
        batch_size, batch_tokens = self.batching(batch_size, batch_tokens, len(texts))
        return self.extractor.features(texts, batch_size=batch_size, batch_tokens=batch_tokens)

    @staticmethod
    @torch.inference_mode()
    def _proba(head: torch.nn.Module, z, input_dim: int) -> np.ndarray:
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != input_dim:
            raise SirenError(f"features must have shape (n, {input_dim}), got {tuple(z.shape)}")
        if len(z) == 0:
            return np.zeros(0, dtype=np.float64)
        return torch.softmax(head(z), dim=-1)[:, 1].double().numpy()

    def proba_from_features(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """Head probabilities of the harmful class for precomputed features (n, input_dim)."""
        return self._proba(self.head, z, self.input_dim)

    def answer_proba_from_features(self, z: np.ndarray | torch.Tensor, main: np.ndarray | None = None) -> np.ndarray:
        """The answer head's probabilities for answer features (n, input_dim) (`answer_features`).
        main: the main head's probabilities of the same rows when the caller has them already."""
        if self.answer_head is None:
            raise SirenError("this guard has no answer head (siren.answer_head in its config): it gives "
                             "no answer verdict")
        p = self._proba(self.answer_head, z, self.input_dim)
        w = self.answer_spec.main_weight
        if w > 0.0:   # a blend with the main head on the same answer pool (reports/streaming_verdicts chose 0.5 on CV)
            p = (1.0 - w) * p + w * (self.proba_from_features(z) if main is None else np.asarray(main, np.float64))
        return p

    def results_from_features(self, z, threshold: float, probs: np.ndarray | None = None) -> list[ScoreResult]:
        """ScoreResults of features z (n, input_dim): the harmful verdict at `threshold`, and the
        categories when the guard has a category head (streams and generation use this too).
        probs: the main head's probabilities of z when the caller has them already."""
        z = np.asarray(z, dtype=np.float32)
        probs = self.proba_from_features(z) if probs is None else np.asarray(probs, np.float64)
        cats = self.categories.verdicts(z) if self.categories is not None else [(None, None)] * len(probs)
        return [ScoreResult(float(p), bool(p >= threshold), threshold, categories=c, category_scores=cs)
                for p, (c, cs) in zip(probs, cats)]

    def predict_proba(self, texts: Sequence[str], *, batch_size: int | None = None,
                      batch_tokens: int | None = None) -> np.ndarray:
        """(n,) harmful-class probabilities."""
        return self.proba_from_features(self.features(texts, batch_size=batch_size, batch_tokens=batch_tokens))

    def threshold_of(self, threshold: float | None) -> float:
        """The whole-text (and prompt) threshold: `threshold` checked, or the guard's default."""
        return self.default_threshold if threshold is None else check_decision_threshold(threshold, "threshold")

    @staticmethod
    def _check_text(t, where: str) -> None:
        if t is not None and not isinstance(t, str):
            raise SirenError(f"{where} is a {type(t).__name__}, not a string")
        if t and not t.isascii():  # a lone surrogate cannot be tokenised: say which text holds it
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as err:
                raise SirenError(f"{where} holds a lone surrogate ({t[err.start]!r} at character {err.start}): "
                                 "give valid Unicode text") from None

    def score_batch(self, texts: Sequence[str], *, batch_size: int | None = None, batch_tokens: int | None = None,
                    threshold: float | None = None) -> list[ScoreResult]:
        """Score texts (length-bucketed batches); results in input order."""
        texts = list(texts)
        for i, t in enumerate(texts):
            self._check_text(t, f"text {i}")
        thr = self.threshold_of(threshold)
        return self.results_from_features(self.features(texts, batch_size=batch_size, batch_tokens=batch_tokens), thr)

    def _pair_tokens(self, pairs: list[tuple[str | None, str | None]]) -> tuple[list[list[int]], list[int], list[int]]:
        """(ids of each joined text, first answer token per row, prompt tokens per row): the prompt's
        own tokens when they open the joined text (its verdict is read from the same forward), 0
        without a prompt, -1 when they do not (it is scored apart)."""
        if self.has_answer_head:
            ids, starts = answer_spans(self.backbone.tokenizer, pairs, self.max_length)
        else:  # no answer pool to find: plain tokenisation (any tokenizer)
            ids = self.extractor.tokenize([join_prompt_response(p, r) for p, r in pairs])
            starts = [len(x) for x in ids]
        given = [i for i, (p, _r) in enumerate(pairs) if p is not None]
        prompt_len = [0] * len(pairs)
        for i, pids in zip(given, self.extractor.tokenize([pairs[i][0] for i in given]) if given else []):
            prompt_len[i] = len(pids) if ids[i][:len(pids)] == pids else -1
        return ids, starts, prompt_len

    def score_pairs(self, pairs: Sequence[tuple[str | None, str | None]], *, threshold: float | None = None,
                    batch_size: int | None = None, batch_tokens: int | None = None) -> list[ScoreResult]:
        """Score (prompt, response) pairs, batched, in input order: the whole text's verdict, `.prompt`
        when a prompt is given, `.response` when a response is given and the guard has an answer
        head (None if it is empty or truncated away). One forward per batch serves all three pools."""
        pairs = [tuple(pair) for pair in pairs]
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or pair == (None, None):
                raise SirenError(f"pair {i} must be (prompt, response) with at least one of them a string")
            self._check_text(pair[0], f"pair {i}'s prompt")
            self._check_text(pair[1], f"pair {i}'s response")
        thr = self.threshold_of(threshold)
        if not pairs:
            return []
        ids, starts, prompt_len = self._pair_tokens(pairs)
        batch_size, batch_tokens = self.batching(batch_size, batch_tokens, len(pairs))
        z = np.zeros((len(pairs), 3, self.input_dim), dtype=np.float32)  # whole text, prompt, answer
        for idx in length_batches([len(x) for x in ids], batch_tokens, max_batch_size=max(1, int(batch_size)),
                                  fill=False):
            spans = [[(0, max(prompt_len[i], 0)), (starts[i], len(ids[i]))] for i in idx]
            z[idx] = self.extractor.span_features([ids[i] for i in idx], spans, whole=True).numpy()
        results = self.results_from_features(z[:, 0], thr)  # the whole text's verdict and categories
        prompt = np.full(len(pairs), np.nan)
        shared = [i for i, k in enumerate(prompt_len) if k > 0]
        prompt[shared] = self.proba_from_features(z[shared, 1])
        apart = [i for i, k in enumerate(prompt_len) if k < 0]
        prompt[apart] = self.predict_proba([pairs[i][0] for i in apart], batch_size=batch_size,
                                           batch_tokens=batch_tokens)
        answer = np.full(len(pairs), np.nan)
        if self.has_answer_head:
            read = [i for i, s in enumerate(starts) if s < len(ids[i])]
            answer[read] = self.answer_proba_from_features(z[read, 2])
        a_thr = self.answer_threshold
        return [replace(r, prompt=None if pairs[i][0] is None else Verdict.of(prompt[i], thr),
                        response=None if np.isnan(answer[i]) else Verdict.of(answer[i], a_thr))
                for i, r in enumerate(results)]

    @torch.inference_mode()
    def answer_features(self, pairs: Sequence[tuple[str | None, str | None]], *, cuts: Sequence[int] = (),
                        batch_tokens: int | None = None):
        """The answer head's input: (n, input_dim) float32 over each answer's tokens, and with `cuts`
        also (n, len(cuts), input_dim) over its first t tokens per cut (NaN rows where an answer is
        empty or shorter than a cut). One forward per batch, the runtime's own pooling."""
        pairs = [tuple(pair) for pair in pairs]
        _, batch_tokens = self.batching(None, batch_tokens, len(pairs))
        ids, starts = answer_spans(self.backbone.tokenizer, pairs, self.max_length) if pairs else ([], [])
        answer = np.full((len(pairs), self.input_dim), np.nan, dtype=np.float32)
        prefix = np.full((len(pairs), len(cuts), self.input_dim), np.nan, dtype=np.float32)
        for idx in length_batches([len(x) for x in ids], batch_tokens):
            a, p = self.extractor.layer_features.answer_means([ids[i] for i in idx], [starts[i] for i in idx], cuts)
            answer[idx] = self.extractor.select(a[self.pooling_type]).numpy()
            prefix[idx] = self.extractor.select(p[self.pooling_type]).numpy()
        return (answer, prefix) if len(cuts) else answer

    def score(self, text: str | None = None, *, prompt: str | None = None, response: str | None = None,
              threshold: float | None = None) -> ScoreResult:
        """Score one text, or a prompt/response pair (joined with "\\n"; with `.prompt` and, given an
        answer head, `.response` verdicts). "" scores as " "."""
        if text is not None and (prompt is not None or response is not None):
            raise SirenError("give either text or prompt/response, not both")
        if text is None:
            if prompt is None and response is None:
                raise SirenError("give a text, or a prompt and/or a response")
            return self.score_pairs([(prompt, response)], threshold=threshold)[0]
        return self.score_batch([text], threshold=threshold)[0]

    __call__ = score

    def score_streaming(self, prefix: str, prompt: str | None = None, *, threshold: float | None = None) -> ScoreResult:
        """Score prompt + "\\n" + the response generated so far, from scratch (llm-siren's stateless
        form: a full forward of the whole text each call). `stream()` gives the same scores at a
        constant cost per token."""
        for name, value in (("prefix", prefix), ("prompt", prompt)):
            if value is not None and not isinstance(value, str):
                raise SirenError(f"score_streaming: {name} must be a string, got a {type(value).__name__}")
        return self.score(join_prompt_response(prompt, prefix or ""), threshold=threshold)

    def stream_rule(self, *, rule: StreamRule | None = None, debounce: int | None = None,
                    threshold: float | None = None) -> StreamRule:
        """The rule that stops a stream: `rule`, else the guard's (on the answer verdict: the answer
        head's threshold and `answer_head.stream` settings; without an answer head, on the whole
        text's score at `threshold`, flagging at once). `debounce` (the older keyword) overrides its
        debounce."""
        if rule is not None and debounce is not None:
            raise SirenError("give rule= or debounce=, not both (a StreamRule holds its debounce)")
        if rule is not None and not isinstance(rule, StreamRule):
            raise SirenError(f"rule must be a siren.runtime.stream_rules.StreamRule, got a {type(rule).__name__}")
        if rule is None:
            rule = self.answer_spec.rule if self.has_answer_head else StreamRule(self.threshold_of(threshold))
        if debounce is not None:
            rule = StreamRule(rule.threshold, debounce, rule.min_answer_tokens, rule.ema)
        return rule

    def stream(self, prompt: str | None = None, *, rule: StreamRule | None = None, debounce: int | None = None,
               threshold: float | None = None) -> StreamSession:
        """A `StreamSession` for one response: `session.feed(chunk)` -> ScoreResult of prompt + "\\n" +
        the response so far (with `.prompt` and `.response` as `score()` gives them), with the backbone
        run only on new tokens (KV cache + running sums; see `siren.runtime.stream`). The stop decision
        (`session.flagged`, `session.flagged_at`, `session.flagged_by`) follows `stream_rule(...)`: on
        the answer verdict with an answer head, else on the whole text's score."""
        if prompt is not None and not isinstance(prompt, str):
            raise SirenError("stream() takes the prompt (a string) and returns a session: feed it the response "
                             "chunks with session.feed(chunk)")
        return StreamSession(self, prompt, rule=self.stream_rule(rule=rule, debounce=debounce, threshold=threshold),
                             threshold=threshold)

    def attach(self, model, *, tokenizer=None, prompt: str | None = None, rule: StreamRule | None = None,
               debounce: int | None = None, threshold: float | None = None, stop: bool = True) -> GuardedGeneration:
        """Guard `model.generate(...)`: returns a `GuardedGeneration`, a StoppingCriteria to pass as
        `stopping_criteria=[guarded]`. When `model` is (or holds the same weights as) this guard's
        backbone, forward hooks read the generating forward itself (no extra backbone forward);
        otherwise it decodes the new tokens with `tokenizer` and feeds a StreamSession per row.
        It stops a row under `stream_rule(...)`. See `siren.runtime.generation`."""
        return GuardedGeneration(self, model, tokenizer=tokenizer, prompt=prompt,
                                 rule=self.stream_rule(rule=rule, debounce=debounce, threshold=threshold),
                                 threshold=threshold, stop=stop)
