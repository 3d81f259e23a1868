"""K-fold training of timm backbones, a run of folds: run folders, preflight, dispatch to an executor.

Layout of a run (``<oof>/<run>/``, see ``docs/formats.md``)::

    run.json  config.yaml  oof.csv  test.csv
    fold<k>/best.pt  last.pt  log.csv  oof.csv  test.csv  result.json

:func:`train_runs` checks every config (:mod:`kfold.preflight`), creates or
checks each run folder (:func:`prepare_run`), trains each (run, fold) with
:func:`kfold.fold.run_fold` here or as a Ray task (:func:`run_on_ray`,
:mod:`kfold.executors`), and writes the run's oof.csv/test.csv when all its
folds are done (:func:`assemble_run`).

Reproducibility: every random number of epoch ``e`` of fold ``f`` (shuffling,
augmentation, dropout) comes from seeds derived from ``(seed, f, e)`` at the
start of that epoch. A fold killed mid-epoch resumes from ``last.pt`` (model,
optimizer, scheduler, grad scaler, EMA, history after the last finished
epoch) and replays the interrupted epoch exactly, so on CPU its OOF equals
an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import tracking
from .cache import image_caches
from .config import RUNTIME_KEYS, TrainConfig, dump_config
from .data import DataBundle
from .device import versions
from .executors import Job, check_address, require_ray, run_jobs_on_ray
from .fold import RunSpec, fold_job, run_fold
from .folds import HOLDOUT_COLS
from .heads import task_accuracy, train_cuts
from .io import KfError, ParamError, atomic_write, read_json, write_csv
from .metrics import macro_f1
from .preflight import preflight
from .pseudo import PSEUDO_FILE, select_pseudo, write_pseudo
from .runrecord import RunRecord, read_run_json, run_json_path, write_run_json
from .stagefiles import PROB_COLS, probs_frame


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}


def _mismatch(cfg: TrainConfig, data: DataBundle, run_dir: Path) -> str | None:
    """Why the started run in ``run_dir`` cannot go on with ``cfg`` (other folds, other settings), or None."""
    old = read_run_json(run_dir)
    if old.get("folds_fingerprint") != data.folds_meta["folds_fingerprint"]:
        return "trained on other folds"
    # keys added to TrainConfig after the old run was made count as their defaults
    a, b = _comparable({**TrainConfig().to_dict(), **old.get("config", {})}), _comparable(cfg.to_dict())
    diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff or old.get("data", {}).get("age_cuts") != list(data.data_settings["age_cuts"]):
        return f"trained with other settings ({'; '.join(diff) or 'data settings'})"
    return None


#: run.json keys that assemble_run writes when every fold is done
ASSEMBLED_KEYS = ("oof_macro_f1", "oof_accuracy", "oof_task_accuracy", "holdout_macro_f1", "seconds")


def forget_folds(run_dir: Path, folds: list[int]) -> None:
    """Delete folds ``folds`` of a run, so that they retrain; its other finished folds stay.

    run.json is rewritten first (``finished: false``, the assembled scores
    and those folds' results removed), then the run's ``oof.csv`` /
    ``test.csv`` / ``holdout.csv`` and the ``fold<k>/`` folders are deleted:
    a kill in between leaves an unfinished run that the next call completes.
    """
    meta = read_run_json(run_dir).to_dict()
    meta = {k: v for k, v in meta.items() if k not in ASSEMBLED_KEYS}
    meta["finished"] = False
    meta["folds"] = {f: r for f, r in (meta.get("folds") or {}).items() if int(f) not in folds}
    write_run_json(meta, run_dir)
    for name in ("oof.csv", "test.csv", "holdout.csv"):
        (run_dir / name).unlink(missing_ok=True)
    for f in folds:
        shutil.rmtree(run_dir / f"fold{f}", ignore_errors=True)


def prepare_run(cfg: TrainConfig, data: DataBundle, oof_dir: Path, force: bool, folds: list[int] | None = None,
                echo: Callable[[str], None] | None = None) -> Path:
    """Create ``<oof>/<run>/`` with run.json and config.yaml, or check that an existing run matches.

    A run folder in which no fold has started (no ``fold<k>/*.pt`` or
    ``result.json``, e.g. after a call stopped by a bad image) holds no work:
    it is rewritten with the new settings instead of refused. With ``force``,
    a run with the same settings and folds loses only the folds in ``folds``
    (:func:`forget_folds`; all when None), and one with other settings or
    folds is deleted whole (``echo`` says which finished folds go with it).

    Raises:
        ParamError: the run folder holds a started run with other settings or
            other folds and ``force`` is False (the message names ``force``).
    """
    run_dir = oof_dir / cfg.name
    meta_path = run_json_path(run_dir)
    started = meta_path.exists() and (any(run_dir.glob("fold*/*.pt")) or any(run_dir.glob("fold*/result.json")))
    try:
        why = _mismatch(cfg, data, run_dir) if started else None
    except KfError as e:  # a damaged run.json: refused as before, or deleted with the folder under force
        if not force:
            raise
        why = f"run.json unreadable ({e})"
    if started and not force:
        if why:
            raise ParamError(f"{meta_path}: {why}; use {{force}} to retrain or another run name", "force")
        return run_dir
    k = data.folds_meta["k"]
    folds = list(range(k)) if folds is None else folds
    if force and started and why is None and set(folds) != set(range(k)):
        forget_folds(run_dir, folds)  # the same run: only the selected folds retrain
    else:
        if force and run_dir.exists():
            kept = [f for f in range(k) if f not in folds and (run_dir / f"fold{f}" / "result.json").exists()]
            if kept and echo is not None:
                echo(f"{cfg.name}: {why}; the whole run folder is deleted, finished folds {kept} included")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_json(RunRecord.trained(cfg.name, cfg.to_dict(), data.data_settings, data.folds_meta["folds_fingerprint"],
                                         k, cfg.tta, train_cuts(cfg, data.data_settings["age_cuts"]), versions()), run_dir)
    # a new config.yaml also after forget_folds: tracking keys a parent run on its mtime, so any --force starts a new one
    with atomic_write(run_dir / "config.yaml") as fh:
        fh.write(dump_config(cfg))
    return run_dir


def assemble_run(cfg: TrainConfig, run_dir: Path, data: DataBundle) -> dict:
    """Update run.json from the finished folds; when all K are done, write the run's oof.csv and test.csv.

    Returns:
        run.json content (``finished`` tells whether oof.csv/test.csv exist).
    """
    meta = read_run_json(run_dir)
    k = data.folds_meta["k"]
    done = {f: read_json(run_dir / f"fold{f}" / "result.json") for f in range(k) if (run_dir / f"fold{f}" / "result.json").exists()}
    meta["folds"] = {str(f): r for f, r in done.items()}
    if len(done) == k:
        parts = [pd.read_csv(run_dir / f"fold{f}" / "oof.csv", dtype={"person": str}) for f in range(k)]
        oof = pd.concat(parts).set_index("image").loc[data.folds["image"]].reset_index()
        oof = oof[["image", "person", "fold", "label"] + PROB_COLS]
        test_probs = np.mean([pd.read_csv(run_dir / f"fold{f}" / "test.csv")[PROB_COLS].to_numpy() for f in range(k)], axis=0)
        test = probs_frame(data.test[["ImageID"]], test_probs)
        write_csv(oof, run_dir / "oof.csv")
        write_csv(test, run_dir / "test.csv")
        if data.has_holdout:  # the mean of the fold models, as for test.csv
            hold_probs = np.mean([pd.read_csv(run_dir / f"fold{f}" / "holdout.csv")[PROB_COLS].to_numpy()
                                  for f in range(k)], axis=0)
            write_csv(probs_frame(data.holdout[HOLDOUT_COLS], hold_probs), run_dir / "holdout.csv")
            meta["holdout_macro_f1"] = macro_f1(data.holdout["label"].to_numpy(), hold_probs.argmax(1))
        meta["oof_macro_f1"] = macro_f1(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy().argmax(1))
        meta["oof_accuracy"] = float((oof["label"].to_numpy() == oof[PROB_COLS].to_numpy().argmax(1)).mean())
        meta["oof_task_accuracy"] = task_accuracy(oof[PROB_COLS].to_numpy(), oof["label"].to_numpy())
        meta["seconds"] = float(sum(r["seconds"] for r in done.values()))
        meta["finished"] = True
    write_run_json(meta, run_dir)
    return meta.to_dict()


def pseudo_selections(cfgs: list[TrainConfig], data: DataBundle, oof_dir: Path) -> dict[str, tuple]:
    """``{run name: (rows, info)}`` of :func:`kfold.pseudo.select_pseudo` for each config with ``pseudo`` set."""
    return {c.name: select_pseudo(c.pseudo, c.pseudo_threshold, data.test["ImageID"].to_numpy(), data.folds_meta["k"],
                                  data.folds_meta["folds_fingerprint"], oof_dir) for c in cfgs if c.pseudo is not None}


def record_pseudo(run_dir: Path, rows: pd.DataFrame, info: dict, echo: Callable[[str], None] = print) -> None:
    """Snapshot a run's pseudo-labels (``pseudo.csv``) and record ``pseudo`` in run.json, once: when the run starts.

    A run resumed with the same settings keeps its snapshot (run.json has
    ``pseudo`` already), so its folds train on the rows they started with.
    """
    meta = read_run_json(run_dir)
    if "pseudo" not in meta or not (run_dir / PSEUDO_FILE).is_file():
        write_pseudo(rows, run_dir)
        meta["pseudo"] = info
        write_run_json(meta, run_dir)
    info = meta["pseudo"]
    counts = ", ".join(f"fold {f}: {n}" for f, n in info["count"].items())
    echo(f"{run_dir.name}: pseudo-labels from {info['source']} (top probability >= {info['threshold']:g}, "
         f"{info['mode']}): {counts} of {info['test_images']} test images join the training rows")
    if info["mode"] == "shared":
        echo(f"{run_dir.name}: warning: shared pseudo-labels come from models that saw each fold's validation people; "
             "the OOF is somewhat optimistic (a run on the same folds as source gives per-fold labels; docs/training.md)")


def train_runs(cfgs: list[TrainConfig], data: DataBundle, oof_dir: str | Path, folds: list[int] | None = None,
               force: bool = False, echo: Callable[[str], None] = print, progress: bool | None = None,
               executor: str = "local", address: str | None = None) -> list[dict]:
    """Train every config on the requested folds (all when None); skip finished folds unless ``force``.

    Args:
        executor: ``local`` (one fold after another in this process) or
            ``ray`` (each (run, fold) a Ray task; see :mod:`kfold.executors`).
        address: Ray cluster address (``ray start --head`` prints it); None
            starts a local Ray instance.

    Returns:
        One run.json dict per config.

    Raises:
        KfError: a fold number outside ``0..k-1``, an unknown executor, run
            folders with other settings, unreadable images, Ray not installed.
    """
    oof_dir = Path(oof_dir)
    k = data.folds_meta["k"]
    folds = list(range(k)) if folds is None else folds
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise KfError(f"folds: fold {bad[0]} does not exist (folds are 0..{k - 1})")
    if executor not in ("local", "ray"):
        raise KfError(f"executor {executor!r}: choose local or ray")
    if executor == "ray":
        require_ray()  # before anything is written
        check_address(address)  # ray.init would retry an unreachable address for minutes
    # before a run folder is written (or, with --force, deleted); Ray tasks check their own device
    preflight(cfgs, data, oof_dir, caches=force, device=executor == "local")
    pseudo = pseudo_selections(cfgs, data, oof_dir)  # a bad source stops the call before anything is written
    run_dirs = [prepare_run(c, data, oof_dir, force, folds, echo) for c in cfgs]
    for cfg, run_dir in zip(cfgs, run_dirs):
        if cfg.name in pseudo:
            record_pseudo(run_dir, *pseudo[cfg.name], echo)
        tracking.run_started(cfg, run_dir)

    def summarise(cfg: TrainConfig, run_dir: Path) -> dict:
        meta = assemble_run(cfg, run_dir, data)
        tracking.run_finished(cfg, run_dir, meta)
        if meta["finished"]:
            hold = f", holdout macro F1 {meta['holdout_macro_f1']:.4f}" if "holdout_macro_f1" in meta else ""
            echo(f"{cfg.name}: OOF macro F1 {meta['oof_macro_f1']:.4f}, accuracy {meta['oof_accuracy']:.4f} over {k} folds{hold} "
                 f"({meta['seconds'] / 60:.1f} min) -> {run_dir / 'oof.csv'}, {run_dir / 'test.csv'}"
                 + (f", {run_dir / 'holdout.csv'}" if data.has_holdout else ""))
        else:
            echo(f"{cfg.name}: folds done {sorted(int(f) for f in meta['folds'])} of {k}; oof.csv/test.csv come when all are done")
        return meta

    if executor == "ray":
        run_on_ray([(cfg, f, run_dir) for cfg, run_dir in zip(cfgs, run_dirs) for f in folds], data, oof_dir,
                   echo=echo, address=address)
        return [summarise(cfg, run_dir) for cfg, run_dir in zip(cfgs, run_dirs)]
    results = []
    for cfg, run_dir in zip(cfgs, run_dirs):  # each run's oof.csv/test.csv as soon as its folds are done
        for f in folds:
            run_fold(cfg, f, run_dir, data, oof_dir, echo, progress)
        results.append(summarise(cfg, run_dir))
    return results


def prebuild_caches(jobs: list[tuple], data: DataBundle, oof_dir: Path, echo: Callable[[str], None]) -> None:
    """Build the image caches of each size that an unfinished job needs, once, before parallel tasks start.

    So that Ray tasks do not all decode the same images (they find the caches
    built, and memory-map them). ``jobs``: ``(cfg, fold, run_dir)`` tuples.
    """
    sizes = sorted({tuple(cfg.image_size) for cfg, f, run_dir in jobs
                    if not (Path(run_dir) / f"fold{f}" / "result.json").exists()})
    for size in sizes:
        t0 = time.time()
        image_caches(data, size, oof_dir)
        echo(f"ray: image cache {size[0]}x{size[1]} ready in {time.time() - t0:.1f} s")


def run_on_ray(jobs: list[tuple], data: DataBundle, oof_dir: str | Path, echo: Callable[[str], None] = print,
               address: str | None = None, **options) -> list[dict]:
    """Train ``jobs`` (``(cfg, fold, run_dir)`` tuples) as Ray tasks (:func:`kfold.executors.run_jobs_on_ray`).

    Each task runs :func:`kfold.fold.fold_job`; the data root, ``oof_dir``
    and run folders are made absolute first (workers may run in another
    folder), and the image caches are built once on the driver after the
    shared-storage check (:func:`prebuild_caches`). ``options``:
    ``max_retries``, ``cpus_per_task``, ``wait_s`` of
    :func:`~kfold.executors.run_jobs_on_ray`.

    Returns:
        One fold result (``result.json`` plus ``skipped``, ``node``,
        ``attempts``) per job, in job order.

    Raises:
        KfError: see :func:`~kfold.executors.run_jobs_on_ray`.
    """
    oof_dir = Path(oof_dir).resolve()
    data = dataclasses.replace(data, root=Path(data.root).resolve())  # workers may run in another folder
    tasks = [Job(f"{cfg.name} fold {f}", RunSpec(cfg.to_dict(), str(Path(run_dir).resolve()), str(oof_dir)), f,
                 cfg.device, Path(run_dir) / f"fold{f}" / "result.json") for cfg, f, run_dir in jobs]
    return run_jobs_on_ray(tasks, fold_job, data, oof_dir, data.root, echo=echo, address=address,
                           prepare=lambda: prebuild_caches(jobs, data, oof_dir, echo),
                           init_kwargs=tracking.ray_init_kwargs([cfg for cfg, _, _ in jobs]), **options)
