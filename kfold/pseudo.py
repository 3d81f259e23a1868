"""Pseudo-labels: confident test (eval) images join the training rows of every fold with their predicted class.

Pseudo-labelling (Lee 2013, "Pseudo-Label: The Simple and Efficient
Semi-Supervised Learning Method for Deep Neural Networks"): a test image whose
top-class probability in a finished run's or ensemble's ``test.csv`` is at
least ``pseudo_threshold`` is added, with that class as a hard label, to the
training rows of each fold. It never joins a validation fold: validation and
OOF rows stay the train images of the fold's own people, same count, same order.

Where the labels come from (``mode``, recorded in ``run.json``):

* ``per_fold``: the source is a run on the same folds (same folds
  fingerprint, every ``fold<k>/test.csv`` present). Fold ``f`` gets the
  labels of the source's fold-``f`` model, which never saw fold ``f``'s
  people, so nothing fold ``f``'s model learns comes from its validation
  labels: its OOF stays as honest as without pseudo-labels (the fold-wise
  pseudo-labelling practised on Kaggle to keep CV honest).
* ``shared``: any other source (an ensemble, a run on other folds): every
  fold gets the source's averaged test predictions. Those come from models
  of which K-1 saw fold ``f``'s people, whose knowledge reaches fold ``f``'s
  model through the test images (distillation): its OOF is somewhat
  optimistic. kf says so when training starts.

The selection is written once, when a run starts, to ``<run>/pseudo.csv``
(``fold, ImageID, label, confidence``: the rows that join fold ``fold``'s
training), which every fold reads, so a resumed run trains on the same rows
even if the source is rewritten meanwhile.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import KfError, read_csv, write_csv
from .runrecord import is_run_dir, read_run_json, resolve_run_dir
from .stagefiles import read_test_csv

PSEUDO_FILE = "pseudo.csv"
PSEUDO_COLS = ["fold", "ImageID", "label", "confidence"]


def _source_dir(spec: str, oof_dir: Path) -> Path:
    """The run or ensemble folder ``spec`` names: a folder with run.json (also ``<oof>/<spec>``), or its test.csv."""
    p = Path(spec)
    if p.name == "test.csv" and p.is_file() and is_run_dir(p.parent):
        return p.parent
    try:
        return resolve_run_dir(spec, oof_dir)
    except KfError as e:
        raise KfError(f"pseudo {spec}: {e}") from None


def _test_probs(path: Path, test_ids: np.ndarray) -> np.ndarray:
    """``(n_test, 18)`` probabilities of ``path`` in ``test_ids`` order; KfError naming a missing ImageID."""
    ids, probs = read_test_csv(path)
    where = pd.Series(np.arange(len(ids)), index=ids)
    missing = [i for i in test_ids if i not in where.index]
    if missing:
        raise KfError(f"{path}: ImageID {missing[0]!r} of eval/info.csv is missing ({len(missing)} missing): "
                      "predictions for another test set")
    return probs[where.loc[test_ids].to_numpy()]


def select_pseudo(spec: str, threshold: float, test_ids: np.ndarray, k: int, folds_fingerprint: str,
                  oof_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Choose the pseudo-labelled test images of each fold.

    Args:
        spec: the source: a finished run or ensemble folder (path, or name under ``oof_dir``), or its test.csv.
        threshold: minimum top-class probability, in (0, 1].
        test_ids: the eval ImageIDs in info.csv order.
        k, folds_fingerprint: the folds of the run being trained (``folds.json``).

    Returns:
        ``(rows, info)``: ``rows`` with columns ``fold, ImageID, label, confidence``
        (per fold, in info.csv order), and ``info`` for run.json: ``source``
        (resolved path), ``threshold``, ``mode`` (``per_fold``/``shared``),
        ``count`` (fold -> rows) and ``test_images``.

    Raises:
        KfError: no such run/ensemble, unfinished, or its test.csv is bad or for another test set.
    """
    src = _source_dir(spec, Path(oof_dir))
    meta = read_run_json(src)
    if not meta.finished:
        raise KfError(f"{src / 'run.json'}: pseudo-label source is not finished (no final test.csv yet)")
    fold_files = [src / f"fold{f}" / "test.csv" for f in range(k)]
    per_fold = meta.folds_fingerprint == folds_fingerprint and all(p.is_file() for p in fold_files)
    parts = []
    for f in range(k):
        probs = _test_probs(fold_files[f] if per_fold else src / "test.csv", test_ids)
        conf, label = probs.max(1), probs.argmax(1)
        keep = np.flatnonzero(conf >= threshold)
        parts.append(pd.DataFrame({"fold": f, "ImageID": test_ids[keep], "label": label[keep], "confidence": conf[keep]}))
    rows = pd.concat(parts, ignore_index=True)
    info = {"source": str(src.resolve()), "threshold": float(threshold), "mode": "per_fold" if per_fold else "shared",
            "count": {str(f): int((rows["fold"] == f).sum()) for f in range(k)}, "test_images": int(len(test_ids))}
    return rows, info


def write_pseudo(rows: pd.DataFrame, run_dir: str | Path) -> None:
    """Write the selection to ``<run>/pseudo.csv`` (atomically)."""
    write_csv(rows[PSEUDO_COLS], Path(run_dir) / PSEUDO_FILE)


def pseudo_rows(run_dir: str | Path, fold: int, test_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(test row indices, labels)`` that join ``fold``'s training rows; empty arrays when the run has no pseudo.csv.

    Raises:
        KfError: pseudo.csv names an ImageID that is not in the test set.
    """
    path = Path(run_dir) / PSEUDO_FILE
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    df = read_csv(path, required=PSEUDO_COLS, dtype={"ImageID": str}, keep_default_na=False)
    df = df[df["fold"] == fold]
    where = pd.Series(np.arange(len(test_ids)), index=test_ids)
    missing = df.loc[~df["ImageID"].isin(where.index), "ImageID"]
    if len(missing):
        raise KfError(f"{path}: ImageID {missing.iloc[0]!r} is not in eval/info.csv")
    return where.loc[df["ImageID"]].to_numpy(np.int64), df["label"].to_numpy(np.int64)
