"""Build, validate and write the competition CSV (``ImageID,ans``) from a ``test.csv``.

A ``test.csv`` (a run's or an ensemble's, see ``docs/formats.md``) holds one
row per eval image: ``ImageID, prob_0..prob_17``, softmax probabilities whose
rows sum to 1. Its rows may come in any order; the submission is written in
``eval/info.csv`` order, one row per info.csv ImageID, ``ans = argmax`` of the
row (the lowest class wins a tie, as in :func:`numpy.argmax`).

Every check raises :class:`kfold.io.KfError` with one line that names the
file and, where there is one, the row (``row 2`` is the first line after the
header) and the field. The messages are listed in ``docs/submit.md``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kfold.io import KfError, check_writable, read_csv, write_csv
from kfold.labels import N_CLASSES
from kfold.stagefiles import PROB_COLS

PROB_COLUMNS = PROB_COLS  # the one definition (kfold/stagefiles.py)
SUBMISSION_COLUMNS = ["ImageID", "ans"]
SUM_TOLERANCE = 1e-3


def _row(i: int) -> str:
    """Human row number of positional row ``i`` (line 1 is the header)."""
    return f"row {i + 2}"


def _clean_ids(ids: pd.Series | Sequence[str]) -> np.ndarray:
    """ImageIDs as an object array of stripped strings (missing -> ``""``)."""
    s = pd.Series(ids, dtype=object).fillna("")
    return s.astype(str).str.strip().to_numpy(dtype=object)


def _show(v: object) -> str:
    """A cell value for a message: ``'abc'`` for text, ``2.5`` for numbers (no ``np.float64(...)``)."""
    if isinstance(v, str):
        return repr(v)
    return str(v.item() if hasattr(v, "item") else v)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


# --------------------------------------------------------------------------- inputs

def list_sources(oof: str | os.PathLike) -> list[str]:
    """Names that ``--from`` accepts under ``oof``: runs (``lite0``) and ensembles (``ensemble/caruana``) with a test.csv."""
    oof = Path(oof)
    if not oof.is_dir():
        return []
    runs = sorted(p.parent.name for p in oof.glob("*/test.csv") if p.parent.name != "ensemble")
    ens = sorted(f"ensemble/{p.parent.name}" for p in oof.glob("ensemble/*/test.csv"))
    return runs + ens


def resolve_source(source: str, oof: str | os.PathLike = "oof") -> Path:
    """Find the ``test.csv`` that ``--from SOURCE`` names.

    * ``SOURCE`` ending in ``.csv``: that file (a direct path to a test.csv);
    * otherwise ``<oof>/<SOURCE>/test.csv`` (a run such as ``lite0`` or an
      ensemble such as ``ensemble/caruana``);
    * otherwise ``<SOURCE>/test.csv`` (a run folder given by its path).

    Raises:
        KfError: none of these is a file; the message lists what ``oof`` holds.
    """
    p = Path(source)
    if p.suffix.lower() == ".csv":
        if not p.is_file():
            raise KfError(f"--from {source}: file not found")
        return p
    cand = Path(oof) / source / "test.csv"
    if cand.is_file():
        return cand
    if (p / "test.csv").is_file():
        return p / "test.csv"
    if cand.parent.is_dir():
        raise KfError(f"--from {source}: {cand} not found (a run writes test.csv only when every fold has finished)")
    available = list_sources(oof)
    hint = (f"available in {oof}: {', '.join(available)}" if available
            else f"{oof} holds no run or ensemble with a test.csv; pass --oof, or a path to a test.csv")
    raise KfError(f"--from {source}: {cand} not found ({hint})")


def read_info_ids(data: str | os.PathLike) -> list[str]:
    """Read the ImageIDs of ``<data>/eval/info.csv``, in file order.

    Only the CSV is read (the images are not needed to submit; ``kf train``
    checked them with :func:`kfold.data.read_eval`).

    Returns:
        list of str, length ``n_images``, stripped, unique, non-empty.

    Raises:
        KfError: the folder or file is missing, the table is empty or lacks
            ``ImageID``, an ImageID is empty or appears twice (naming the row).
    """
    data = Path(data)
    if not data.is_dir():
        raise KfError(f"{data}: data folder not found (pass --data or set KF_DATA)")
    csv = data / "eval" / "info.csv"
    df = read_csv(csv, required=["ImageID"], dtype={"ImageID": str}, keep_default_na=False)
    if df.empty:
        raise KfError(f"{csv}: no images (empty table)")
    ids = _clean_ids(df["ImageID"])
    empty = ids == ""
    if empty.any():
        raise KfError(f"{csv}: {_row(_first(empty))}: empty ImageID")
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        i = _first(dup)
        j = _first(ids == ids[i])
        raise KfError(f"{csv}: {_row(i)}: duplicate ImageID {ids[i]!r} (first at {_row(j)})")
    return ids.tolist()


def read_test_probs(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``test.csv`` as it is; :func:`make_submission` validates its content.

    Returns:
        DataFrame with ``ImageID`` (str) and the file's other columns.

    Raises:
        KfError: the file is missing, empty, unparsable or lacks ``ImageID``.
    """
    return read_csv(path, required=["ImageID"], dtype={"ImageID": str})


