"""What ``kf ensemble`` writes for each fitted blend: ``ensemble/<name>.json`` and the run-format folder ``<name>/``.

``<name>/`` holds ``oof.csv``, ``test.csv`` (and ``holdout.csv`` with a local
holdout) in a run's format (:mod:`kfold.stagefiles`) and a ``run.json``
(:meth:`kfold.runrecord.RunRecord.ensemble`), so an ensemble loads like a run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kfold.folds import HOLDOUT_COLS
from kfold.io import KfError, ParamError, read_json, write_json
from kfold.runrecord import ENSEMBLE_DIR, RunRecord, run_json_path, write_run_json
from kfold.runset import RunSet
from kfold.stagefiles import KEY_COLS, write_probs_csv

from .methods import to_state
from .scores import Fitted


def ensemble_doc(fit: Fitted, runs: RunSet, rows: list[dict]) -> dict:
    """The content of ``<oof>/ensemble/<name>.json`` for ``fit`` (docs/ensemble.md lists the fields)."""
    state = to_state(fit.estimator)
    own = next(r for r in rows if r["name"] == fit.name)
    return {"name": fit.name, **{k: state[k] for k in ("method", "bias")}, "members": runs.names,
            "weights": state["weights"], "biases": state["biases"], "tta": dict(zip(runs.names, runs.tta)),
            "folds_fingerprint": runs.folds_fingerprint, "k": runs.k,
            "oof_macro_f1": own["oof_macro_f1"], "nested_macro_f1": own["nested_macro_f1"],
            "params": state["params"], "bias_params": state["bias_params"], "fitted": state["fitted"],
            "scores": [r for r in rows if r["kind"] == "run"] + [own], "versions": _versions()}


def write_outputs(fit: Fitted, runs: RunSet, oof_dir: str | Path, rows: list[dict]) -> list[Path]:
    """Write ``<oof>/ensemble/<name>.json`` and ``<name>/{oof.csv,test.csv,run.json}`` atomically.

    ``run.json`` is written last, so a folder interrupted mid-write is not a
    finished run.

    Returns:
        The paths written.
    """
    ens_dir = Path(oof_dir) / ENSEMBLE_DIR
    out_dir = ens_dir / fit.name
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = ensemble_doc(fit, runs, rows)
    own = next(r for r in rows if r["name"] == fit.name)
    record = RunRecord.ensemble(f"{ENSEMBLE_DIR}/{fit.name}", doc["method"], doc["bias"], runs.names, f"../{fit.name}.json",
                                runs.folds_fingerprint, runs.k, doc["tta"], doc["oof_macro_f1"], doc["nested_macro_f1"],
                                own.get("holdout_macro_f1"))
    paths = [out_dir / "oof.csv", out_dir / "test.csv", ens_dir / f"{fit.name}.json", run_json_path(out_dir)]
    paths[3].unlink(missing_ok=True)  # while rewriting, the folder is not a finished run
    write_probs_csv(paths[0], runs.keys[KEY_COLS].reset_index(drop=True), fit.oof_proba)
    write_probs_csv(paths[1], pd.DataFrame({"ImageID": runs.test_ids}), fit.test_proba)
    paths[2:2] = write_holdout(out_dir, runs, fit.holdout_proba)
    write_json(doc, paths[-2])
    write_run_json(record, out_dir)
    return paths


def write_holdout(out_dir: Path, runs: RunSet, proba: np.ndarray | None) -> list[Path]:
    """Write ``out_dir/holdout.csv`` (``image, person, label, prob_0..17``) when there is a holdout; else remove a stale one."""
    path = out_dir / "holdout.csv"
    if proba is None or runs.holdout_keys is None:
        path.unlink(missing_ok=True)
        return []
    write_probs_csv(path, runs.holdout_keys[HOLDOUT_COLS].reset_index(drop=True), proba)
    return [path]


def _versions() -> dict:
    import scipy
    import sklearn

    import kfold

    return {"kf": kfold.__version__, "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__}


def check_overwrites(oof_dir: str | Path, names: list[str], members: list[str], overwrite: bool = False) -> list[str]:
    """Ensembles among ``names`` that were written with other members (see :func:`run_ensemble`'s ``overwrite``).

    Returns:
        One ``"<name> of <old members>"`` per ensemble this call will replace (only with ``overwrite``).

    Raises:
        ParamError: without ``overwrite``, ``<oof>/ensemble/<name>.json`` exists for one of ``names`` and lists other members.
    """
    replaced = []
    for n in names:
        path = Path(oof_dir) / ENSEMBLE_DIR / f"{n}.json"
        if not path.is_file():
            continue
        try:
            old = list(read_json(path).get("members") or [])
        except KfError:
            old = None
        if old != list(members):
            had = ", ".join(old) if old is not None else "unreadable members"
            if not overwrite:
                raise ParamError(f"{path}: already holds {n} of {had}; this call blends {', '.join(members)}: pass {{name}} "
                                 "to keep both, or {overwrite} to replace it", "name", "overwrite")
            replaced.append(f"{n} of {had}")
    return replaced


__all__ = ["ENSEMBLE_DIR", "check_overwrites", "ensemble_doc", "write_holdout", "write_outputs"]
