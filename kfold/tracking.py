"""Experiment tracking with MLflow (optional extra ``track``): every run, fold, ensemble and submission.

All MLflow code of kf lives here; the stages call a few hooks, each a no-op
unless tracking is on (``--track``, ``track: true`` in a config, or
``KF_TRACK=1``). MLflow's own structure is used (see ``docs/tracking.md``):

* one **parent run** per kf run folder (``<oof>/<run>/``): the resolved
  config as params, folds fingerprint, library versions and git commit as
  tags, OOF macro F1 and per-task accuracy as metrics, ``config.yaml`` and
  ``run.json`` as artifacts;
* one **child run** per fold (``mlflow.parentRunId``): per-epoch train loss,
  val loss, val macro F1, val accuracy, lr and images/s as step metrics
  (step = epoch, from 1), the fold's result (best epoch, OOF macro F1 with
  TTA) and its ``result.json`` / ``log.csv``;
* one run per ``kf ensemble`` call and one per ``kf submit`` call, linked by
  tags (``kf.member.<name>``, ``kf.source_run_id``) to what they used.

Runs are found again by tags, never by state kept in ``oof/`` (which
tracking does not change): a parent by ``kf.run_key`` (the run folder's
absolute path and the modification time of its ``config.yaml``, written
once when the folder is created and again by ``--force`` on a fold
selection, so ``--force`` or a deleted and recreated folder starts a new parent), a fold child by ``kf.parent_key`` and
``kf.fold``. So a resumed fold, a Ray retry, a Ray worker on another node
(sharing the ``oof/`` storage) or a rerun that skips finished folds all
continue the same MLflow runs. Epoch metrics are logged after the epoch's
checkpoint and ``log.csv`` are written, and a fold's end compares its
``log.csv`` with the steps already logged and logs only the missing ones,
so a killed-and-replayed epoch is never logged twice and epochs missed
while the server was down are logged by the next call that reaches it.

Tracking never stops training: the first failure of any MLflow call (an
unreachable server, a full disk) prints one warning and switches tracking
off for the rest of the process. To keep that failure fast, kf lowers
MLflow's HTTP retries and timeout unless the user set them
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``, ``..._BACKOFF_FACTOR=1``,
``..._TIMEOUT=15`` seconds).
"""
from __future__ import annotations

import functools
import getpass
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .config import RUNTIME_KEYS
from .io import KfError, ParamError
from .labels import N_CLASSES
from .runrecord import is_run_dir, read_run_json
from .tracking_client import (
    absolute_uri,
    experiment_id,
    experiment_name,
    flatten,
    git_commit,
    log_batch,
    mlflow_client,
    quote,
    run_key,
    search_first,
    strings,
)

log = logging.getLogger(__name__)

EXTRA = "pip install -e '.[track]'"
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
# log.csv column -> fold child's step metric
EPOCH_METRICS = {"train_loss": "train_loss", "val_loss": "val_loss", "val_macro_f1": "val_macro_f1",
                 "val_accuracy": "val_accuracy", "lr": "lr", "images_per_s": "images_per_s",
                 "seconds": "epoch_seconds"}

_state = {"off": False}        # set after the first failure: tracking is off for the rest of this process
_ids: dict[tuple, str] = {}     # (tracking URI, key) -> MLflow run id, so each epoch costs one request


# -- switching tracking on -------------------------------------------------------------------------------------
def env_wants() -> bool:
    """``KF_TRACK`` set to 1/true/yes/on."""
    return os.environ.get("KF_TRACK", "").strip().lower() in ("1", "true", "yes", "on")


def require():
    """Import and return ``mlflow``.

    Raises:
        ParamError: MLflow is not installed (one line naming the extra and the ``track`` parameter of
            :func:`wanted` / :func:`enable`, which call this).
    """
    try:
        import mlflow
    except ImportError:
        raise ParamError(f"{{track}}: MLflow is not installed; {EXTRA} (or leave out {{track}}, track: true and KF_TRACK)",
                         "track") from None
    return mlflow


def wanted(track: bool | None) -> bool:
    """Whether a ``kf ensemble`` / ``kf submit`` call tracks: ``--track``/``--no-track``, else ``KF_TRACK``.

    Raises:
        KfError: tracking wanted but MLflow not installed.
    """
    on = env_wants() if track is None else track
    if on:
        require()
    return on


def enable(cfgs: list, track: bool | None) -> list:
    """The configs of a ``kf train`` call with ``track`` resolved: ``--track``/``--no-track``, else the
    config's ``track``, else ``KF_TRACK``.

    Raises:
        KfError: ``track`` not a boolean, or tracking wanted but MLflow not installed.
    """
    for cfg in cfgs:  # in place: the validated config keeps where each value came from (kfold.config.setting_error)
        if not isinstance(cfg.track, bool):
            raise KfError(f"config {cfg.name}: track: expected true or false, got {cfg.track!r}")
        cfg.track = bool(track if track is not None else (cfg.track or env_wants()))
    if any(c.track for c in cfgs):
        require()
    return list(cfgs)


