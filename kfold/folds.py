"""Person-grouped, stratified K-fold: ``oof/folds.csv``.

All seven images of a person land in one fold (grouped by the train.csv
``path``, since ids can repeat), and folds are stratified on the person-level
gender x age-band class, with scikit-learn's ``StratifiedGroupKFold``.

``oof/folds.csv`` columns: ``image`` (path relative to the data root),
``person``, ``label`` (0..17), ``fold`` (0..K-1). Beside it ``oof/folds.json``
stores the settings and two fingerprints (``joblib.hash``):

* ``settings_fingerprint``: K, seed, the image list and labels. A request
  whose settings differ is refused instead of silently reusing the file.
* ``folds_fingerprint``: the fold table itself. Every run records it, and
  ``kf ensemble`` refuses runs whose folds differ.
"""
from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .io import KfError, read_csv, read_json, stage_lock, write_csv, write_json
from .stagefiles import read_keys

FOLDS_CSV = "folds.csv"
FOLDS_JSON = "folds.json"


def make_folds(images: pd.DataFrame, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each image a fold, grouped by person, stratified by gender x age band.

    Args:
        images: one row per image with ``image``, ``person``, ``gender``,
            ``age_band`` and ``label`` columns (see :func:`kfold.data.read_train`).
        k: number of folds (>= 2, at most the number of people).
        seed: ``random_state`` of the shuffled split.

    Returns:
        DataFrame ``image, person, label, fold`` in the order of ``images``.

    Raises:
        KfError: ``k`` is below 2 or above the number of people.
    """
    n_people = images["person"].nunique()
    if k < 2 or k > n_people:
        raise KfError(f"--k {k}: need 2 <= K <= number of people ({n_people})")
    strat = (images["gender"] * 3 + images["age_band"]).to_numpy()
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(images), -1, dtype=np.int64)
    for f, (_, va) in enumerate(cv.split(np.zeros(len(images)), strat, groups=images["person"].to_numpy())):
        fold[va] = f
    return pd.DataFrame({"image": images["image"].to_numpy(), "person": images["person"].to_numpy(),
                         "label": images["label"].to_numpy(), "fold": fold})


def settings_fingerprint(images: pd.DataFrame, k: int, seed: int) -> str:
    """``joblib.hash`` of what determines the folds: K, seed, images, persons and labels."""
    return joblib.hash([int(k), int(seed), images["image"].tolist(), images["person"].tolist(),
                        images["label"].astype(int).tolist()])


def folds_fingerprint(folds: pd.DataFrame) -> str:
    """``joblib.hash`` of the fold table (image, person, label, fold)."""
    return joblib.hash([folds[c].tolist() for c in ("image", "person", "label")] + [folds["fold"].astype(int).tolist()])


def ensure_folds(images: pd.DataFrame, oof_dir: str | Path, k: int = 5, seed: int = 42,
                 force: bool = False) -> tuple[pd.DataFrame, dict, bool]:
    """Load ``oof/folds.csv`` when it matches these settings, else write it.

    Returns:
        ``(folds, meta, reused)``: the fold table, the ``folds.json`` content and
        whether an existing file was reused.

    Raises:
        KfError: a folds file exists for other settings (other K, seed, data or
            corrections) and ``force`` is False; or the files are damaged.

    The check and the write hold :func:`kfold.io.stage_lock` on ``folds.csv``:
    concurrent calls behave as if run one after the other.
    """
    oof_dir = Path(oof_dir)
    oof_dir.mkdir(parents=True, exist_ok=True)
    csv, meta_path = oof_dir / FOLDS_CSV, oof_dir / FOLDS_JSON
    want = settings_fingerprint(images, k, seed)
    with stage_lock(csv):  # two kf train/folds at once: the later one reads what the first wrote
        return _ensure_folds(images, oof_dir, k, seed, force, want)


def _ensure_folds(images: pd.DataFrame, oof_dir: Path, k: int, seed: int, force: bool, want: str) -> tuple[pd.DataFrame, dict, bool]:
    csv, meta_path = oof_dir / FOLDS_CSV, oof_dir / FOLDS_JSON
    if csv.exists() and not force:
        meta = read_json(meta_path)
        if meta.get("settings_fingerprint") != want:
            raise KfError(
                f"{csv}: made with other settings (K={meta.get('k')}, seed={meta.get('seed')}, "
                f"{meta.get('n_images')} images) than asked (K={k}, seed={seed}, {len(images)} images, "
                "or other labels/corrections); use another --oof folder, or --force to rewrite it "
                "(runs trained on the old folds can then not be ensembled with new ones)")
        folds = load_folds(oof_dir)
        return folds, meta, True
    folds = make_folds(images, k, seed)
    meta = {"k": int(k), "seed": int(seed), "n_images": len(folds), "n_people": int(folds.person.nunique()),
            "settings_fingerprint": want, "folds_fingerprint": folds_fingerprint(folds)}
    write_csv(folds, csv)
    write_json(meta, meta_path)
    return folds, meta, False


def load_folds(oof_dir: str | Path) -> pd.DataFrame:
    """Read and check ``oof/folds.csv`` against the fingerprint in ``folds.json``.

    Raises:
        KfError: missing files, a fold or label that is not a whole number
            (naming the row), or the table does not match its fingerprint
            (edited or damaged).
    """
    oof_dir = Path(oof_dir)
    csv = oof_dir / FOLDS_CSV
    folds = read_csv(csv, required=["image", "person", "label", "fold"], dtype={"person": str, "image": str})
    keys = read_keys(csv, folds)  # fold and label as int64, 1.0 read as 1
    folds["fold"], folds["label"] = keys["fold"], keys["label"]
    meta = read_json(oof_dir / FOLDS_JSON)
    if folds_fingerprint(folds) != meta.get("folds_fingerprint"):
        raise KfError(f"{csv}: content does not match folds_fingerprint in {oof_dir / FOLDS_JSON} (edited or damaged); rerun kf folds --force")
    return folds


def stratification_report(folds: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Share (%) of each gender x age-band class per fold and overall, people counted once.

    Returns:
        DataFrame indexed by fold (plus ``all``) with one column per class
        ``g<gender>a<band>`` and a ``max_dev_pp`` column: the largest absolute
        deviation from the overall share in percentage points.
    """
    per = images.assign(fold=folds["fold"].to_numpy()).drop_duplicates("person")
    cls = "g" + per["gender"].astype(str) + "a" + per["age_band"].astype(str)
    tab = pd.crosstab(per["fold"], cls, normalize="index") * 100
    overall = cls.value_counts(normalize=True).reindex(tab.columns).fillna(0) * 100
    tab["max_dev_pp"] = (tab[overall.index] - overall).abs().max(axis=1)
    tab.loc["all"] = list(overall) + [0.0]
    return tab.round(2)