def read_answers(path: str | os.PathLike, info_ids: Sequence[str]) -> pd.DataFrame:
    """Read an ``ImageID,ans`` file (an older submission, or a ground truth) in info.csv order.

    The file's rows may be in any order; it must hold exactly the ImageIDs of
    ``info_ids``, each once, with ``ans`` an integer in 0..17. Columns other
    than ``ImageID`` and ``ans`` are ignored.

    Returns:
        DataFrame ``ImageID`` (str), ``ans`` (int64), ``len(info_ids)`` rows, info.csv order.

    Raises:
        KfError: see :func:`validate_submission` (with ``ordered=False``).
    """
    df = read_csv(path, required=SUBMISSION_COLUMNS, dtype={"ImageID": str})[SUBMISSION_COLUMNS]
    validate_submission(df, info_ids, source=path, ordered=False)
    ids = pd.Index(_clean_ids(df["ImageID"]))
    ans = pd.to_numeric(df["ans"]).to_numpy().astype(np.int64)
    order = ids.get_indexer(pd.Index(list(info_ids), dtype=object))
    return pd.DataFrame({"ImageID": list(info_ids), "ans": ans[order]})


# --------------------------------------------------------------------------- checks

def _info_index(info_ids: Sequence[str]) -> pd.Index:
    idx = pd.Index(_clean_ids(list(info_ids)), dtype=object)
    if len(idx) == 0:
        raise KfError("info.csv: no ImageIDs")
    if not idx.is_unique:
        dup = idx[idx.duplicated()][0]
        raise KfError(f"info.csv: duplicate ImageID {dup!r}")
    return idx


def _check_ids(ids: np.ndarray, info: pd.Index, source: str) -> np.ndarray:
    """Check ``ids`` (file order) against ``info``; return, per info row, the row of ``ids`` holding it."""
    empty = ids == ""
    if empty.any():
        raise KfError(f"{source}: {_row(_first(empty))}: empty ImageID")
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        i = _first(dup)
        j = _first(ids == ids[i])
        raise KfError(f"{source}: {_row(i)}: duplicate ImageID {ids[i]!r} (first at {_row(j)})")
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
    info = _info_index(info_ids)
    if "ImageID" not in test_probs.columns:
        raise KfError(f"{source}: missing column ImageID (found: {', '.join(map(str, test_probs.columns))})")
    found = [str(c) for c in test_probs.columns if str(c).startswith("prob_")]
    if sorted(found) != sorted(PROB_COLUMNS):
        wrong = sorted(set(found) ^ set(PROB_COLUMNS), key=lambda c: (len(c), c))
        raise KfError(f"{source}: expected {N_CLASSES} probability columns prob_0..prob_{N_CLASSES - 1}, "
                      f"found {len(found)} (missing or unexpected: {', '.join(wrong) or 'duplicates'})")
    ids = _clean_ids(test_probs["ImageID"])
    order = _check_ids(ids, info, source)
    block = test_probs[PROB_COLUMNS]
    if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
        for c in PROB_COLUMNS:
            num = pd.to_numeric(block[c], errors="coerce")
            bad = (num.isna() & block[c].notna()).to_numpy()
            if bad.any():
                i = _first(bad)
                raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): {c} = {_show(block[c].iloc[i])} is not a number")
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
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        i = _first(off)
        raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): probabilities sum to {sums[i]:.6g}, expected 1 "
                      f"(within {SUM_TOLERANCE:g}); expected softmax probabilities, not logits")
    return probs[order]


