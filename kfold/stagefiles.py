"""One reader per kf stage-file format (``oof.csv``, ``test.csv``, ``folds.csv``), so no two commands disagree.

Every command that reads one of these files goes through the functions
here (``kf ensemble``, ``kf report``, ``kf train`` assembling a run,
``kf ensemble --tta`` re-predicting one, ``oof/folds.csv``). Integer columns
(``fold``, ``label``) go through :func:`int_column`: a whole number written
as a float (``1.0``, as pandas writes an int column holding a NaN anywhere)
reads as the integer; ``1.5``, an empty cell or text is refused with one
line naming the file, the row (the line number; the header is line 1) and
the value. Formats: ``docs/formats.md``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import KfError, read_csv
from .labels import N_CLASSES

PROB_COLS = [f"prob_{c}" for c in range(N_CLASSES)]
KEY_COLS = ["image", "person", "fold", "label"]
#: rows of probabilities must sum to 1 within this
SUM_TOL = 1e-3
_NA = ["", "nan", "NaN", "NA"]


def _row(i: int) -> str:
    return f"row {i + 2}"


def _val(v) -> str:
    """``repr`` of a cell for a message, without numpy's wrapper (``1``, ``nan``, not ``np.int64(1)``)."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def int_column(df: pd.DataFrame, col: str, path: str | Path, *, low: int = 0, high: int | None = None,
               what: str = "an integer") -> np.ndarray:
    """``(n,)`` int64 values of ``df[col]``, a column of whole numbers however the file spells them.

    ``3``, ``3.0``, ``" 3 "`` and ``3e0`` read as 3; values must lie in
    ``low..high`` (``high`` None: no upper bound).

    Raises:
        KfError: ``<path>: row N: <col> <value> is not <what>`` for the first
            cell that is empty, not a number, not whole (``1.5``) or out of range.
    """
    raw = df[col]
    v = pd.to_numeric(raw.astype(str).str.strip() if raw.dtype == object else raw, errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(v) | (v != np.round(v)) | (v < low) | ((v > high) if high is not None else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise KfError(f"{path}: {_row(i)}: {col} {_val(raw.iloc[i])} is not {what}")
    return v.astype(np.int64)


def check_probs(df: pd.DataFrame, path: str | Path, id_col: str) -> np.ndarray:
    """Return the ``(n, 18)`` float64 probabilities of ``df`` or raise naming ``path`` and the row.

    Raises:
        KfError: the ``prob_*`` columns are not ``prob_0..prob_17`` in order; a
            probability is missing, non-finite, or outside [0, 1]; a row does
            not sum to 1 within :data:`SUM_TOL`.
    """
    got = [c for c in df.columns if c.startswith("prob_")]
    if got != PROB_COLS:
        if sorted(got) == sorted(PROB_COLS):
            raise KfError(f"{path}: prob columns out of order, expected prob_0..prob_{N_CLASSES - 1}")
        raise KfError(f"{path}: {len(got)} prob columns ({', '.join(got[:3])}{', ...' if len(got) > 3 else ''}), "
                      f"expected {N_CLASSES} (prob_0..prob_{N_CLASSES - 1}), one per class")
    arr = df[PROB_COLS].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise KfError(f"{path}: {_row(i)} ({id_col} {_val(df[id_col].iloc[i])}): {PROB_COLS[j]} is "
                      f"{_val(df[PROB_COLS[j]].iloc[i])}, expected a finite probability")
    out = (arr < 0) | (arr > 1 + SUM_TOL)
    if out.any():
        i, j = (int(v[0]) for v in np.nonzero(out))
        raise KfError(f"{path}: {_row(i)} ({id_col} {df[id_col].iloc[i]!r}): {PROB_COLS[j]} = {arr[i, j]:g} "
                      "is outside [0, 1] (expected softmax probabilities, not logits)")
    s = arr.sum(axis=1)
    off = np.abs(s - 1.0) > SUM_TOL
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise KfError(f"{path}: {_row(i)} ({id_col} {df[id_col].iloc[i]!r}): probabilities sum to {s[i]:.6g}, "
                      f"expected 1 within {SUM_TOL:g} (softmax outputs, not logits)")
    return arr


def read_keys(path: str | Path, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``image, person, fold, label`` columns of an ``oof.csv`` or ``folds.csv``, folds and labels as int64.

    Args:
        path: the file (read unless ``df`` is given, then only named in messages).
        df: the file already read with :func:`kfold.io.read_csv`.

    Returns:
        DataFrame ``image`` (str), ``person`` (str), ``fold`` (int64, >= 0), ``label`` (int64, 0..17).

    Raises:
        KfError: a missing column, an empty table, or a fold / label that is not
            a whole number in range (see :func:`int_column`), naming the row.
    """
    if df is None:
        df = read_csv(path, required=KEY_COLS, dtype={"image": str, "person": str}, keep_default_na=False)
    if df.empty:
        raise KfError(f"{path}: no rows")
    keys = df[KEY_COLS].copy()
    keys["fold"] = int_column(df, "fold", path, what="a fold number (a whole number >= 0)")
    keys["label"] = int_column(df, "label", path, high=N_CLASSES - 1, what=f"a class 0..{N_CLASSES - 1}")
    return keys


def read_oof_csv(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read and validate an ``oof.csv`` (``image, person, fold, label, prob_0..prob_17``): the one reader.

    Returns:
        ``(keys, probs)``: ``keys`` DataFrame ``image`` (str), ``person`` (str),
        ``fold`` (int64), ``label`` (int64, 0..17); ``probs`` ``(n_images, 18)``
        float64, rows summing to 1.

    Raises:
        KfError: missing file or column, empty table, a fold or label that is
            not a whole number in range, a probability missing, non-finite or
            outside [0, 1], or a row not summing to 1 within 1e-3 (naming the row).
    """
    path = Path(path)
    df = read_csv(path, required=KEY_COLS, dtype={"image": str, "person": str}, keep_default_na=False,
                  na_values={c: _NA for c in PROB_COLS})
    keys = read_keys(path, df)
    return keys, check_probs(df, path, "image")


def read_test_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a run's ``test.csv`` (``ImageID, prob_0..prob_17``).

    Returns:
        ``(ids, probs)``: ``(n_test,)`` ImageIDs (str) and ``(n_test, 18)`` float64 probabilities.

    Raises:
        KfError: missing file or ImageID column, a duplicate ImageID, or bad
            probabilities (see :func:`check_probs`), naming the row.
    """
    path = Path(path)
    df = read_csv(path, required=["ImageID"], dtype={"ImageID": str}, keep_default_na=False,
                  na_values={c: _NA for c in PROB_COLS})
    ids = df["ImageID"].astype(str).to_numpy()
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise KfError(f"{path}: {_row(i)}: duplicate ImageID {ids[i]!r}")
    return ids, check_probs(df, path, "ImageID")


def read_holdout_csv(path: str | Path, ref: pd.DataFrame) -> np.ndarray:
    """Read a run's ``holdout.csv`` (``image, person, label, prob_0..prob_17``), checked against ``oof/holdout.csv``.

    Args:
        ref: ``oof/holdout.csv`` (:func:`kfold.folds.load_holdout`): the keys the file must list, in its order.

    Returns:
        ``(n_holdout, 18)`` float64 probabilities, rows summing to 1.

    Raises:
        KfError: another row count, a key that differs from ``ref`` (naming the row), a label
            that is not a class, or bad probabilities (see :func:`check_probs`).
    """
    path = Path(path)
    cols = ["image", "person", "label"]
    df = read_csv(path, required=cols, dtype={"image": str, "person": str}, keep_default_na=False,
                  na_values={c: _NA for c in PROB_COLS})
    if len(df) != len(ref):
        raise KfError(f"{path}: {len(df)} rows, expected {len(ref)} as in oof/holdout.csv")
    df["label"] = int_column(df, "label", path, high=N_CLASSES - 1, what=f"a class 0..{N_CLASSES - 1}")
    for c in cols:
        ne = df[c].to_numpy() != ref[c].astype(df[c].dtype).to_numpy()
        if ne.any():
            i = int(np.flatnonzero(ne)[0])
            raise KfError(f"{path}: {_row(i)}: {c} {_val(df[c].iloc[i])} differs from {_val(ref[c].iloc[i])} "
                          "in oof/holdout.csv")
    return check_probs(df, path, "image")

