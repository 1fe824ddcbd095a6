"""The runtime guard: text -> harmfulness score, from a guard folder (ours or `llm-siren`'s).

    guard = SirenGuard.from_pretrained("train/probes/optuna/smollm2-135m_general")
    guard.score("how do I make a bomb")            # ScoreResult(score, is_harmful, threshold)
    guard.score(prompt="...", response="...")      # joined with "\\n"
    guard.score_batch(texts)                       # length-bucketed, input order
    session = guard.stream(prompt=p, debounce=2)   # incremental: constant backbone cost per token
    session.feed(chunk)                            # ScoreResult of p + "\\n" + response so far
    guard.attach(causal_lm)                        # StoppingCriteria for generate(): see runtime.generation

Features are exactly `llm-siren`'s: for each selected layer (ascending) the pooled vector
(`siren.features.LayerFeatures`, the same function training used) in fp32, indexed by that
layer's neurons in the order listed in `selected_neurons_dict`, times `layer_weights[str(l)]`
(1.0 when absent), concatenated; score = softmax(head(z))[1]; harmful iff score >= threshold.
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
import time
from dataclasses import asdict, dataclass
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
from siren.features import LayerFeatures, default_batch_tokens, join_prompt_response, length_batches
from siren.runtime.prepack import packed_count, prepack_head, prepack_linears, prepack_support, split_block_diagonal

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    score: float
    is_harmful: bool
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def _dtype_name(dtype) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    raise SirenError(f"dtype must be a name like 'float32' or a torch.dtype, got {dtype!r}")


def _artifact_files(folder_or_hub_id: str) -> tuple[Path, Path]:
    """(config path, weights path): a local folder, else the two files from the Hugging Face Hub."""
    path = Path(folder_or_hub_id).expanduser()
    if path.is_dir():
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    text = str(folder_or_hub_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise SirenError(f"guard {folder_or_hub_id!r} is neither a folder nor a Hub id like 'org/name'")
    try:
        from huggingface_hub import hf_hub_download

        config_path = hf_hub_download(repo_id=text, filename=CONFIG_NAME)
        weights_path = hf_hub_download(repo_id=text, filename=WEIGHTS_NAME)
    except Exception as err:  # network, auth, missing repo or file
        raise SirenError(f"could not download guard {text!r} from the Hugging Face Hub: {err}") from err
    return Path(config_path), Path(weights_path)


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

    def __init__(self, config: dict, head: torch.nn.Module, backbone: Backbone, *, where: str | None = None):
        check_backbone(config, backbone, where)
        self.config = config
        self.backbone = backbone
        self.pooling_type: str = config["siren_module"]["pooling_type"]
        self.layers, neurons, weights = selection_from_config(config)
        self.max_length = int(config["inference"]["max_length"])
        self.default_threshold = float(config["inference"]["default_threshold"])
        self.input_dim = int(config["mlp"]["input_dim"])
        self.device = next(backbone.model.parameters()).device
        self._features = LayerFeatures(backbone.model, backbone.tokenizer, pooling_types=(self.pooling_type,),
                                       layers=self.layers, max_length=self.max_length)
        # Per selected layer (ascending): neuron indices (listed order) and weight.
        self._index = [torch.as_tensor(neurons[l], dtype=torch.long) for l in self.layers]
        self._weight = [weights[l] for l in self.layers]
        self.head = head.to("cpu", torch.float32).eval()
        self.head.requires_grad_(False)
        split_block_diagonal(self.head)   # a fold ensemble's hidden layers: K - 1 of K weights are zeros

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
        config_path, weights_path = _artifact_files(folder_or_hub_id)
        config = load_config_file(config_path)
        state = load_head_state(weights_path, config)
        head = build_head(config, state)
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
        guard = cls(config, head, backbone, where=str(config_path))
        if prepack:
            prepack_head(guard.head)
        if compile:
            guard.compile()
        return guard

    def compile(self) -> None:
        """Compile the single-text forward now (see `from_pretrained(compile=True)`), so that the
        first request does not pay for it. Raises SirenError when torch.compile fails here."""
        started = time.perf_counter()
        self._features.compile()
        try:
            for text in ("warm up", "warm up the compiled forward"):  # two lengths: the dynamic graph
                self.score(text)
        except Exception as err:  # inductor's failures have many types: say what to do about any of them
            self._features.compile(False)
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
        pooled = self._features(batch)[self.pooling_type]  # (b, len(layers), d) fp32 on CPU
        parts = [pooled[:, i].index_select(1, idx) * w for i, (idx, w) in enumerate(zip(self._index, self._weight))]
        return torch.cat(parts, dim=1)

    @torch.inference_mode()
    def features(self, texts: Sequence[str], *, batch_size: int | None = None,
                 batch_tokens: int | None = None) -> np.ndarray:
        """(n, input_dim) float32: the weighted selected-neuron features the head reads.
        batch_size, batch_tokens None: `siren score`'s defaults (configs/defaults.yaml)."""
        texts = list(texts)
        defaults = config_defaults("score")
        batch_size = batch_size or defaults["batch_size"] or len(texts) or 1
        batch_tokens = batch_tokens or defaults["batch_tokens"] or default_batch_tokens(self.device)
        if not texts:
            return np.zeros((0, self.input_dim), dtype=np.float32)
        ids = self._features.tokenize(texts)
        out = np.zeros((len(texts), self.input_dim), dtype=np.float32)
        for idx in length_batches([len(x) for x in ids], batch_tokens, max_batch_size=max(1, int(batch_size)), fill=False):
            out[idx] = self._features_of_ids([ids[i] for i in idx]).numpy()
        return out

    @torch.inference_mode()
    def proba_from_features(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """Head probabilities of the harmful class for precomputed features (n, input_dim)."""
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != self.input_dim:
            raise SirenError(f"features must have shape (n, {self.input_dim}), got {tuple(z.shape)}")
        if len(z) == 0:
            return np.zeros(0, dtype=np.float64)
        return torch.softmax(self.head(z), dim=-1)[:, 1].double().numpy()

    def predict_proba(self, texts: Sequence[str], *, batch_size: int | None = None,
                      batch_tokens: int | None = None) -> np.ndarray:
        """(n,) harmful-class probabilities."""
        return self.proba_from_features(self.features(texts, batch_size=batch_size, batch_tokens=batch_tokens))

    def decision_threshold(self, threshold) -> float:
        """`threshold` checked, or the guard's own (inference.default_threshold) when None."""
        return self.default_threshold if threshold is None else check_decision_threshold(threshold, "threshold")

    def score_batch(self, texts: Sequence[str], *, batch_size: int | None = None, batch_tokens: int | None = None,
                    threshold: float | None = None) -> list[ScoreResult]:
        """Score texts (length-bucketed batches); results in input order."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if t is not None and not isinstance(t, str):
                raise SirenError(f"text {i} is a {type(t).__name__}, not a string")
            if t and not t.isascii():  # a lone surrogate cannot be tokenised: say which text holds it
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise SirenError(f"text {i} holds a lone surrogate ({t[err.start]!r} at character {err.start}): "
                                     "give valid Unicode text") from None
        decision_threshold = self.decision_threshold(threshold)
        probs = self.predict_proba(texts, batch_size=batch_size, batch_tokens=batch_tokens)
        return [ScoreResult(float(p), bool(p >= decision_threshold), decision_threshold) for p in probs]

    def score(self, text: str | None = None, *, prompt: str | None = None, response: str | None = None,
              threshold: float | None = None) -> ScoreResult:
        """Score one text, or a prompt/response pair (joined with "\\n"). "" scores as " "."""
        if text is not None and (prompt is not None or response is not None):
            raise SirenError("give either text or prompt/response, not both")
        if text is None:
            if prompt is None and response is None:
                raise SirenError("give a text, or a prompt and/or a response")
            text = join_prompt_response(prompt, response)
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

    def stream(self, prompt: str | None = None, *, debounce: int | None = None, threshold: float | None = None):
        """A `StreamSession` for one response: `session.feed(chunk)` -> ScoreResult of prompt + "\\n" +
        the response so far, equal to `score()` of that text, with the backbone run only on new tokens
        (KV cache + running per-layer sums; see `siren.runtime.stream`). `debounce`: flag only after
        that many consecutive scores >= threshold (`session.flagged`, `session.flagged_at`; None: the config's)."""
        from siren.runtime.stream import StreamSession

        if prompt is not None and not isinstance(prompt, str):
            raise SirenError("stream() takes the prompt (a string) and returns a session: feed it the response "
                             "chunks with session.feed(chunk)")
        return StreamSession(self, prompt, debounce=debounce, threshold=threshold)

    def attach(self, model, *, tokenizer=None, prompt: str | None = None, debounce: int | None = None,
               threshold: float | None = None, stop: bool = True):
        """Guard `model.generate(...)`: returns a `GuardedGeneration`, a StoppingCriteria to pass as
        `stopping_criteria=[guarded]`. When `model` is (or holds the same weights as) this guard's
        backbone, forward hooks read the generating forward itself (no extra backbone forward);
        otherwise it decodes the new tokens with `tokenizer` and feeds a StreamSession per row.
        See `siren.runtime.generation`."""
        from siren.runtime.generation import GuardedGeneration

        return GuardedGeneration(self, model, tokenizer=tokenizer, prompt=prompt, debounce=debounce,
                                 threshold=threshold, stop=stop)