def validate_submission(sub: pd.DataFrame, info_ids: Sequence[str], *, source: str | os.PathLike = "submission",
                        ordered: bool = True) -> None:
    """Check a competition frame: ``ImageID,ans``, one row per info.csv ImageID, ``ans`` an integer in 0..17.

    Args:
        sub: DataFrame with exactly the columns ``ImageID``, ``ans``.
        info_ids: the ``n_images`` ImageIDs of info.csv, in order.
        source: the file name used in messages.
        ordered: also require info.csv order (True for a submission to
            write; False to accept a file whose rows are in another order).

    Raises:
        KfError: other columns; an ImageID is empty, duplicated, not in
            info.csv, or missing; rows out of info.csv order (``ordered``);
            an ``ans`` that is not an integer in 0..17.
    """
    source = str(source)
    info = _info_index(info_ids)
    if list(map(str, sub.columns)) != SUBMISSION_COLUMNS:
        raise KfError(f"{source}: expected columns ImageID,ans, found {','.join(map(str, sub.columns))}")
    ids = _clean_ids(sub["ImageID"])
    order = _check_ids(ids, info, source)
    if ordered and not np.array_equal(order, np.arange(len(info))):
        i = _first(order != np.arange(len(info)))
        raise KfError(f"{source}: {_row(i)}: ImageID {ids[i]!r}, expected {info[i]!r} (rows must follow info.csv order)")
    raw = sub["ans"]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(vals) | (vals != np.round(vals)) | (vals < 0) | (vals > N_CLASSES - 1)
    if bad.any():
        i = _first(bad)
        raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): ans {_show(raw.iloc[i])} is not an integer in 0..{N_CLASSES - 1}")


# --------------------------------------------------------------------------- outputs

def make_submission(test_probs: pd.DataFrame, info_ids: Sequence[str], *, source: str | os.PathLike = "test.csv") -> pd.DataFrame:
    """Turn test probabilities into the competition frame.

    Args:
        test_probs: ``ImageID`` + ``prob_0..prob_17``, ``(n_images, 19)``, rows
            in any order (they are matched to info.csv by ImageID).
        info_ids: the ``n_images`` ImageIDs of info.csv, in order.
        source: the file name used in error messages.

    Returns:
        DataFrame ``ImageID`` (str), ``ans`` (int64, 0..17, argmax of the row;
        ties go to the lowest class), ``n_images`` rows in info.csv order.

    Raises:
        KfError: see :func:`validate_test_probs`.
    """
    probs = validate_test_probs(test_probs, info_ids, source=source)
    sub = pd.DataFrame({"ImageID": pd.Series(_clean_ids(list(info_ids)), dtype=object),
                        "ans": probs.argmax(axis=1).astype(np.int64)})
    validate_submission(sub, info_ids, source=source)
    return sub


def write_submission(sub: pd.DataFrame, path: str | os.PathLike, info_ids: Sequence[str], *, overwrite: bool = False) -> Path:
    """Validate ``sub`` and write it atomically as ``ImageID,ans``.

    The file appears complete or not at all (temporary file + rename, see
    :func:`kfold.io.atomic_write`); an existing file is kept unless
    ``overwrite``.

    Args:
        sub: the frame of :func:`make_submission`.
        path: destination CSV; its folder must exist.
        info_ids: the ImageIDs of info.csv, in order.
        overwrite: replace an existing file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        KfError: ``path`` is a directory, its folder is missing, or it exists
            and ``overwrite`` is False; ``sub`` fails :func:`validate_submission`.
            Nothing is written in these cases.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    validate_submission(sub, info_ids, source=path)
    out = pd.DataFrame({"ImageID": _clean_ids(sub["ImageID"]),
                        "ans": pd.to_numeric(sub["ans"]).to_numpy().astype(np.int64)})
    write_csv(out, path, overwrite=overwrite)
    return path
