"""`siren data list|splits|export`: show the registry, write seeded split ids, export Hub data.

Reads what siren.data reads (Hub or SIREN-ready JSONL); `splits` writes one JSON file
{dataset: {split: [ids]}}, `export` writes `<out>/<dataset>/<split>.jsonl`.
"""

from __future__ import annotations

import argparse
import pathlib

from siren import data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="the registered datasets and whether a local copy exists")
    p.add_argument("--data_dir", help=f"folder of <dataset>/<split>.jsonl (default: ${data.ENV_DATA_DIR})")

    p = sub.add_parser("splits", help="write seeded, stratified split ids and print their sizes")
    p.add_argument("--datasets", nargs="+", required=True, metavar="D", choices=data.known_datasets())
    p.add_argument("--data_dir", help=f"folder of <dataset>/<split>.jsonl (default: ${data.ENV_DATA_DIR}, else the Hub)")
    p.add_argument("--seed", type=int, help="default: configs/defaults.yaml (as for training)")
    p.add_argument("--val_ratio", type=float, help="validation share carved from train (default: configs/defaults.yaml)")
    p.add_argument("--max_per_split", nargs="+", type=int, help="cap rows per split and dataset (seeded, stratified): one number, or three for train validation test")
    p.add_argument("--out", required=True, help="JSON file to write")

    p = sub.add_parser("export", help="load datasets from the Hub and write SIREN-ready JSONL")
    p.add_argument("--datasets", nargs="+", required=True, metavar="D", choices=data.known_datasets())
    p.add_argument("--out", required=True, help="folder; gets <dataset>/<split>.jsonl")


def _table(header: list[str], rows: list[list[object]]) -> str:
    """Left-aligned plain-text table."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _list(args: argparse.Namespace) -> int:
    folder = data.resolve_data_dir(args.data_dir)
    rows = []
    for name in data.known_datasets():
        s = data.spec(name)
        configs = sorted({c for c, _ in s.hub_splits.values() if c})
        hub = s.hub_id + (f" ({', '.join(configs)})" if configs else "")
        if folder is None:
            local = "-"
        else:
            found = [sp for sp in data.SPLITS if (folder / name / f"{sp}.jsonl").is_file()]
            local = ",".join(found) or "no"
        rows.append([name, hub, "yes" if s.eval_only else "no", local])
    print(_table(["dataset", "hub id", "eval-only", f"local ({folder or 'no data dir'})"], rows))
    return 0


def _splits(args: argparse.Namespace) -> int:
    from siren import config

    # the training defaults, so the ids match a training run's
    cfg = config.load("train", {"seed": args.seed, "val_ratio": args.val_ratio}).as_dict()
    split_ids, rows = {}, []
    for name in args.datasets:
        frames = data.load_splits(
            name, data_dir=args.data_dir, seed=cfg["seed"], val_ratio=cfg["val_ratio"],
            max_per_split=args.max_per_split,
        )
        split_ids[name] = {split: f["id"].tolist() for split, f in frames.items()}
        for split, f in frames.items():
            harmful = int(f["label"].sum())
            rows.append([name, split, len(f), harmful, len(f) - harmful, f.attrs["derived"]])
    data.write_split_ids(args.out, split_ids)
    print(_table(["dataset", "split", "rows", "harmful", "safe", "derived"], rows))
    print(f"wrote {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    for name in args.datasets:
        for split, frame in data.load_hub(name).items():
            path = out / name / f"{split}.jsonl"
            data.write_jsonl(path, frame)
            print(f"{name} {split}: {len(frame)} rows ({int(frame['label'].sum())} harmful) -> {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "splits": _splits, "export": _export}[args.action](args)
