"""Reader for the competition layout: ``train/train.csv`` + ``train/images/<path>/`` and ``eval/``.

Layout (the 2021 Boostcamp face-mask competition)::

    <root>/train/train.csv            id,gender,race,age,path
    <root>/train/images/<path>/       mask1..mask5, incorrect_mask, normal  (kfold.images.IMAGE_EXTENSIONS, any case)
    <root>/eval/info.csv              ImageID,ans
    <root>/eval/images/<ImageID>

What stops a run (``KfError``, one line naming the file and row) and what is
only a warning (the thing is skipped, the count is reported) is listed in
``docs/data.md``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import labels as L
from .images import extensions_text, is_image_name
from .io import KfError, ParamError, read_csv
from .stagefiles import check_unique_ids, clean_ids

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["id", "gender", "race", "age", "path"]
CORRECTION_FIELDS = ("gender", "age", "mask-swap")


@dataclass
class ReadReport:
    """What the reader skipped or changed, for the user's summary."""

    warnings: list[str] = field(default_factory=list)
    junk_skipped: int = 0
    corrections_applied: int = 0

    def summary(self) -> str:
        return (f"{len(self.warnings)} warning(s), {self.junk_skipped} junk file(s) skipped, "
                f"{self.corrections_applied} label correction(s) applied")


def _row(i: int) -> str:
    """Human row number of DataFrame index ``i`` (line 1 is the header)."""
    return f"row {i + 2}"


def _is_junk(name: str) -> bool:
    # macOS resource forks (._x.jpg), .DS_Store, .ipynb_checkpoints and any hidden entry
    return name.startswith(".")