def ray_init_kwargs(cfgs: list) -> dict:
    """Extra ``ray.init`` arguments: when a config tracks, pass the resolved tracking URI and experiment to the
    workers (``runtime_env`` env vars), so a worker on another node, or in another folder, logs where the driver does."""
    if not any(getattr(c, "track", False) for c in cfgs) or _state["off"]:
        return {}
    import mlflow

    env = {"MLFLOW_TRACKING_URI": absolute_uri(mlflow.get_tracking_uri()), "MLFLOW_EXPERIMENT_NAME": experiment_name()}
    env.update({k: os.environ[k] for k in HTTP_DEFAULTS if k in os.environ})
    return {"runtime_env": {"env_vars": env}}


# -- the guard --------------------------------------------------------------------------------------------------------
def _safe(hook: Callable) -> Callable:
    """Run ``hook`` unless tracking is off; turn its first failure into one warning and tracking off."""
    @functools.wraps(hook)
    def wrapper(*args, **kwargs):
        if _state["off"]:
            return None
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        quiet = logging.getLogger("urllib3.connectionpool")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its retry warnings would repeat what our one warning says
        try:
            return hook(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            _state["off"] = True
            try:
                import mlflow

                uri = mlflow.get_tracking_uri()
            except ImportError:
                uri = os.environ.get("MLFLOW_TRACKING_URI", "MLflow (not installed)")
            why = " ".join(str(e).split())[:200]
            log.warning("tracking to %s failed (%s: %s); kf goes on without tracking: the rest of this call's epoch "
                        "metrics, fold results, summaries and artifacts are not logged (oof/ is complete; rerunning "
                        "the command with the server reachable logs the missed epochs and results)",
                        uri, type(e).__name__, why)
            return None
        finally:
            quiet.setLevel(level)
    return wrapper


# -- training hooks (kfold.train, kfold.fold) ----------------------------------------------------------------------
def _parent(client, cfg, run_dir: Path, data=None) -> str:
    """The parent run id of ``run_dir``: found by ``kf.run_key``, else created (params logged once, at creation)."""
    key = run_key(run_dir)
    cache = (client.tracking_uri, key)
    if cache in _ids:
        return _ids[cache]
    exp_id = experiment_id(client)
    run = search_first(client, exp_id, f"tags.`kf.run_key` = {quote(key)}")
    if run is None:
        from . import __version__
        from .device import versions  # torch: only when a parent run is created

        meta = read_run_json(run_dir) if is_run_dir(run_dir) else {}
        tags = {"kf.run_key": key, "kf.kind": "run", "kf.run_dir": str(run_dir.resolve()), "kf.run_name": cfg.name,
                "kf.folds_fingerprint": meta.get("folds_fingerprint", ""), "kf.k": meta.get("k", ""),
                "mlflow.user": getpass.getuser(), "mlflow.source.name": "kf train", "kf.version": __version__}
        tags.update({f"kf.version.{k}": v for k, v in versions().items()})
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = client.create_run(exp_id, run_name=cfg.name, tags=strings(tags))
        cfg_d = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_KEYS and k != "track"}
        params = flatten(cfg_d)
        params.update(flatten({"data": meta.get("data", {})}))
        params["k"] = str(meta.get("k", ""))
        log_batch(client, run.info.run_id, params=params)
        if (run_dir / "config.yaml").exists():
            client.log_artifact(run.info.run_id, str(run_dir / "config.yaml"))
    _ids[cache] = run.info.run_id
    return run.info.run_id


@_safe
def run_started(cfg, run_dir: str | Path) -> None:
    """Hook after ``prepare_run``: find or create the parent run; record this call's runtime settings as tags."""
    if not cfg.track:
        return
    client = mlflow_client()
    run_id = _parent(client, cfg, Path(run_dir))
    log_batch(client, run_id, tags={f"kf.runtime.{k}": getattr(cfg, k) for k in RUNTIME_KEYS})


def _fold_run(client, cfg, fold_dir: Path):
    """``(fold child run id, its Run)``: found by ``kf.parent_key`` and ``kf.fold``, else created under the parent."""
    run_dir, fold = fold_dir.parent, int(fold_dir.name[len("fold"):])
    key = run_key(run_dir)
    cache = (client.tracking_uri, key, fold)
    if cache in _ids:
        return _ids[cache], None
    parent = _parent(client, cfg, run_dir)
    exp_id = client.get_run(parent).info.experiment_id
    run = search_first(client, exp_id, f"tags.`kf.parent_key` = {quote(key)} and tags.`kf.fold` = '{fold}'")
    if run is None:
        run = client.create_run(exp_id, run_name=f"{cfg.name}/fold{fold}", tags=strings({
            "mlflow.parentRunId": parent, "kf.parent_key": key, "kf.fold": str(fold), "kf.kind": "fold",
            "kf.run_name": cfg.name, "mlflow.user": getpass.getuser(), "mlflow.source.name": "kf train"}))
    _ids[cache] = run.info.run_id
    return run.info.run_id, run


