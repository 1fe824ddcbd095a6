"""Optuna search for the head's shape, learning rate and dropout (training only).

Reads aggregated features X (n, k), labels y (n,) and dataset index groups (n,) (train +
validation rows together); writes only to the Optuna ``storage`` if one is given (SQLite
file, journal file, or an RDB URL), so several workers on several machines can share one
study. The runtime never imports this module.

Search space (the paper's): 2-3 hidden layers; lr in [1e-4, 5e-3] log-uniform; first width
in [256, min(2 k, width_cap)] step 64 (if 2 k < 256, in [64, max(64, 2 k)] step 64, since a
first layer much wider than twice the input adds nothing but cost); each later width in
[64, previous width] step 64; dropout in [0.2, 0.5] per hidden layer. ``width_cap`` is the
paper's 2048 unless lowered: the first layer (k x width) is most of an epoch's cost.

Objective: k-fold CV (``StratifiedKFold`` on ``dataset * 2 + label``, shuffled with
``random_state=seed``), score = mean over folds of the mean-over-datasets macro-F1, each
fold trained by ``head.fit_head`` with early stopping on its held-out fold.

Pruning (``pruner``): during fold f, epoch e, the trial reports at step
``f * max_epochs + e`` the best held-out score reached so far in that fold (best-so-far is
what early stopping keeps, and it is less noisy than the raw per-epoch value), so a value is
only ever compared with other trials' values of the same fold (the folds are identical
across trials) and the same epoch. ``"median"``: ``MedianPruner`` on every fold's steps.
``"halving"``: successive halving on fold 0's epochs only (rungs at ``pruner_warmup_epochs
* 3**r``; a trial goes on while it is in the top third of the trials that reached the
rung), so a weak configuration stops after a few epochs of one fold, and a trial that
survives fold 0 runs the other folds out. ``"none"``.

The best trial's fold heads are returned (``TuneResult.fold_heads``) when this process ran
that trial: ``head.ensemble_heads`` turns them into one head without a refit. With
``spill_dir``, every fold head goes to a safetensors file there as soon as it is trained
(and is deleted unless its trial is the best so far), so that neither the best trial's
heads nor the current trial's earlier folds sit in memory while later trials train;
they are read back once, at the end.

Sharing a study: with ``storage``, the study is loaded if it exists, and the number of
trials is capped at ``n_trials`` across all workers: a worker does not ask for a trial once
the study holds ``n_trials`` trials (any state, running included: ``MaxTrialsCallback``
with ``states=None``), and a trial whose number is >= n_trials (two workers asked at the
same instant) is recorded as FAIL with user attr ``surplus`` and not run. Trials left
RUNNING by a killed worker still count toward the cap. With storage, each worker's TPE
seed mixes in its process id (identical seeds would repeat the same startup trials);
without storage the run is reproducible from ``seed``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from siren.config import command_defaults
from siren.mlp import predict_proba_head
from siren.pipeline.head import _row_chunks, fit_head
from siren.memory import trim
from siren.metrics import mean_group_macro_f1

__all__ = ["TuneResult", "tune_head", "suggest_head_params", "make_storage", "cv_folds"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TuneResult:
    """best_params: {"layer_dims": [int], "dropout_rates": [float], "lr": float};
    best_value: mean CV score of the best trial; best_epochs: mean over folds of that
    trial's early-stopped epoch count (a sensible epoch budget for the final refit)."""

    best_params: dict[str, Any]
    best_value: float
    n_trials_complete: int
    n_pruned: int
    trials: list[dict[str, Any]]
    best_epochs: float | None = None
    # The best trial's fold heads (MLPHead, eval mode, raw features in), when this process ran
    # that trial; None when another worker of a shared study did. Not part of to_dict().
    fold_heads: list | None = dataclasses.field(default=None, repr=False, compare=False)
    # (n,) float32: each row's score by the fold head that did not train on it (same trial
    # and condition as fold_heads), for choosing a decision threshold on CV. Not in to_dict().
    oof_proba: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("fold_heads", "oof_proba")}


