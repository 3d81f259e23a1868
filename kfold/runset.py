"""Load several runs (``oof/<run>/{oof.csv,test.csv,run.json}``) aligned for ensembling or combining, validated at the boundary.

Everything a method needs is checked here once, so the methods can trust
their arrays: every run was trained on the folds in ``oof/folds.json``
(same ``folds_fingerprint``), lists the same train images in the same order
with the same person, fold and label, and holds 18 finite probabilities per
row that sum to 1 within 1e-3; every ``test.csv`` lists the same ImageIDs in
the same order. A failed check raises one :class:`kfold.io.KfError` line
naming the file and the row (``row N`` is the line number, the header being
line 1), as ``kfold.data`` does. The files are read by the one reader of
each format, :mod:`kfold.stagefiles` (``kf report`` uses the same).

An ensemble written by ``kf ensemble`` (``oof/ensemble/<name>/``) has the
same files, so it loads like a run (``kind`` tells them apart); ``kf ensemble``
refuses it as a member, because its OOF probabilities were fitted on every
OOF row and no longer are held-out predictions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .folds import FOLDS_CSV, FOLDS_JSON, folds_fingerprint, load_folds, load_holdout
from .io import KfError, ParamError, read_csv, read_json
from .runrecord import discover_runs, read_run_json, resolve_run_dir
from .stagefiles import KEY_COLS, _row, _val, read_holdout_csv, read_oof_csv, read_test_csv

log = logging.getLogger(__name__)


@dataclass
class RunSet:
    """Aligned OOF and test probabilities of several runs.

    Attributes:
        names: run names, paths relative to the ``oof`` folder (``effb0``, ``ensemble/caruana``).
        dirs: the run folders.
        keys: ``(n_images, 4)`` DataFrame ``image, person, fold, label`` in folds.csv order.
        oof: ``(n_runs, n_images, 18)`` float64 OOF probabilities.
        test_ids: ``(n_test,)`` ImageIDs in info.csv order.
        test: ``(n_runs, n_test, 18)`` float64 test probabilities.
        tta: per run, the ``tta`` recorded in its ``run.json`` (a dict for an ensemble).
        kinds: per run, ``run`` or ``ensemble`` (``kind`` in its ``run.json``).
        members: per run, the members of an ensemble, ``[]`` for a run.
        folds_fingerprint: of ``oof/folds.json``; equal in every run.
        k: number of folds.
        skipped: unfinished runs left out when the runs were discovered.
        holdout_keys: ``(n_holdout, 3)`` DataFrame ``image, person, label`` of the
            local holdout (``oof/holdout.csv`` order), or None without one.
        holdout: ``(n_runs, n_holdout, 18)`` float64 holdout probabilities
            (each run's ``holdout.csv``: mean of its fold models, as test.csv),
            or None without a holdout or when a run has no ``holdout.csv``.
    """

    names: list[str]
    dirs: list[Path]
    keys: pd.DataFrame
    oof: np.ndarray
    test_ids: np.ndarray
    test: np.ndarray
    tta: list
    folds_fingerprint: str
    k: int
    skipped: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    members: list[list[str]] = field(default_factory=list)
    holdout_keys: pd.DataFrame | None = None
    holdout: np.ndarray | None = None

    @property
    def holdout_y(self) -> np.ndarray | None:
        """``(n_holdout,)`` int64 holdout labels, or None."""
        return None if self.holdout is None else self.holdout_keys["label"].to_numpy(np.int64)

    @property
    def y(self) -> np.ndarray:
        """``(n_images,)`` int64 labels."""
        return self.keys["label"].to_numpy(np.int64)

    @property
    def folds(self) -> np.ndarray:
        """``(n_images,)`` int64 fold of each image."""
        return self.keys["fold"].to_numpy(np.int64)


def _first_diff(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> tuple[int, str] | None:
    """First ``(row, column)`` where ``a`` and ``b`` (same length) differ, or None."""
    for c in cols:
        ne = a[c].to_numpy() != b[c].to_numpy()
        if ne.any():
            return int(np.flatnonzero(ne)[0]), c
    return None


def load_runs(oof_dir: str | Path, runs: list[str] | None = None, info_csv: str | Path | None = None) -> RunSet:
    """Load and cross-check the OOF and test probabilities of ``runs``.

    Args:
        oof_dir: the ``--oof`` folder; must hold ``folds.json`` (and usually ``folds.csv``).
        runs: run names (folders under ``oof_dir``, e.g. ``effb0`` or
            ``ensemble/caruana``); None or empty loads every finished run
            directly under ``oof_dir`` (``ensemble/`` and ``cache/`` skipped).
        info_csv: optional ``eval/info.csv``; when given, ``test.csv`` must list
            its ImageIDs in its order.

    Returns:
        A :class:`RunSet` with ``oof`` of shape ``(n_runs, n_images, 18)``.

    Raises:
        KfError: no runs; a named run is missing or unfinished; a ``run.json``
            records another ``folds_fingerprint`` than ``oof/folds.json``; an
            ``oof.csv`` differs from ``folds.csv`` (or from the first run) in
            images, order, persons, folds or labels; prob columns missing or
            not 18; a probability missing, non-finite or outside [0, 1]; a row
            not summing to 1 within 1e-3; ``test.csv`` ImageIDs differ between
            runs. The message names the file and the row.
    """
    oof_dir = Path(oof_dir)
    skipped: list[str] = []
    if not runs:
        runs, skipped = discover_runs(oof_dir)
        if skipped:
            log.warning("skipping unfinished run(s): %s", ", ".join(skipped))
        if not runs:
            raise ParamError(f"{oof_dir}: no finished runs (train with kf train, or name them with {{runs}})", "runs")
    if len(set(runs)) != len(runs):
        raise ParamError(f"{{runs}}: a run is named twice ({', '.join(runs)})", "runs")
    meta_path = oof_dir / FOLDS_JSON
    if not meta_path.is_file():
        raise KfError(f"{meta_path}: file not found; ensembling needs the folds the runs were trained on (kf folds)")
    meta = read_json(meta_path)
    fp = meta.get("folds_fingerprint")
    if not fp:
        raise KfError(f"{meta_path}: no folds_fingerprint field")
    ref_keys, ref_name = None, None
    if (oof_dir / FOLDS_CSV).is_file():
        ref_keys, ref_name = load_folds(oof_dir)[KEY_COLS], oof_dir / FOLDS_CSV

    dirs, oofs, tests, ttas, kinds, members = [], [], [], [], [], []
    hold_ref = load_holdout(oof_dir, meta).reset_index(drop=True) if meta.get("holdout") else None
    holds, no_hold = [], []
    ref_ids, ref_test_name = None, None
    if info_csv is not None and Path(info_csv).is_file():
        ref_ids = read_csv(info_csv, required=["ImageID"], dtype=str, keep_default_na=False)["ImageID"].str.strip().to_numpy()
        ref_test_name = Path(info_csv)
    for name in runs:
        d = resolve_run_dir(name, oof_dir)
        rj = read_run_json(d)
        if not rj.finished:
            raise ParamError(f"{d / 'run.json'}: run not finished (finished: {rj.get('finished')!r}); "
                             "finish it with kf train or leave it out of {runs}", "runs")
        if rj.folds_fingerprint != fp:
            raise KfError(f"{d / 'run.json'}: folds_fingerprint {str(rj.folds_fingerprint)[:12]!r} differs from "
                          f"{fp[:12]!r} in {meta_path}; the run was trained on other folds and cannot be ensembled with them")
        keys, probs = read_oof_csv(d / "oof.csv")
        if ref_keys is None:
            if folds_fingerprint(keys) != fp:
                raise KfError(f"{d / 'oof.csv'}: image/person/label/fold columns do not match folds_fingerprint in "
                              f"{meta_path} (rows reordered, missing or edited)")
            ref_keys, ref_name = keys, d / "oof.csv"
        else:
            if len(keys) != len(ref_keys):
                raise KfError(f"{d / 'oof.csv'}: {len(keys)} rows, expected {len(ref_keys)} as in {ref_name}")
            diff = _first_diff(keys, ref_keys, KEY_COLS)
            if diff is not None:
                i, c = diff
                raise KfError(f"{d / 'oof.csv'}: {_row(i)}: {c} {_val(keys[c].iloc[i])} differs from "
                              f"{_val(ref_keys[c].iloc[i])} in {ref_name} (runs must list the same images, in folds.csv order)")
        ids, tprobs = read_test_csv(d / "test.csv")
        if ref_ids is None:
            ref_ids, ref_test_name = ids, d / "test.csv"
        else:
            if len(ids) != len(ref_ids):
                raise KfError(f"{d / 'test.csv'}: {len(ids)} rows, expected {len(ref_ids)} as in {ref_test_name}")
            ne = ids != ref_ids
            if ne.any():
                i = int(np.flatnonzero(ne)[0])
                raise KfError(f"{d / 'test.csv'}: {_row(i)}: ImageID {ids[i]!r} differs from {ref_ids[i]!r} "
                              f"in {ref_test_name} (test.csv must follow info.csv order)")
        if hold_ref is not None:
            if (d / "holdout.csv").is_file():
                holds.append(read_holdout_csv(d / "holdout.csv", hold_ref))
            else:
                no_hold.append(name)
        dirs.append(d)
        oofs.append(probs)
        tests.append(tprobs)
        ttas.append(rj.tta)
        kinds.append("ensemble" if rj.kind == "ensemble" else "run")
        members.append(rj.members)
    keys = ref_keys.reset_index(drop=True).copy()
    keys["fold"] = keys["fold"].astype(np.int64)
    keys["label"] = keys["label"].astype(np.int64)
    if no_hold:
        log.warning("holdout scores skipped: %s ha%s no holdout.csv", ", ".join(no_hold), "s" if len(no_hold) == 1 else "ve")
    has_hold = hold_ref is not None and not no_hold
    return RunSet(names=list(runs), dirs=dirs, keys=keys, oof=np.stack(oofs), test_ids=np.asarray(ref_ids),
                  test=np.stack(tests), tta=ttas, folds_fingerprint=fp,
                  k=int(meta.get("k") or keys["fold"].nunique()), skipped=skipped, kinds=kinds, members=members,
                  holdout_keys=hold_ref if has_hold else None, holdout=np.stack(holds) if has_hold else None)
