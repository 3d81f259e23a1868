"""Predictions made elsewhere as kf runs: ``kf import`` (``kf export``, what the teammate gets, is :mod:`ensemble.export`).

A teammate's notebook (Keras, Lightning, a Kaggle kernel) joins the ensemble
through files only. ``kf export`` writes what the teammate needs to predict
on kf's folds (``folds.csv`` with the image keys, the class encoding, the
test ImageIDs and a short ``SPEC.md``); ``kf import`` checks what comes back
and writes a run folder ``<oof>/<name>/`` (``oof.csv``, ``test.csv``,
``run.json`` with ``kind: "external"``) that every stage needing only
probabilities (``kf ensemble``, ``kf submit``, ``kf report``) treats like a
trained run. ``kf predict`` and ``kf ensemble --tta`` re-run fold
checkpoints, which an import does not have: they refuse it in one line
(:func:`refuse_external`).

What an import accepts (every refusal is one :class:`kfold.io.KfError` line
naming the file and the row or column, and nothing is written):

* OOF: one row per ``folds.csv`` image, rows in any order, columns ``image``
  (the folds.csv key, or any path ending with it: an absolute path under the
  data folder, a Kaggle input path), ``fold`` (must equal folds.csv's: OOF
  made on other folds would leak into stacking, bias tuning and the nested
  estimate), optional ``label`` (checked), and 18 class columns;
* test: one row per ``eval/info.csv`` ImageID, any order (a path ending with
  the ImageID is accepted too); one file, or one per fold (averaged);
* class columns ``prob_0..prob_17`` or any 18 names (``--columns``), holding
  softmax probabilities (rows summing to 1 within 1e-3) or logits
  (``--logits``: softmax applied, recorded in ``run.json``).
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import kfold
from kfold.data import read_info_ids
from kfold.folds import FOLDS_CSV, FOLDS_JSON, load_folds
from kfold.io import KfError, ParamError, read_csv, read_json
from kfold.labels import N_CLASSES
from kfold.metrics import macro_f1
from kfold.runrecord import NOT_RUNS, RUN_JSON, RunRecord, discover_runs, read_run_json, run_json_path, write_run_json
from kfold.stagefiles import KEY_COLS, PROB_COLS, SUM_TOL, _row, _val, check_probs, validate_test_probs, write_probs_csv

from .base import softmax
from .methods import _NAME_RE

EXTERNAL = "external"
#: the files of an imported run; run.json is written last
RUN_FILES = ("oof.csv", "test.csv", RUN_JSON)
_NA = ["", "nan", "NaN", "NA"]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (``hashlib``), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_columns(spec: str | None) -> list[str]:
    """The 18 class columns of ``--columns``, in class order.

    Args:
        spec: None for ``prob_0..prob_17``; 18 comma-separated names
            (``p0,p1,...``); or one name with ``{}`` standing for the class
            number (``logit_{}``, ``{}`` for pandas' default ``0..17``).

    Raises:
        ParamError: not 18 names, or a name given twice.
    """
    if spec is None:
        return list(PROB_COLS)
    if "{}" in spec and "," not in spec:
        return [spec.replace("{}", str(c)) for c in range(N_CLASSES)]
    cols = [c.strip() for c in spec.split(",")]
    if len(cols) != N_CLASSES or any(not c for c in cols):
        raise ParamError(f"{{columns}}: {len(cols)} names, expected {N_CLASSES} (one per class, in class order), "
                         "or one name with {} for the class number, e.g. logit_{}", "columns")
    if len(set(cols)) != len(cols):
        raise ParamError(f"{{columns}}: {next(c for c in cols if cols.count(c) > 1)!r} is named twice", "columns")
    return cols


def match_keys(keys: Sequence[str], known: Sequence[str]) -> np.ndarray:
    """Position in ``known`` of each key, -1 where none matches.

    A key matches a known entry when equal to it or when it ends with
    ``/<entry>``: ``/kaggle/input/mask/train/images/0001_x/mask1.jpg`` is the
    folds.csv image ``train/images/0001_x/mask1.jpg``, ``eval/images/ab.jpg``
    the ImageID ``ab.jpg``. Backslashes count as ``/``; surrounding spaces
    are ignored. The longest matching tail wins.

    Args:
        keys: ``(n,)`` keys as written in a file.
        known: ``(m,)`` unique reference keys (folds.csv images or ImageIDs).

    Returns:
        ``(n,)`` int64 positions into ``known``.
    """
    where = {k: i for i, k in enumerate(known)}
    out = np.full(len(keys), -1, dtype=np.int64)
    for i, key in enumerate(keys):
        key = str(key).strip().replace("\\", "/")
        parts = key.split("/")
        for s in range(len(parts)):
            j = where.get("/".join(parts[s:]))
            if j is not None:
                out[i] = j
                break
    return out


def read_class_block(path: str | Path, key: str, columns: Sequence[str], logits: bool,
                     required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a teammate's file: its key columns and 18 class columns as probabilities, in file order.

    Args:
        path: the CSV.
        key: ``image`` (OOF) or ``ImageID`` (test), named in messages.
        columns: the 18 class columns in class order (:func:`parse_columns`).
        logits: the columns hold logits; a row-wise softmax turns them into probabilities.
        required: other columns the file must have (``fold``).

    Returns:
        The file's columns other than the class columns, then ``prob_0..prob_17``
        (float64; ``row N`` of a message is the file's line, the header being line 1).

    Raises:
        KfError: the file is missing or unreadable; a column is missing (for
            ``prob_*`` names: more or fewer than 18); a value is not a finite
            number; ``logits`` for columns that already hold probabilities.
    """
    path = Path(path)
    df = read_csv(path, required=[key, *required], dtype={key: str, "person": str}, keep_default_na=False,
                  na_values={c: _NA for c in columns})
    if list(columns) == PROB_COLS:
        got = [c for c in df.columns if c.startswith("prob_")]
        if sorted(got) != sorted(PROB_COLS):
            raise ParamError(f"{path}: {len(got)} prob_ columns, expected {N_CLASSES} (prob_0..prob_{N_CLASSES - 1}, "
                             "one per class in kf's encoding; name other columns with {columns})", "columns")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ParamError(f"{path}: no column {missing[0]!r} of {{columns}} (found: {', '.join(df.columns)})", "columns")
    vals = df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise KfError(f"{path}: {_row(i)} ({key} {_val(df[key].iloc[i])}): {columns[j]} is {_val(df[columns[j]].iloc[i])}, "
                      f"expected a finite {'logit' if logits else 'probability'}")
    if logits:
        if ((vals >= 0) & (vals <= 1)).all() and (np.abs(vals.sum(axis=1) - 1) <= SUM_TOL).all():
            raise ParamError(f"{path}: {{logits}}, but every row of {columns[0]}..{columns[-1]} is in [0, 1] and sums to 1: "
                             "these are probabilities (a softmax would flatten them); leave out {logits}", "logits")
        vals = softmax(vals)
    rest = df[[c for c in df.columns if c not in columns and not c.startswith("prob_")]]
    return pd.concat([rest.reset_index(drop=True), pd.DataFrame(vals, columns=PROB_COLS)], axis=1)


def _int_column(df: pd.DataFrame, col: str, path: Path, key: str) -> np.ndarray:
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(vals) | (vals != np.round(vals))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise KfError(f"{path}: {_row(i)} ({key} {_val(df[key].iloc[i])}): {col} {_val(df[col].iloc[i])} is not an integer")
    return vals.astype(np.int64)


def align_oof(df: pd.DataFrame, path: str | Path, folds: pd.DataFrame, folds_csv: str | Path) -> np.ndarray:
    """Check a teammate's OOF rows against ``folds.csv`` and return its probabilities in folds.csv order.

    Args:
        df: :func:`read_class_block` of the OOF file (``image``, ``fold``, optional ``label``, ``prob_*``).
        path: the OOF file, for messages.
        folds: ``(n_images, 4)`` the fold table (:func:`kfold.folds.load_folds`).
        folds_csv: its path, for messages.

    Returns:
        ``(n_images, 18)`` float64 probabilities, row ``i`` for folds.csv row ``i``.

    Raises:
        KfError: an image not in folds.csv, an image twice, a folds.csv image
            missing, a fold (or label) other than folds.csv's, a probability
            outside [0, 1] or a row not summing to 1 within 1e-3. The first
            offending row is named.
    """
    path = Path(path)
    images = df["image"].astype(str)
    pos = match_keys(images, folds["image"].tolist())
    extra = pos < 0
    if extra.any():
        i = int(np.flatnonzero(extra)[0])
        raise KfError(f"{path}: {_row(i)}: image {images.iloc[i]!r} is not in {folds_csv} ({int(extra.sum())} such row(s); "
                      "expected the folds.csv key, or a path ending with it)")
    dup = pd.Series(pos).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(pos == pos[i])[0])
        raise KfError(f"{path}: {_row(i)}: image {images.iloc[i]!r} appears twice (first at {_row(first)}); "
                      "expected one OOF prediction per image")
    seen = np.zeros(len(folds), dtype=bool)
    seen[pos] = True
    if not seen.all():
        m = int(np.flatnonzero(~seen)[0])
        raise KfError(f"{path}: {int((~seen).sum())} image(s) of {folds_csv} missing, e.g. {folds['image'].iloc[m]!r} "
                      f"({folds_csv} {_row(m)}); expected one OOF prediction per train image")
    for col, what in (("fold", "OOF predicted with other folds would leak into stacking, bias tuning and the nested "
                               "estimate: train on the folds of kf export"),
                      ("label", "other labels (age cuts, corrections or class encoding): see kf export's classes.csv, "
                                "or leave the label column out")):
        if col not in df.columns:
            continue
        got = _int_column(df, col, path, "image")
        want = folds[col].to_numpy(np.int64)[pos]
        ne = got != want
        if ne.any():
            i = int(np.flatnonzero(ne)[0])
            raise KfError(f"{path}: {_row(i)} (image {images.iloc[i]!r}): {col} {got[i]}, but {folds_csv} {_row(int(pos[i]))} "
                          f"has {col} {want[i]}; {what}")
    probs = check_probs(df, path, "image")
    out = np.empty_like(probs)
    out[pos] = probs
    return out