class _HeadFiles:
    """Fold heads on disk: `put` writes one (safetensors) and returns its ticket, `get` reads it
    back, `drop` deletes it. Without a folder, heads stay in memory (the ticket is the head)."""

    def __init__(self, folder):
        self.folder = None
        if folder is not None:       # a folder of its own: several searches may share `folder`
            os.makedirs(folder, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="fold-heads-", dir=folder)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def put(self, model, name: str):
        if self.folder is None:
            return model
        from safetensors.torch import save_file

        path = os.path.join(self.folder, f"{name}.safetensors")
        save_file(model.state_dict(), path)
        return path, model.input_dim, model.layer_dims, model.dropout_rates

    def get(self, ticket):
        if self.folder is None:
            return ticket
        from siren.artifact import read_safetensors
        from siren.mlp import MLPHead

        path, input_dim, layer_dims, dropout_rates = ticket
        # the file's tensors become the head's parameters: no random init, no mapped copy beside them
        model = MLPHead.from_state(input_dim, layer_dims, dropout_rates, read_safetensors(path))
        model.requires_grad_(False)
        return model.eval()

    def drop(self, tickets) -> None:
        if self.folder is None:
            return
        for path, *_ in tickets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _float32_rows(X: np.ndarray, rows: np.ndarray, piece_rows: int = 1024) -> np.ndarray:
    """X[rows] as float32 (len(rows), k), gathered piece by piece: the same values as
    ``np.asarray(X[rows], np.float32)`` without a whole float16 copy beside it."""
    out = np.empty((len(rows), X.shape[1]), np.float32)
    for s, part in _row_chunks(X, rows, piece_rows):
        out[s:s + len(part)] = part
    return out


class _SurplusTrial(Exception):
    """This trial's number is past the cap (another worker asked at the same time)."""


