"""The training run's folder and reports (siren.pipeline.train): the staging folder a run is
written into and its publishing into the output folder, the stage timer, the per-layer plot
(layers.png) and the console summary. Imports nothing from siren.pipeline.train."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from siren.errors import SirenError
from siren.fileio import file_lock, fsync_dir, save_figure, staging_dir
from siren.log import log
from siren.memory import trim
from siren.pipeline.answer import ANSWER_WEIGHTS_NAME

# Files a run writes whose names do not depend on its settings, plus those an evaluation adds:
# when a new run lands in a folder, the ones it did not write are removed (they describe another guard).
RUN_FILES = ("splits.json", "siren_config.json", "siren.safetensors", ANSWER_WEIGHTS_NAME, "best_model.pkl",
             "results.json", "layers.png", "eval_results.json", "test_scores.jsonl", "roc.png", "f1.png",
             "categories.safetensors", "categories.json")


def peak_rss_gib() -> float:
    """The largest peak of this process and its finished children (the extraction child)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20


class Stages:
    """Wall time of each stage, logged as it ends and kept for results.json."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        log(f"stage {name} ...")
        start = time.perf_counter()
        yield
        trim()          # what the stage freed goes back to the OS before the next one allocates
        took = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + took
        log(f"stage {name} done in {took:.1f} s (peak RSS {peak_rss_gib():.2f} GiB)")


@contextlib.contextmanager
def staging_folder(out_dir: Path):
    """A temporary folder beside `out_dir` to write a run into; on success its files are moved
    into `out_dir` (`publish`), on failure it is deleted and `out_dir` is untouched."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SirenError(f"output folder {out_dir} exists and is not a folder: pass another --out_dir")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out_dir, on_stale=lambda p: log(f"removed {p}, left by a run that was killed")) as work:
        try:
            yield work
            publish(work, out_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def publish(work: Path, out_dir: Path) -> None:
    """Move a finished run from `work` into `out_dir`: a rename when `out_dir` does not exist,
    else file by file (os.replace), then drop the run files of an earlier run not rewritten."""
    os.chmod(work, 0o755)
    # Workers of one shared Optuna study finish into the same folder: one lands at a time.
    with file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if not out_dir.exists():
            os.replace(work, out_dir)
            fsync_dir(out_dir.parent)
            return
        written = {p.name for p in work.iterdir()}
        for name in sorted(written):
            os.replace(work / name, out_dir / name)
        for old in out_dir.iterdir():
            if old.name not in written and (old.name in RUN_FILES
                                            or (old.name.startswith("probes_") and old.suffix == ".npz")):
                old.unlink()
        fsync_dir(out_dir)


def plot_layers(path: Path, grid, n_per_layer: dict[int, int], title: str) -> None:
    """Probe validation F1 per layer (line, one per C and the chosen) and selected neurons per layer (bars)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    L = len(grid.val_f1)
    layers = np.arange(L)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    by_c = np.asarray(grid.val_f1_by_C)
    for ci, c in enumerate(grid.c_values):
        ax1.plot(layers, by_c[ci], alpha=0.5, lw=1, label=f"C={c:g}")
    ax1.plot(layers, grid.val_f1, color="black", lw=2, marker="o", ms=3, label="chosen C")
    ax1.set_ylabel("probe val macro-F1\n(mean over datasets)")
    ax1.legend(fontsize=8, ncol=4)
    ax1.set_title(title)
    ax2.bar(layers, [n_per_layer.get(l, 0) for l in range(L)], color="tab:red")
    ax2.set_ylabel("selected neurons")
    ax2.set_xlabel("layer")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def print_summary(results: dict) -> None:
    print()
    print(f"{'dataset':20s} {'test macro-F1':>13s}")
    for name, f1 in results["test_f1"].items():
        print(f"{name:20s} {f1:13.4f}")
    print(f"{'average':20s} {results['test_f1_average']:13.4f}")
    chosen = results["chosen"]
    print(f"selected neurons: {results['n_selected_neurons']} of {results['n_total_neurons']}; "
          f"chosen {chosen['pooling_type']} selection threshold {chosen['selection_threshold']}, "
          f"CV F1 {chosen['cv_f1']:.4f}")
    print("stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["timings_s"].items()))
    print(f"outputs: {results['out_dir']}")