def reference_test_ids(oof_dir: str | Path, data: str | Path | None) -> tuple[list[str], Path | None]:
    """The test ImageIDs every ``test.csv`` must list, in order, and where they come from.

    ``<data>/eval/info.csv`` when it exists, else the ``test.csv`` of the
    first finished run under ``oof_dir`` (as ``kf ensemble`` does without
    ``--data``), else ``([], None)``.

    Raises:
        KfError: info.csv is unreadable, empty or has duplicate ImageIDs.
    """
    info = Path(data) / "eval" / "info.csv" if data is not None else None
    if info is not None and info.is_file():
        return read_info_ids(data), info
    for name in discover_runs(oof_dir)[0] if Path(oof_dir).is_dir() else []:
        test = Path(oof_dir) / name / "test.csv"
        if test.is_file():
            return read_csv(test, required=["ImageID"], dtype={"ImageID": str}, usecols=["ImageID"])["ImageID"].tolist(), test
    return [], None


def read_test_files(paths: Sequence[str | Path], ref_ids: list[str], columns: Sequence[str], logits: bool,
                    k: int) -> np.ndarray:
    """Read one test file, or one per fold, and return the mean probabilities in ``ref_ids`` order.

    Args:
        paths: one file (already averaged over folds) or ``k`` files (one per fold, averaged here).
        ref_ids: ``(n_test,)`` ImageIDs in info.csv order (:func:`reference_test_ids`).
        columns, logits: as in :func:`read_class_block`.
        k: number of folds.

    Returns:
        ``(n_test, 18)`` float64 probabilities.

    Raises:
        KfError: neither 1 nor ``k`` files; an ImageID empty, twice, not in
            info.csv or missing; a bad value (see :func:`kfold.stagefiles.validate_test_probs`).
    """
    if len(paths) not in (1, k):
        raise ParamError(f"{{test_csvs}}: {len(paths)} files, expected 1 (averaged over folds) or {k} (one per fold, "
                         "averaged here)", "test_csvs")
    out = []
    for p in paths:
        df = read_class_block(p, "ImageID", columns, logits)
        ids = df["ImageID"].astype(str).str.strip()
        pos = match_keys(ids, ref_ids)
        df["ImageID"] = [ref_ids[j] if j >= 0 else v for v, j in zip(ids, pos)]
        out.append(validate_test_probs(df, ref_ids, source=p))
    return np.mean(out, axis=0)


