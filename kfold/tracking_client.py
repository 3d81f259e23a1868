"""MLflow plumbing of :mod:`kfold.tracking`: the client, the experiment, searching runs by tag, batched logging.

No function here catches errors: :mod:`kfold.tracking`'s hooks call these
inside their one-warning guard. ``mlflow`` is imported inside the functions.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import numpy as np

DEFAULT_EXPERIMENT = "kf"


def absolute_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` (MLflow's local default, relative to the working folder) -> an absolute path."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def mlflow_client():
    from mlflow import MlflowClient

    return MlflowClient()


def experiment_id(client) -> str:
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if exp_id:
        return exp_id
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def search_first(client, exp_id: str, filt: str, newest: bool = False):
    runs = client.search_runs([exp_id], filt, max_results=1,
                              order_by=[f"attributes.start_time {'DESC' if newest else 'ASC'}"])
    return runs[0] if runs else None


def quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def run_key(run_dir: str | Path) -> str:
    """The tag ``kf.run_key`` of a run folder: a hash of its absolute path and its config.yaml's mtime (ns)."""
    run_dir = Path(run_dir).resolve()
    mark = (run_dir / "config.yaml").stat().st_mtime_ns if (run_dir / "config.yaml").exists() else 0
    return hashlib.sha1(f"{run_dir}\0{mark}".encode()).hexdigest()[:24]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def strings(d: dict) -> dict:
    """Tag values as strings (the REST API refuses anything else)."""
    return {k: str(v) for k, v in d.items()}


def log_batch(client, run_id: str, metrics: dict | None = None, params: dict | None = None, tags: dict | None = None,
         step: int = 0) -> None:
    """One ``log_batch`` request (MLflow accepts up to 1000 metrics, 100 params and 100 tags per request)."""
    from mlflow.entities import Metric, Param, RunTag

    ts = int(time.time() * 1000)
    ms = [Metric(k, float(v), ts, step) for k, v in (metrics or {}).items() if v is not None and np.isfinite(float(v))]
    ps = [Param(k, v) for k, v in (params or {}).items()]
    ts_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, max(len(ps), 1), 100):
        client.log_batch(run_id, metrics=ms if i == 0 else [], params=ps[i:i + 100], tags=ts_ if i == 0 else [])