def width_bounds(input_dim: int, width_cap: int | None = None) -> tuple[int, int]:
    """(low, high) of the first hidden width, both multiples of 64 apart (width_cap None: head_width_cap's default)."""
    width_cap = command_defaults("train")["head_width_cap"] if width_cap is None else width_cap
    cap = min(2 * int(input_dim), int(width_cap))
    low = 256 if cap >= 256 else 64
    high = low + max(0, (cap - low) // 64) * 64
    return low, high


def suggest_head_params(trial: optuna.Trial, input_dim: int, width_cap: int | None = None
                        ) -> dict[str, Any]:
    """Sample one head configuration from the paper's space (see module docstring)."""
    n_layers = trial.suggest_int("n_layers", 2, 3)
    lr = trial.suggest_float("lr", 1e-4, 5e-3, log=True)
    low, high = width_bounds(input_dim, width_cap)
    dims = [trial.suggest_int("width_0", low, high, step=64)]
    for i in range(1, n_layers):
        dims.append(trial.suggest_int(f"width_{i}", 64, dims[-1], step=64))
    drops = [trial.suggest_float(f"dropout_{i}", 0.2, 0.5) for i in range(n_layers)]
    return {"layer_dims": dims, "dropout_rates": drops, "lr": lr}


def params_from_trial(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's flat params -> {"layer_dims", "dropout_rates", "lr"}."""
    n = int(params["n_layers"])
    return {"layer_dims": [int(params[f"width_{i}"]) for i in range(n)],
            "dropout_rates": [float(params[f"dropout_{i}"]) for i in range(n)],
            "lr": float(params["lr"])}


def cv_folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (dataset, label) folds: list of (train_idx, held_out_idx)."""
    strata = np.asarray(groups).astype(np.int64) * 2 + np.asarray(y).astype(np.int64)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in skf.split(np.zeros(len(strata)), strata)]


def make_storage(storage: str | None):
    """Resolve ``storage``: None -> None (in memory); "*.db" or "sqlite:///..." -> SQLite;
    "*.log"/"*.journal" -> JournalStorage on that file (file-locked, so several processes
    may append to it); any other "scheme://..." -> that RDB URL (e.g. PostgreSQL for
    workers on several machines)."""
    if storage is None:
        return None
    s = str(storage)
    if s.endswith((".log", ".journal")) and "://" not in s:
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        os.makedirs(os.path.dirname(os.path.abspath(s)), exist_ok=True)
        return JournalStorage(JournalFileBackend(s))
    if "://" in s:
        return s
    if s.endswith(".db"):
        os.makedirs(os.path.dirname(os.path.abspath(s)), exist_ok=True)
        return f"sqlite:///{os.path.abspath(s)}"
    raise ValueError(f"storage {s!r}: expected a .db/.log/.journal path or a database URL")


def _open_study(storage, study_name, sampler, pruner, attempts: int = 8) -> optuna.Study:
    """create_study(load_if_exists) with retries: workers that start together race to
    create the SQLite schema / the study row, and the loser gets an IntegrityError."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner,
                                       storage=make_storage(storage), study_name=study_name,
                                       load_if_exists=storage is not None)
        except Exception as err:                        # noqa: BLE001 - re-raised below
            if storage is None or attempt == attempts - 1:
                raise
            log.debug("opening study %s failed (%s); retrying", study_name, err)
            time.sleep(0.2 + 0.3 * attempt + (os.getpid() % 7) * 0.05)
    raise AssertionError("unreachable")


def _trial_dict(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value,
            "params": dict(t.params), "user_attrs": dict(t.user_attrs)}


PRUNERS = ("median", "halving", "none")


def make_pruner(kind: str, *, startup_trials: int, warmup_epochs: int) -> optuna.pruners.BasePruner:
    """"median": MedianPruner on every fold's epochs; "halving": successive halving on
    fold 0's epochs (rungs at warmup_epochs * 3**r, a trial goes on only while it is in the
    top third of the trials that reached the rung); "none"."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                           n_warmup_steps=warmup_epochs)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup_epochs),
                                                      reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner {kind!r}: use one of {', '.join(PRUNERS)}")


def tune_head(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_trials: int,
              n_folds: int, seed: int, storage: str | None = None,
              study_name: str | None = None, n_jobs: int | None = None, max_epochs: int | None = None,
              patience: int | None = None, batch_size: int | None = None, pruner: str | None = None,
              pruner_startup_trials: int = 4, pruner_warmup_epochs: int = 5,
              width_cap: int | None = None, fused: bool = True, bf16: bool = False,
              column_scale: np.ndarray | None = None, balance: str = "label",
              stop_on: str = "f1", ema: float | None = None, input_dropout: float = 0.0,
              sampler_startup_trials: int | None = None, progress: bool = True,
              spill_dir=None, weight_decay: float = 1e-4) -> TuneResult:
    """Search the head's hyper-parameters. X (n, k) float16 or float32, y (n,), groups (n,).
    spill_dir: a folder for fold heads on disk while the search runs (see the module docstring).
    sampler_startup_trials: random trials before TPE models the results (None: Optuna's 10, so a
    search of 10 trials or fewer is a random search).
    weight_decay: AdamW's decoupled weight decay of every fold head (fit_head's).

    ``n_trials`` is the study-wide total (shared with other workers when ``storage`` is
    set); this call runs trials until the study holds that many. Returns the study's
    summary (also when this worker ran none because the study was already full).
    n_jobs, max_epochs, patience, batch_size (head_batch_size), pruner, width_cap (head_width_cap)
    None: configs/defaults.yaml's.
    """
    d = command_defaults("train")
    n_jobs, max_epochs, patience, batch_size, pruner, width_cap = (
        d[key] if value is None else value
        for key, value in (("n_jobs", n_jobs), ("max_epochs", max_epochs), ("patience", patience),
                           ("head_batch_size", batch_size), ("pruner", pruner), ("head_width_cap", width_cap)))
    X = np.asarray(X)
    if X.dtype not in (np.float16, np.float32):
        X = X.astype(np.float32)
    y = np.asarray(y).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    folds = cv_folds(y, groups, n_folds, seed)
    study = _make_study(storage, study_name, seed, sampler_startup_trials, pruner,
                        pruner_startup_trials, pruner_warmup_epochs)
    fit_kwargs = dict(max_epochs=max_epochs, batch_size=batch_size, patience=patience, fused=fused, bf16=bf16,
                      column_scale=column_scale, groups=groups, balance=balance, stop_on=stop_on, ema=ema,
                      input_dropout=input_dropout, weight_decay=weight_decay)
    search = _Search(X, y, groups, folds, study=study, n_trials=n_trials, seed=seed, width_cap=width_cap,
                     halving=pruner == "halving", files=_HeadFiles(spill_dir), fit_kwargs=fit_kwargs)
    try:
        _run_study(study, search.objective, n_trials, n_jobs, progress)
        return search.result()
    finally:
        search.files.close()


def _make_study(storage, study_name, seed: int, sampler_startup_trials, pruner: str, pruner_startup_trials: int,
                pruner_warmup_epochs: int) -> optuna.Study:
    """The (new or shared) study with its TPE sampler and pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)      # one bar instead of INFO lines
    # A shared study's trial order depends on timing, so it cannot be reproducible anyway;
    # what matters is that workers do not all draw the same startup configurations.
    sampler_seed = seed if storage is None else (seed * 1_000_003 + os.getpid()) % (2**31)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, **(
        {} if sampler_startup_trials is None else {"n_startup_trials": int(sampler_startup_trials)}))
    return _open_study(storage, study_name or "siren_head", sampler,
                       make_pruner(pruner, startup_trials=pruner_startup_trials,
                                   warmup_epochs=pruner_warmup_epochs))