def recorded_data(oof_dir: str | Path) -> dict:
    """The ``data`` block (root, age_cuts) of the first run under ``oof_dir`` that records age cuts, else ``{}``."""
    for name in discover_runs(oof_dir)[0]:
        data = read_run_json(Path(oof_dir) / name).get("data") or {}
        if data.get("age_cuts"):
            return data
    return {}


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ParamError(f"{out}: exists and is not a folder; choose another {{name}}", "name")
    rj = read_run_json(out) if run_json_path(out).is_file() else None
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in RUN_FILES)
    if others or (rj is not None and rj.get("kind") != EXTERNAL):
        what = f"a {rj.get('kind') or 'run'}" if rj is not None else f"a run in progress ({others[0]})"
        raise ParamError(f"{out}: holds {what}, not an earlier import; choose another {{name}}", "name")
    if not overwrite and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ParamError(f"{out}: an earlier import exists (pass {{overwrite}} to replace it)", "overwrite")


def import_run(oof_dir: str | Path, name: str, oof_csv: str | Path, test_csvs: Sequence[str | Path],
               data: str | Path | None = None, logits: bool = False, columns: str | None = None,
               who: str | None = None, where: str | None = None, overwrite: bool = False) -> dict:
    """Check a teammate's OOF and test predictions and write them as run ``<oof_dir>/<name>/``.

    Every check runs before anything is written; then ``oof.csv`` (folds.csv
    order), ``test.csv`` (info.csv order) and last ``run.json`` are written
    atomically (a folder without ``run.json`` is not a run).

    Args:
        oof_dir: the ``--oof`` folder with ``folds.csv`` / ``folds.json``.
        name: the run name (letters, digits, ``_ . + -``).
        oof_csv: the OOF file (see the module docstring).
        test_csvs: one test file, or one per fold.
        data: the competition folder; its ``eval/info.csv`` gives the ImageIDs
            (without it, the first finished run's ``test.csv``).
        logits: the class columns hold logits (softmax applied).
        columns: ``--columns`` (:func:`parse_columns`).
        who, where: free text recorded in ``run.json``.
        overwrite: replace an earlier import of the same name (a trained run is never replaced).

    Returns:
        The ``run.json`` written: ``kind: "external"``, ``sources`` (path and
        SHA-256 of each file), ``imported_at`` (UTC, ISO 8601), ``who``,
        ``where``, ``softmax_applied``, ``columns``, ``test_files``,
        ``folds_fingerprint``, ``k``, ``oof_macro_f1``, ``oof_accuracy``, ``finished``.

    Raises:
        KfError: a bad name or destination, no folds, no test ImageIDs to
            check against, or a bad file (see :func:`align_oof`, :func:`read_test_files`).
    """
    oof_dir = Path(oof_dir)
    if not _NAME_RE.match(name) or name in NOT_RUNS:
        raise ParamError(f"{{name}} {name!r}: use letters, digits and _ . + - only, not {', '.join(NOT_RUNS)} (it names "
                         "a folder under {oof_dir})", "name", "oof_dir")
    out = oof_dir / name
    _check_destination(out, overwrite)
    cols = parse_columns(columns)
    if not (oof_dir / FOLDS_CSV).is_file():
        raise ParamError(f"{oof_dir / FOLDS_CSV}: file not found; an import is checked against the folds its OOF rows "
                         "were predicted on (pass the {oof_dir} whose folds kf export gave the teammate, or make them "
                         "with kf folds and the same settings)", "oof_dir")
    folds = load_folds(oof_dir)
    meta = read_json(oof_dir / FOLDS_JSON)
    k = int(meta.get("k") or folds["fold"].nunique())
    oof_p = align_oof(read_class_block(oof_csv, "image", cols, logits, required=["fold"]), oof_csv, folds,
                      oof_dir / FOLDS_CSV)
    ref_ids, ref_src = reference_test_ids(oof_dir, data)
    if ref_src is None:
        raise ParamError(f"{Path(data or 'data') / 'eval' / 'info.csv'}: file not found, and no finished run under {oof_dir} "
                         "lists the test ImageIDs; pass {data}", "data")
    test_p = read_test_files(list(test_csvs), ref_ids, cols, logits, k)
    y = folds["label"].to_numpy(np.int64)
    pred = oof_p.argmax(axis=1)
    recorded = recorded_data(oof_dir)
    rj = RunRecord.external(
        name, who, where, imported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sources={"oof": {"path": str(Path(oof_csv).resolve()), "sha256": file_sha256(oof_csv)},
                 "test": [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in test_csvs]},
        softmax_applied=bool(logits), columns=cols if columns is not None else f"prob_0..prob_{N_CLASSES - 1}",
        test_files=len(test_csvs), test_ids_from=str(ref_src),
        data={"root": str(data) if ref_src.name == "info.csv" else recorded.get("root"), "age_cuts": recorded.get("age_cuts")},
        folds_fingerprint=meta["folds_fingerprint"], k=k, oof_macro_f1=macro_f1(y, pred),
        oof_accuracy=float((y == pred).mean()), versions={"kf": kfold.__version__})
    out.mkdir(exist_ok=True)
    run_json_path(out).unlink(missing_ok=True)  # while rewriting, the folder is not a finished run
    write_probs_csv(out / "oof.csv", folds[KEY_COLS].reset_index(drop=True), oof_p)
    write_probs_csv(out / "test.csv", pd.DataFrame({"ImageID": ref_ids}), test_p)
    write_run_json(rj, out)
    return rj.to_dict()