def read_people(root: str | Path) -> pd.DataFrame:
    """Read and validate ``train/train.csv``: one row per person.

    Returns:
        DataFrame with columns ``id`` (str), ``gender`` (``"male"``/``"female"``),
        ``race`` (str), ``age`` (float, years), ``path`` (str, the person key).

    Raises:
        KfError: missing file or column, empty table, duplicate or empty path,
            unknown gender, non-numeric, negative or missing age.
    """
    csv = Path(root) / "train" / "train.csv"
    df = read_csv(csv, required=TRAIN_COLUMNS, dtype=str, keep_default_na=False)
    if df.empty:
        raise KfError(f"{csv}: no people (empty table)")
    df = df[TRAIN_COLUMNS].copy()
    for c in TRAIN_COLUMNS:
        df[c] = df[c].astype(str).str.strip()
    df["gender"] = df["gender"].str.lower()
    ages = []
    for i, r in df.iterrows():
        if not r.path:
            raise KfError(f"{csv}: {_row(i)}: empty path")
        if r.gender not in L.GENDER_CODE:
            raise KfError(f"{csv}: {_row(i)} (path {r.path}): unknown gender {r.gender!r}, expected male or female")
        try:
            age = float(r.age)
        except ValueError:
            raise KfError(f"{csv}: {_row(i)} (path {r.path}): age {r.age!r} is not a number") from None
        if not math.isfinite(age) or age < 0:
            raise KfError(f"{csv}: {_row(i)} (path {r.path}): age {r.age!r} must be a non-negative number")
        ages.append(age)
    df["age"] = ages
    dup = df["path"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise KfError(f"{csv}: {_row(i)}: duplicate path {df.path.iloc[i]!r} (each person folder must appear once)")
    return df.reset_index(drop=True)


def read_corrections(path: str | Path, people: pd.DataFrame) -> pd.DataFrame:
    """Read a label-corrections CSV: ``path,field,value``.

    * ``gender``: value ``male`` or ``female`` (the person's gender is replaced)
    * ``age``: value in years
    * ``mask-swap``: value ``stemA:stemB`` (default ``incorrect_mask:normal``): the
      two images' mask labels are exchanged for that person

    Raises:
        KfError: unknown person path, field or value, naming the row.
    """
    path = Path(path)
    df = read_csv(path, required=["path", "field", "value"], dtype=str, keep_default_na=False)
    known = set(people["path"])
    for c in ("path", "field", "value"):
        df[c] = df[c].astype(str).str.strip()
    for i, r in df.iterrows():
        if r.path not in known:
            raise KfError(f"{path}: {_row(i)}: unknown person path {r.path!r}")
        if r.field not in CORRECTION_FIELDS:
            raise KfError(f"{path}: {_row(i)}: unknown field {r.field!r}, expected one of {', '.join(CORRECTION_FIELDS)}")
        if r.field == "gender" and r.value.lower() not in L.GENDER_CODE:
            raise KfError(f"{path}: {_row(i)}: gender value {r.value!r}, expected male or female")
        if r.field == "age":
            try:
                ok = float(r.value) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise KfError(f"{path}: {_row(i)}: age value {r.value!r} must be a non-negative number")
        if r.field == "mask-swap":
            stems = (r.value or "incorrect_mask:normal").split(":")
            if len(stems) != 2 or any(s not in L.MASK_OF_STEM for s in stems) or stems[0] == stems[1]:
                raise KfError(f"{path}: {_row(i)}: mask-swap value {r.value!r}, expected two image names like incorrect_mask:normal")
    return df


def _scan_person(folder: Path, person: str, csv: Path, report: ReadReport) -> dict[str, str]:
    """Map image stem -> file name for one person folder."""
    if not folder.is_dir():
        raise KfError(f"{csv}: person {person!r}: folder {folder} not found")
    found: dict[str, str] = {}
    skipped: dict[str, str] = {}  # stem -> a skipped file of that name (mask1.gif), for the error
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if _is_junk(entry.name):
            report.junk_skipped += 1
            continue
        stem = entry.stem
        if entry.is_dir() or stem not in L.MASK_OF_STEM or not is_image_name(entry.name):
            report.warnings.append(f"{entry}: unexpected file, skipped")
            skipped.setdefault(stem, entry.name)
            continue
        if stem in found:
            raise KfError(f"{folder}: two files for {stem}: {found[stem]} and {entry.name}")
        found[stem] = entry.name
    missing = [s for s in L.IMAGE_STEMS if s not in found]
    if missing:
        near = [skipped[s] for s in missing if s in skipped]
        hint = f" ({', '.join(near)} skipped: an image must be {extensions_text()})" if near else ""
        raise KfError(f"{folder}: missing image(s) {', '.join(missing)} for person {person!r}{hint}")
    return found


def read_train(root: str | Path, age_cuts: Sequence[float] = L.DEFAULT_AGE_CUTS,
               corrections: str | Path | None = None) -> tuple[pd.DataFrame, ReadReport]:
    """Read the training set: one row per image, labels encoded.

    Args:
        root: competition folder holding ``train/`` and ``eval/``.
        age_cuts: ``(young_upper, old_lower)`` age band cut-offs in years.
        corrections: optional label-corrections CSV (see :func:`read_corrections`),
            applied before anything else.

    Returns:
        ``(images, report)``. ``images`` has one row per image, in train.csv
        order then ``mask1..mask5, incorrect_mask, normal``, with columns
        ``image`` (path relative to ``root``), ``person`` (train.csv ``path``),
        ``id``, ``gender`` (0/1), ``age`` (years), ``age_band`` (0/1/2),
        ``mask`` (0/1/2), ``stem`` and ``label`` (0..17, int64).

    Raises:
        KfError: see :func:`read_people`, :func:`read_corrections`; a person
            folder is missing, lacks an image or has two files for one image.
    """
    root = Path(root)
    csv = root / "train" / "train.csv"
    if not root.is_dir():
        raise ParamError(f"{root}: data folder not found (pass {{root}} or set KF_DATA)", "root")
    people = read_people(root)
    report = ReadReport()
    # copies: under pandas copy-on-write to_numpy() returns read-only views, and corrections write into these
    gender = people["gender"].map(L.GENDER_CODE).to_numpy(dtype=np.int64, copy=True)
    age = people["age"].to_numpy(dtype=float, copy=True)
    swaps: dict[str, list[tuple[str, str]]] = {}
    if corrections is not None:
        corr = read_corrections(corrections, people)
        pos = {p: i for i, p in enumerate(people["path"])}
        for r in corr.itertuples():
            i = pos[r.path]
            if r.field == "gender":
                new = L.GENDER_CODE[r.value.lower()]
                report.corrections_applied += int(gender[i] != new)
                gender[i] = new
            elif r.field == "age":
                report.corrections_applied += int(age[i] != float(r.value))
                age[i] = float(r.value)
            else:
                a, b = (r.value or "incorrect_mask:normal").split(":")
                swaps.setdefault(r.path, []).append((a, b))
                report.corrections_applied += 1
    band = L.age_band(age, age_cuts)
    rows = []
    img_dir = root / "train" / "images"
    for i, person in enumerate(people["path"]):
        files = _scan_person(img_dir / person, person, csv, report)
        mask_of = dict(L.MASK_OF_STEM)
        for a, b in swaps.get(person, []):
            mask_of[a], mask_of[b] = mask_of[b], mask_of[a]
        for stem in L.IMAGE_STEMS:
            rows.append((f"train/images/{person}/{files[stem]}", person, people.at[i, "id"],
                         int(gender[i]), float(age[i]), int(band[i]), mask_of[stem], stem))
    df = pd.DataFrame(rows, columns=["image", "person", "id", "gender", "age", "age_band", "mask", "stem"])
    df["label"] = L.encode(df["mask"].to_numpy(), df["gender"].to_numpy(), df["age_band"].to_numpy()).astype(np.int64)
    for w in report.warnings:
        log.warning(w)
    return df, report


def read_eval(root: str | Path) -> pd.DataFrame:
    """Read ``eval/info.csv``: one row per test image, in info.csv order.

    Returns:
        DataFrame with ``ImageID`` (str) and ``image`` (path relative to ``root``).

    Raises:
        KfError: missing file or column, empty table, duplicate ImageID, an
            ImageID whose image is not in ``eval/images/``, or one that is not
            an image kf reads (:func:`kfold.images.is_image_name`).
    """
    root = Path(root)
    csv = root / "eval" / "info.csv"
    df = read_csv(csv, required=["ImageID"], dtype=str, keep_default_na=False)
    if df.empty:
        raise KfError(f"{csv}: no images (empty table)")
    ids = df["ImageID"].astype(str).str.strip()
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise KfError(f"{csv}: {_row(i)}: duplicate ImageID {ids.iloc[i]!r}")
    img_dir = root / "eval" / "images"
    present = {p.name for p in img_dir.iterdir()} if img_dir.is_dir() else set()
    for i, name in enumerate(ids):
        if not name:
            raise KfError(f"{csv}: {_row(i)}: empty ImageID")
        if name not in present:
            raise KfError(f"{csv}: {_row(i)}: image {img_dir / name} not found")
        if not is_image_name(name):
            raise KfError(f"{csv}: {_row(i)}: ImageID {name!r} is not an image kf reads (an image must be {extensions_text()})")
    return pd.DataFrame({"ImageID": ids.to_numpy(), "image": [f"eval/images/{n}" for n in ids]})


@dataclass
class DataBundle:
    """What every run of one ``kf train`` call shares: data root, folds and test rows."""

    root: Path
    folds: pd.DataFrame       # image, person, label, fold (folds.csv order)
    folds_meta: dict          # folds.json
    test: pd.DataFrame        # ImageID, image (info.csv order)
    data_settings: dict       # root, age_cuts, corrections
    holdout: pd.DataFrame | None = None  # image, person, label (holdout.csv order); None or empty: no holdout
    ages: np.ndarray | None = None  # age in years per folds row (train_age_cuts, age_head: years)

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None and len(self.holdout) > 0


def load_data(root: str | Path, oof_dir: str | Path, age_cuts=(30, 60), corrections=None, k: int = 5,
              seed: int = 42, force_folds: bool = False, holdout: float = 0.0) -> DataBundle:
    """Read the competition folder and ensure ``folds.csv`` (and ``holdout.csv``): what :func:`kfold.train.train_runs` needs.

    ``holdout``: share of the people withheld from every fold (see :func:`kfold.folds.ensure_folds`).

    Raises:
        KfError: see :func:`read_train`, :func:`read_eval`, :func:`kfold.folds.ensure_folds`.
    """
    from .folds import ensure_folds, load_holdout  # sklearn: only when folds are made

    images, _ = read_train(root, age_cuts, corrections)
    test = read_eval(root)
    folds, meta, _ = ensure_folds(images, oof_dir, k, seed, force=force_folds, holdout=holdout)
    settings = {"root": str(Path(root).resolve()), "age_cuts": [float(a) for a in age_cuts],
                "corrections": str(Path(corrections).resolve()) if corrections else None}
    ages = images.set_index("image")["age"].reindex(folds["image"]).to_numpy(np.float32)
    return DataBundle(Path(root), folds, meta, test, settings, load_holdout(oof_dir, meta), ages)


def read_info_ids(data: str | Path) -> list[str]:
    """Read the ImageIDs of ``<data>/eval/info.csv``, in file order.

    Only the CSV is read (the images are not needed to submit or import;
    ``kf train`` checked them with :func:`read_eval`).

    Returns:
        list of str, length ``n_images``, stripped, unique, non-empty.

    Raises:
        KfError: the folder or file is missing, the table is empty or lacks
            ``ImageID``, an ImageID is empty or appears twice (naming the row).
    """
    data = Path(data)
    if not data.is_dir():
        raise ParamError(f"{data}: data folder not found (pass {{data}} or set KF_DATA)", "data")
    csv = data / "eval" / "info.csv"
    df = read_csv(csv, required=["ImageID"], dtype={"ImageID": str}, keep_default_na=False)
    if df.empty:
        raise KfError(f"{csv}: no images (empty table)")
    ids = clean_ids(df["ImageID"])
    check_unique_ids(ids, csv)
    return ids.tolist()
