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

from kfold.data import read_info_ids
from kfold.io import KfError, check_writable, read_csv, write_csv
from kfold.labels import N_CLASSES
from kfold.runrecord import list_sources, resolve_test_csv
from kfold.stagefiles import PROB_COLS, _row, _val, clean_ids, info_index, match_info_ids, validate_test_probs

PROB_COLUMNS = PROB_COLS  # the one definition (kfold/stagefiles.py)
SUBMISSION_COLUMNS = ["ImageID", "ans"]
#: what ``--from`` accepts and how it is found: :func:`kfold.runrecord.resolve_test_csv`
resolve_source = resolve_test_csv

__all__ = ["PROB_COLUMNS", "SUBMISSION_COLUMNS", "list_sources", "make_submission", "read_answers", "read_info_ids",
           "read_test_probs", "resolve_source", "validate_submission", "validate_test_probs", "write_submission"]


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
    ids = pd.Index(clean_ids(df["ImageID"]))
    ans = pd.to_numeric(df["ans"]).to_numpy().astype(np.int64)
    order = ids.get_indexer(pd.Index(list(info_ids), dtype=object))
    return pd.DataFrame({"ImageID": list(info_ids), "ans": ans[order]})


# --------------------------------------------------------------------------- checks

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
    info = info_index(info_ids)
    if list(map(str, sub.columns)) != SUBMISSION_COLUMNS:
        raise KfError(f"{source}: expected columns ImageID,ans, found {','.join(map(str, sub.columns))}")
    ids = clean_ids(sub["ImageID"])
    order = match_info_ids(ids, info, source)
    if ordered and not np.array_equal(order, np.arange(len(info))):
        i = int(np.flatnonzero(order != np.arange(len(info)))[0])
        raise KfError(f"{source}: {_row(i)}: ImageID {ids[i]!r}, expected {info[i]!r} (rows must follow info.csv order)")
    raw = sub["ans"]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(vals) | (vals != np.round(vals)) | (vals < 0) | (vals > N_CLASSES - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise KfError(f"{source}: {_row(i)} (ImageID {ids[i]!r}): ans {_val(raw.iloc[i])} is not an integer in 0..{N_CLASSES - 1}")


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
    sub = pd.DataFrame({"ImageID": pd.Series(clean_ids(list(info_ids)), dtype=object),
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
    out = pd.DataFrame({"ImageID": clean_ids(sub["ImageID"]),
                        "ans": pd.to_numeric(sub["ans"]).to_numpy().astype(np.int64)})
    write_csv(out, path, overwrite=overwrite)
    return path