@_safe
def log_epoch(cfg, fold_dir: str | Path, row: dict) -> None:
    """Hook after an epoch's checkpoint and ``log.csv`` row: its metrics as steps (``step = row['epoch']``) of the fold's child run.

    Args:
        row: a ``log.csv`` row (``epoch``, ``train_loss``, ``val_loss``, ``val_macro_f1``, ``val_accuracy``,
            ``lr``, ``images_per_s``, ``seconds``).
    """
    if not cfg.track:
        return
    client = mlflow_client()
    run_id, _ = _fold_run(client, cfg, Path(fold_dir))
    log_batch(client, run_id, metrics={EPOCH_METRICS[k]: row[k] for k in EPOCH_METRICS if k in row}, step=int(row["epoch"]))


@_safe
def fold_done(cfg, run_dir: str | Path, fold: int, result: dict) -> None:
    """Hook after a fold finished (or was found finished): log epochs missing from its child run (from
    ``log.csv``), the result (best epoch, OOF macro F1 with and without TTA), ``result.json`` and ``log.csv``;
    mark the child FINISHED. A child already FINISHED is left as is."""
    if not cfg.track:
        return
    client = mlflow_client()
    fold_dir = Path(run_dir) / f"fold{fold}"
    run_id, run = _fold_run(client, cfg, fold_dir)
    run = run or client.get_run(run_id)
    if run.info.status == "FINISHED":
        return
    logged = {m.step for m in client.get_metric_history(run_id, "val_macro_f1")}
    if (fold_dir / "log.csv").exists():
        for row in pd.read_csv(fold_dir / "log.csv").to_dict("records"):
            if int(row["epoch"]) not in logged:
                log_batch(client, run_id, metrics={EPOCH_METRICS[k]: row[k] for k in EPOCH_METRICS if k in row},
                     step=int(row["epoch"]))
    log_batch(client, run_id, metrics={"oof_macro_f1": result.get("macro_f1"), "macro_f1_no_tta": result.get("macro_f1_no_tta"),
                                  "best_epoch": result.get("best_epoch"), "epochs_run": result.get("epochs_run"),
                                  "seconds": result.get("seconds")},
         tags={"kf.best_epoch": result.get("best_epoch")})
    for name in ("result.json", "log.csv"):
        if (fold_dir / name).exists():
            client.log_artifact(run_id, str(fold_dir / name))
    client.set_terminated(run_id, "FINISHED")


def task_accuracy(oof: pd.DataFrame) -> dict:
    """Per-task accuracy of a run's ``oof.csv`` (argmax of ``prob_0..17``): ``{mask_accuracy, gender_accuracy, age_accuracy}``."""
    from .labels import decode
    from .stagefiles import PROB_COLS

    pred = decode(oof[PROB_COLS].to_numpy().argmax(1))
    true = decode(oof["label"].to_numpy())
    return {f"{t}_accuracy": float((p == y).mean()) for t, p, y in zip(("mask", "gender", "age"), pred, true)}


@_safe
def run_finished(cfg, run_dir: str | Path, meta: dict) -> None:
    """Hook after ``assemble_run``: ``run.json`` as an artifact; when all folds are done, OOF macro F1, accuracy and
    per-task accuracy as metrics and the parent marked FINISHED (once: a rerun of a finished run logs nothing new)."""
    if not cfg.track:
        return
    client = mlflow_client()
    run_dir = Path(run_dir)
    run_id = _parent(client, cfg, run_dir)
    run = client.get_run(run_id)
    log_batch(client, run_id, tags={"kf.folds_done": ",".join(sorted(meta.get("folds", {}), key=int)),
                               "kf.finished": str(bool(meta.get("finished"))).lower()})
    if not meta.get("finished"):
        client.log_artifact(run_id, str(run_dir / "run.json"))
        return
    if run.info.status == "FINISHED" and "oof_macro_f1" in run.data.metrics:
        return
    metrics = {"oof_macro_f1": meta["oof_macro_f1"], "oof_accuracy": meta["oof_accuracy"], "seconds": meta["seconds"]}
    metrics.update(task_accuracy(pd.read_csv(run_dir / "oof.csv")))
    log_batch(client, run_id, metrics=metrics)
    client.log_artifact(run_id, str(run_dir / "run.json"))
    client.set_terminated(run_id, "FINISHED")


