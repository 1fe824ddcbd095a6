"""`siren backbone list|info|prepare`: the registry, a backbone's facts, fetching it ahead of time.

`prepare` makes a later offline run possible: a Hub backbone is snapshot-downloaded into the
Hugging Face cache (where `from_pretrained` finds it), a GGUF registry entry is converted to
its cached Hugging Face folder, a local folder is checked. Nothing else is written.
"""

from __future__ import annotations

import argparse
import json
import time

from siren import backbones


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the registry")
    p = sub.add_parser("info", help="load the backbone and print layers, hidden size and where it loads from")
    p.add_argument("model", help="registry name, local folder or Hub id")
    p.add_argument("--trust_remote_code", action="store_true")
    p = sub.add_parser("prepare", help="download (Hub) or convert (GGUF) a backbone into the cache now")
    p.add_argument("model", help="registry name, local folder or Hub id")
    p.add_argument("--revision", help="Hub revision (default: the registry's, else the default branch)")


def _list(args: argparse.Namespace) -> int:
    for name, entry in backbones.registry().items():
        where = entry.get("hub_id") or f"{entry['gguf_package']}:{entry['gguf_file']} (offline GGUF)"
        print(f"{name:18s} {where}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """Print the folder the backbone now loads from."""
    source = backbones.resolve(args.model)  # converts a GGUF entry; checks a local folder
    if source.kind != "hub":
        print(source.model_id)
        return 0
    print(backbones.download(source.model_id, revision=args.revision or source.revision))
    return 0


def _info(args: argparse.Namespace) -> int:
    import transformers  # noqa: F401  (imported before the clock starts: load_seconds is the load alone)

    start = time.time()
    backbone = backbones.load_backbone(args.model, device="cpu", dtype="float32",
                                       trust_remote_code=args.trust_remote_code)
    seconds = time.time() - start
    cfg = backbone.model.config
    print(json.dumps({
        "name": args.model,
        "architecture": type(backbone.model).__name__,
        "model_type": cfg.model_type,
        "num_layers": backbone.num_layers,
        "hidden_size": backbone.hidden_size,
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
        "loaded_from": backbone.source.model_id,
        "kind": backbone.source.kind,
        "revision": backbone.source.revision,
        "load_seconds": round(seconds, 2),
    }, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "info": _info, "prepare": _prepare}[args.action](args)