def external_members(run_dir: str | Path) -> list[tuple[str, dict]]:
    """The imported runs a run or ensemble depends on: ``[(name, run.json), ...]``, ``[]`` when none.

    A run with ``kind: "external"`` is itself; an ensemble (``ensemble/<name>``
    or ``ensemble/best``) is searched through its members (through the chosen
    run for a ``best`` holding a single run).
    """
    run_dir = Path(run_dir)
    rj = read_run_json(run_dir)
    if rj.kind == EXTERNAL:
        return [(run_dir.name, rj.to_dict())]
    if rj.kind != "ensemble":
        return []
    oof_dir = run_dir.parent.parent
    names = [rj["chosen"]] if rj.get("chosen") and rj.get("chosen_kind") == "run" else rj.members
    found = []
    for n in names:
        if run_json_path(oof_dir / n).is_file():
            found += [(n, m) for _, m in external_members(oof_dir / n)]
    return found


def refuse_external(run_dir: str | Path, action: str, hint: str) -> None:
    """Raise one line when ``run_dir`` is, or blends, an imported run, which has no model for ``action`` to re-run.

    Raises:
        KfError: ``<run_dir>: [its member NAME] was imported with kf import (...); <action> cannot re-run ...; <hint>``.
    """
    found = external_members(run_dir)
    if not found:
        return
    name, rj = found[0]
    by = ", ".join(str(v) for v in (rj.get("who"), rj.get("where")) if v)
    member = "" if read_run_json(run_dir).kind == EXTERNAL else f"its member {name} "
    raise KfError(f"{run_dir}: {member}was imported with kf import (predictions made elsewhere{': ' + by if by else ''}); "
                  f"{action} cannot re-run a model it does not have; {hint}")
