"""The one owner of kf's probability stage files (``oof.csv``, ``test.csv``, ``holdout.csv``, ``folds.csv`` keys):
their column names, one reader and one writer per format, so no two commands disagree.

``run.json`` beside them belongs to :mod:`kfold.runrecord`. Every command
that reads one of these files goes through the functions
here (``kf ensemble``, ``kf report``, ``kf train`` assembling a run,
``kf ensemble --tta`` re-predicting one, ``oof/folds.csv``). Integer columns
(``fold``, ``label``) go through :func:`int_column`: a whole number written
as a float (``1.0``, as pandas writes an int column holding a NaN anywhere)
reads as the integer; ``1.5``, an empty cell or text is refused with one
line naming the file, the row (the line number; the header is line 1) and
the value. Formats: ``docs/formats.md``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import KfError, atomic_write, read_csv
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



# --------------------------------------------------------------------------- a test.csv against info.csv

def clean_ids(ids: pd.Series | Sequence[str]) -> np.ndarray:
    """ImageIDs as an object array of stripped strings (missing -> ``""``)."""
    s = pd.Series(ids, dtype=object).fillna("")
    return s.astype(str).str.strip().to_numpy(dtype=object)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def info_index(info_ids: Sequence[str]) -> pd.Index:
    """``info_ids`` as a unique :class:`pandas.Index` of stripped ImageIDs.

    Raises:
        KfError: no ImageIDs, or one twice.
    """
    idx = pd.Index(clean_ids(list(info_ids)), dtype=object)
    if len(idx) == 0:
        raise KfError("info.csv: no ImageIDs")
    if not idx.is_unique:
        dup = idx[idx.duplicated()][0]
        raise KfError(f"info.csv: duplicate ImageID {dup!r}")
    return idx


def check_unique_ids(ids: np.ndarray, source: str | Path) -> None:
    """Refuse an empty or repeated ImageID in ``(n,)`` stripped ``ids`` (file order), naming the row of ``source``.

    Raises:
        KfError: ``<source>: row R: empty ImageID`` or ``... duplicate ImageID 'x' (first at row Q)``.
    """
    empty = ids == ""
    if empty.any():
        raise KfError(f"{source}: {_row(_first(empty))}: empty ImageID")
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        i = _first(dup)
        j = _first(ids == ids[i])
        raise KfError(f"{source}: {_row(i)}: duplicate ImageID {ids[i]!r} (first at {_row(j)})")


def match_info_ids(ids: np.ndarray, info: pd.Index, source: str) -> np.ndarray:
    """Check a file's ImageIDs (``(n,)``, file order) against ``info``; return, per info row, the row holding it.

    Raises:
        KfError: an ImageID empty, twice, not in info.csv, or an info.csv ImageID missing (naming the row).
    """
    check_unique_ids(ids, source)
    extra = ~pd.Index(ids).isin(info)
    if extra.any():
        i = _first(extra)
        raise KfError(f"{source}: {_row(i)}: ImageID {ids[i]!r} is not in info.csv "
                      f"({int(extra.sum())} such row(s); is this file from another eval set?)")
    order = pd.Index(ids).get_indexer(info)
    missing = order < 0
    if missing.any():
        raise KfError(f"{source}: {int(missing.sum())} ImageID(s) of info.csv missing, e.g. "
                      f"{info[_first(missing)]!r} (is this file from another eval set?)")
    return order


def validate_test_probs(test_probs: pd.DataFrame, info_ids: Sequence[str], *, source: str | os.PathLike = "test.csv") -> np.ndarray:
    """Check a test.csv frame against info.csv and return its probabilities in info.csv order.

    Unlike :func:`read_test_csv` (a run's own file, already in info.csv order),
    the rows may come in any order: a test file made elsewhere (``kf submit``, ``kf import``).

    Args:
        test_probs: ``ImageID`` (str) and ``prob_0..prob_17`` (float), any row
            order; other columns are ignored. ``row N`` in messages is the
            CSV line of positional row ``N - 2``.
        info_ids: the ``n_images`` ImageIDs of info.csv, in order.
        source: the file name used in messages.

    Returns:
        ndarray of shape ``(n_images, 18)``, float64, rows in info.csv order.

    Raises:
        KfError: missing ``ImageID``; the ``prob_*`` columns are not exactly
            ``prob_0..prob_17``; an ImageID is empty, appears twice, is not in
            info.csv, or an info.csv ImageID is missing; a probability is not a
            number, NaN or infinite, or negative; a row does not sum to 1
            within 1e-3.
    """
    source = str(source)
    info = info_index(info_ids)
    if "ImageID" not in test_probs.columns:
        raise KfError(f"{source}: missing column ImageID (found: {', '.join(map(str, test_probs.columns))})")
    found = [str(c) for c in test_probs.columns if str(c).startswith("prob_")]
    if sorted(found) != sorted(PROB_COLS):
        wrong = sorted(set(found) ^ set(PROB_COLS), key=lambda c: (len(c), c))
        raise KfError(f"{source}: expected {N_CLASSES} probability columns prob_0..prob_{N_CLASSES - 1}, "
                      f"found {len(found)} (missing or unexpected: {', '.join(wrong) or 'duplicates'})")
    ids = clean_ids(test_probs["ImageID"])
    order = match_info_ids(ids, info, source)
    block = test_probs[PROB_COLS]
    if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
        for c in PROB_COLS:
            num = pd.to_numeric(block[c], errors="coerce")
            bad = (num.isna() & block[c].notna()).to_numpy()
            if bad.any():
                i = _first(bad)
                raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): {c} = {_val(block[c].iloc[i])} is not a number")
        block = block.apply(pd.to_numeric)
    probs = block.to_numpy(dtype=np.float64)
    finite = np.isfinite(probs)
    if not finite.all():
        i, c = np.argwhere(~finite)[0]
        raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): prob_{c} is {probs[i, c]}; probabilities must be finite")
    neg = probs < 0
    if neg.any():
        i, c = np.argwhere(neg)[0]
        raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): prob_{c} = {probs[i, c]:.6g} is negative; "
                      "expected softmax probabilities, not logits")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOL
    if off.any():
        i = _first(off)
        raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): probabilities sum to {sums[i]:.6g}, expected 1 "
                      f"(within {SUM_TOL:g}); expected softmax probabilities, not logits")
    return probs[order]


# --------------------------------------------------------------------------- writers

def probs_frame(front: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """``front``'s key columns then ``prob_0..prob_17`` (``(n, 18)`` ``probs``) as one frame, index reset."""
    return pd.concat([front.reset_index(drop=True), pd.DataFrame(probs, columns=PROB_COLS)], axis=1)


def write_probs_csv(path: str | Path, head: pd.DataFrame, probs: np.ndarray, float_format: str = "%.8g") -> None:
    """Write ``head`` columns then ``prob_0..prob_17`` as CSV, atomically (a run's oof.csv / test.csv format).

    ~3x faster than ``DataFrame.to_csv(float_format=...)``: the probabilities
    are formatted by ``np.savetxt``, the few key columns by pandas.

    Args:
        path: destination file (its folder must exist).
        head: ``(n, h)`` key columns (``image, person, fold, label`` or ``ImageID``).
        probs: ``(n, 18)`` float probabilities.

    Raises:
        KfError: the destination cannot be written (see :func:`kfold.io.atomic_write`).
    """
    probs = np.asarray(probs, dtype=np.float64)
    keys = head.to_csv(index=False, header=False, lineterminator="\n").splitlines()
    buf = io.StringIO()
    np.savetxt(buf, probs, fmt=float_format, delimiter=",")
    vals = buf.getvalue().splitlines()
    with atomic_write(path) as fh:
        fh.write(",".join(list(head.columns) + PROB_COLS) + "\n")
        fh.writelines(f"{k},{v}\n" for k, v in zip(keys, vals))