class _Search:
    """One worker's side of the search: the objective (k-fold CV of one configuration), the best
    trial's fold heads and out-of-fold scores kept so far, and the summary at the end."""

    def __init__(self, X, y, groups, folds, *, study: optuna.Study, n_trials: int, seed: int, width_cap: int,
                 halving: bool, files: _HeadFiles, fit_kwargs: dict):
        self.X, self.y, self.groups, self.folds = X, y, groups, folds
        self.study, self.n_trials, self.seed, self.width_cap = study, n_trials, seed, width_cap
        self.halving, self.files, self.fit_kwargs = halving, files, fit_kwargs
        self.kept: dict[str, Any] = {"value": -np.inf, "number": -1, "heads": None, "oof": None}
        self.kept_lock = threading.Lock()                 # n_jobs > 1 runs trials in threads

    def objective(self, trial: optuna.Trial) -> float:
        if trial.number >= self.n_trials:
            trial.set_user_attr("surplus", True)
            self.study.stop()
            raise _SurplusTrial(f"trial {trial.number} is past the cap of {self.n_trials}")
        params = suggest_head_params(trial, self.X.shape[1], self.width_cap)
        scores, epochs, heads = [], [], []      # heads: tickets of `files`
        oof = np.full(len(self.y), np.nan, dtype=np.float32)
        try:
            self.run_folds(trial, params, scores, epochs, heads, oof)
        except BaseException:
            self.files.drop(heads)       # a pruned (or failed) trial's fold heads are never used
            raise
        trial.set_user_attr("fold_scores", [float(s) for s in scores])
        trial.set_user_attr("best_epochs", [int(e) for e in epochs])
        value = float(np.mean(scores))
        kept = self.kept
        with self.kept_lock:     # same order as the final pick in result(): higher value, then lower number
            if (value, -trial.number) > (kept["value"], -kept["number"]):
                if kept["heads"] is not None:
                    self.files.drop(kept["heads"])
                kept.update(value=value, number=trial.number, heads=heads, oof=oof)
            else:
                self.files.drop(heads)
        return value

    def on_epoch(self, trial: optuna.Trial, f: int):
        """fit_head's ``on_epoch`` for fold f: reports the fold's best score so far, may prune."""
        best = [-np.inf]
        max_epochs = self.fit_kwargs["max_epochs"]

        def on_epoch(epoch: int, score: float) -> None:
            best[0] = max(best[0], score)
            if self.halving and f > 0:
                return          # halving's budget axis is fold 0's epochs; later folds run out
            step = f * max_epochs + epoch
            trial.report(best[0], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {f} epoch {epoch}: {best[0]:.4f}")
        return on_epoch

    def run_folds(self, trial, params, scores, epochs, heads, oof) -> None:
        X, y, groups = self.X, self.y, self.groups
        for f, (tr, va) in enumerate(self.folds):
            # Before each fit, the previous fit's optimizer state and copies go back to the OS,
            # also those of a pruned trial, which its exception's traceback may still hold.
            trim()
            model, hist = fit_head(     # X's fold rows are read batch by batch, never copied whole
                X, y, rows=tr, **params, seed=self.seed + trial.number * 1000 + f,
                X_val=X, y_val=y, groups_val=groups, val_rows=va, on_epoch=self.on_epoch(trial, f),
                **self.fit_kwargs)
            oof[va] = predict_proba_head(model, _float32_rows(X, va))
            pred = (oof[va] >= 0.5).astype(np.int64)
            scores.append(mean_group_macro_f1(y[va], pred, groups[va]))
            epochs.append(hist["best_epoch"])
            heads.append(self.files.put(model, f"trial{trial.number}-fold{f}"))
            del model

    def result(self) -> TuneResult:
        """The study's summary, with the best trial's fold heads read back if this worker ran it."""
        study, kept = self.study, self.kept
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        if not complete:
            raise RuntimeError(f"no trial completed ({len(pruned)} pruned, "
                               f"{len(trials) - len(pruned)} other)")
        best = max(complete, key=lambda t: (t.value, -t.number))
        be = best.user_attrs.get("best_epochs")
        mine = kept["number"] == best.number
        # The last trial's fit (a pruned one's lives on in its exception's frames until collected)
        # goes back to the OS before the best trial's fold heads are read back beside it.
        trim()
        fold_heads = [self.files.get(t) for t in kept["heads"]] if mine else None    # close() deletes the files
        return TuneResult(best_params=params_from_trial(best.params), best_value=float(best.value),
                          n_trials_complete=len(complete), n_pruned=len(pruned),
                          trials=[_trial_dict(t) for t in trials],
                          best_epochs=float(np.mean(be)) if be else None,
                          fold_heads=fold_heads, oof_proba=kept["oof"] if mine else None)


def _run_study(study: optuna.Study, objective, n_trials: int, n_jobs: int, progress: bool) -> None:
    """Run trials until the study holds ``n_trials`` (none if it already does), with a progress bar."""
    to_run = max(0, n_trials - len(study.get_trials(deepcopy=False)))
    if to_run <= 0:
        return
    bar = tqdm(total=n_trials, initial=n_trials - to_run, desc="optuna", unit="trial",
               disable=not progress, leave=False)

    def on_done(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if t.user_attrs.get("surplus"):
            return
        bar.update(1)
        done = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = max((x.value for x in done), default=float("nan"))
        last = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else t.state.name.lower()
        bar.set_postfix(trial=t.number, last=last, best=f"{best:.4f}")

    study.optimize(objective, n_trials=to_run, n_jobs=n_jobs, catch=(_SurplusTrial,),
                   callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=None), on_done])
    bar.close()