# -- ensemble and submit -------------------------------------------------------------------------------------------
def _linked_run(client, exp_id: str, folder: Path) -> str | None:
    """The MLflow run that produced ``folder``: a run folder's parent run, else the newest ``kf ensemble`` run
    that wrote ``<oof>/ensemble/<name>``; None when untracked."""
    folder = folder.resolve()
    if folder.parent.name == "ensemble":
        run = search_first(client, exp_id, f"tags.`kf.oof` = {quote(folder.parent.parent)} and "
                                      f"tags.`kf.outputs` LIKE {quote('%,' + folder.name + ',%')}", newest=True)
    else:
        run = search_first(client, exp_id, f"tags.`kf.run_dir` = {quote(folder)}", newest=True)
        if run is None and is_run_dir(folder):  # a re-predicted copy (<run>@<tta>) links to its source
            src = read_run_json(folder).get("source_run")
            if src and src != folder.name:
                return _linked_run(client, exp_id, folder.parent / src)
    return run.info.run_id if run else None


@_safe
def log_ensemble(oof_dir: str | Path, report, label: str, method: str, bias: bool) -> None:
    """One run per ``kf ensemble`` call: the scores table (artifact), the estimates of the option with the highest
    nested macro F1 (metrics), members and outputs as tags, ``kf.member.<name>`` = each member's parent run id.

    Args:
        report: :class:`ensemble.pipeline.EnsembleReport`.
        label: the scores table's label (``<label>_scores.csv``).
    """
    client = mlflow_client()
    exp_id = experiment_id(client)
    oof_dir = Path(oof_dir).resolve()
    table = report.table
    best = table.loc[table["nested_macro_f1"].idxmax()]
    outputs = [f.name for f in report.fitted] + ([] if report.best_kept else ["best"])
    tags = {"kf.kind": "ensemble", "kf.oof": str(oof_dir), "kf.outputs": "," + ",".join(outputs) + ",",
            "kf.members": ",".join(report.runs.names), "kf.chosen": best["name"], "kf.chosen_kind": best["kind"],
            "kf.folds_fingerprint": report.runs.folds_fingerprint, "mlflow.user": getpass.getuser(),
            "mlflow.source.name": "kf ensemble"}
    for n in report.runs.names:
        linked = _linked_run(client, exp_id, oof_dir / n)
        if linked:
            tags[f"kf.member.{n}"] = linked
    run = client.create_run(exp_id, run_name=f"ensemble/{label}", tags=strings(tags))
    metrics = {k: best[k] for k in table.columns if k.endswith("macro_f1") or k == "accuracy"}
    log_batch(client, run.info.run_id, metrics=metrics, params={"method": method, "bias": str(bias),
                                                              "runs": ",".join(report.runs.names)})
    for p in report.written:
        if p.name.endswith("_scores.csv") or p.parent.name == "best" and p.name == "run.json":
            client.log_artifact(run.info.run_id, str(p), artifact_path="best" if p.parent.name == "best" else None)
    client.set_terminated(run.info.run_id, "FINISHED")


@_safe
def log_submission(out: str | Path, source: str | Path, answers: np.ndarray, source_arg: str) -> None:
    """One run per ``kf submit`` call: the CSV's SHA-256 and class shares (``share_<class>``, 0..1), the CSV as an
    artifact, ``kf.source`` (the test.csv) and ``kf.source_run_id`` (the run or ensemble run that wrote it).

    Args:
        answers: ``(n_images,)`` int classes 0..17 written to ``out``.
    """
    client = mlflow_client()
    exp_id = experiment_id(client)
    out, source = Path(out), Path(source)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    shares = np.bincount(np.asarray(answers, dtype=np.int64), minlength=N_CLASSES) / max(len(answers), 1)
    tags = {"kf.kind": "submit", "kf.source": str(source.resolve()), "kf.from": source_arg, "kf.sha256": digest,
            "kf.submission": str(out.resolve()), "mlflow.user": getpass.getuser(), "mlflow.source.name": "kf submit"}
    linked = _linked_run(client, exp_id, source.parent)
    if linked:
        tags["kf.source_run_id"] = linked
    run = client.create_run(exp_id, run_name=f"submit/{out.name}", tags=strings(tags))
    log_batch(client, run.info.run_id, metrics={**{f"share_{c:02d}": s for c, s in enumerate(shares)}, "rows": len(answers)})
    client.log_artifact(run.info.run_id, str(out))
    client.set_terminated(run.info.run_id, "FINISHED")


def reset() -> None:
    """Forget cached run ids and switch tracking back on after a failure (tests; a long-lived process)."""
    _state["off"] = False
    _ids.clear()
