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

A local holdout (``--holdout 0.2``) withholds a stratified, person-grouped
share of the people from every fold: they are listed in ``oof/holdout.csv``
(``image, person, label``) instead of ``folds.csv``, never trained on,
validated on or used by any fit; ``kf train`` predicts them exactly as it
predicts the test set (mean of the K fold models, with TTA) into
``<run>/holdout.csv``, so their macro F1 is a private-leaderboard-like check
of every estimate (docs/ensemble.md).
"""
from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .io import KfError, ParamError, read_csv, read_json, write_csv, write_json
from .locks import stage_lock
from .stagefiles import read_keys

FOLDS_CSV = "folds.csv"
FOLDS_JSON = "folds.json"
HOLDOUT_CSV = "holdout.csv"
HOLDOUT_COLS = ["image", "person", "label"]


def make_holdout(images: pd.DataFrame, holdout: float, seed: int = 42) -> np.ndarray:
    """Choose the holdout people: a share ``holdout`` of the people, stratified by gender x age band.

    Uses scikit-learn's ``train_test_split`` on one row per person, stratified
    on the person-level ``gender * 3 + age_band`` class (unstratified when a
    class has fewer than 2 people), so all images of a person are on one side.

    Args:
        images: one row per image with ``person``, ``gender`` and ``age_band`` columns.
        holdout: share of the people withheld, ``0 < holdout < 1``.
        seed: ``random_state`` of the split.

    Returns:
        ``(n_images,)`` bool mask, True for the images of holdout people.

    Raises:
        ParamError: ``holdout`` outside (0, 1) (``holdout 1.5: expected a fraction ...``), or it leaves no
            person on one side.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < holdout < 1:
        raise ParamError(f"{{holdout}} {holdout:g}: expected a fraction of the people between 0 and 1 (e.g. 0.2)", "holdout")
    per = images.drop_duplicates("person")
    n_hold = int(round(holdout * len(per)))
    if n_hold < 1 or n_hold >= len(per):
        raise ParamError(f"{{holdout}} {holdout:g}: withholds {n_hold} of {len(per)} people; keep at least one on each side",
                         "holdout")
    strat = (per["gender"] * 3 + per["age_band"]).to_numpy()
    people = per["person"].to_numpy()
    try:
        _, held = train_test_split(people, test_size=n_hold, stratify=strat, random_state=seed)
    except ValueError:  # a class with a single person cannot be stratified
        _, held = train_test_split(people, test_size=n_hold, random_state=seed)
    return images["person"].isin(set(held)).to_numpy()


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
        ParamError: ``k`` is below 2 or above the number of people (``k 1: need 2 <= K <= ...``).
    """
    n_people = images["person"].nunique()
    if k < 2 or k > n_people:
        raise ParamError(f"{{k}} {k}: need 2 <= K <= number of people ({n_people})", "k")
    strat = (images["gender"] * 3 + images["age_band"]).to_numpy()
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(images), -1, dtype=np.int64)
    for f, (_, va) in enumerate(cv.split(np.zeros(len(images)), strat, groups=images["person"].to_numpy())):
        fold[va] = f
    moves = fill_empty_folds(fold, images["person"].to_numpy(), strat, k)
    out = pd.DataFrame({"image": images["image"].to_numpy(), "person": images["person"].to_numpy(),
                        "label": images["label"].to_numpy(), "fold": fold})
    out.attrs["repaired"] = moves
    return out


def fill_empty_folds(fold: np.ndarray, person: np.ndarray, strat: np.ndarray, k: int) -> list[dict]:
    """Give every fold 0..k-1 at least one person, in place, by moving people out of the fullest folds.

    scikit-learn's ``StratifiedGroupKFold`` can leave a fold empty when there
    are few people per class, even with people >= K (scikit-learn issue
    34828). For each empty fold, in order, one person moves there from the
    fold with the most people (ties: the lowest fold number): of that fold's
    people, one of its most common gender x age-band class, the last by name.
    Deterministic, so the same data and seed give the same folds.

    Args:
        fold: ``(n_images,)`` fold per image, changed in place.
        person: ``(n_images,)`` person of each image.
        strat: ``(n_images,)`` stratification class of each image.

    Returns:
        The moves, ``[{"person", "from_fold", "to_fold"}]`` (empty when no fold was empty).
    """
    import logging

    moves = []
    people = pd.DataFrame({"person": person, "strat": strat, "fold": fold}).drop_duplicates("person")
    for empty in range(k):
        if (people["fold"] == empty).any():
            continue
        donor = int(people.groupby("fold")["person"].count().sort_index().idxmax())
        mine = people[people["fold"] == donor]
        common = mine["strat"].value_counts().sort_index(kind="stable").idxmax()
        who = sorted(mine.loc[mine["strat"] == common, "person"])[-1]
        people.loc[people["person"] == who, "fold"] = empty
        fold[person == who] = empty
        moves.append({"person": str(who), "from_fold": donor, "to_fold": empty})
        logging.getLogger(__name__).warning(
            f"StratifiedGroupKFold left fold {empty} empty; moved person {who!r} there from fold {donor} "
            "(recorded as repaired in folds.json)")
    return moves


def settings_fingerprint(images: pd.DataFrame, k: int, seed: int, holdout: float = 0.0) -> str:
    """``joblib.hash`` of what determines the folds: K, seed, holdout fraction, images, persons and labels."""
    parts = [int(k), int(seed), images["image"].tolist(), images["person"].tolist(), images["label"].astype(int).tolist()]
    return joblib.hash(parts + [float(holdout)] if holdout else parts)


def folds_fingerprint(folds: pd.DataFrame) -> str:
    """``joblib.hash`` of the fold table (image, person, label, fold)."""
    return joblib.hash([folds[c].tolist() for c in ("image", "person", "label")] + [folds["fold"].astype(int).tolist()])


def ensure_folds(images: pd.DataFrame, oof_dir: str | Path, k: int = 5, seed: int = 42,
                 force: bool = False, holdout: float = 0.0) -> tuple[pd.DataFrame, dict, bool]:
    """Load ``oof/folds.csv`` when it matches these settings, else write it.

    With ``holdout`` > 0 a share of the people (:func:`make_holdout`, same
    ``seed``) is written to ``oof/holdout.csv`` and left out of the folds;
    ``folds.json`` records ``holdout``, ``n_holdout_people`` and
    ``holdout_fingerprint`` (read it back with :func:`load_holdout`).

    Returns:
        ``(folds, meta, reused)``: the fold table, the ``folds.json`` content and
        whether an existing file was reused.

    Raises:
        ParamError: a folds file exists for other settings (other K, seed, data or
            corrections) and ``force`` is False (the message names ``oof_dir`` and
            ``force``); ``k`` or ``holdout`` out of range. KfError: the files are damaged.

    The check and the write hold :func:`kfold.locks.stage_lock` on ``folds.csv``:
    concurrent calls behave as if run one after the other.
    """
    oof_dir = Path(oof_dir)
    oof_dir.mkdir(parents=True, exist_ok=True)
    csv = oof_dir / FOLDS_CSV
    want = settings_fingerprint(images, k, seed, holdout)
    with stage_lock(csv):  # two kf train/folds at once: the later one reads what the first wrote
        return _ensure_folds(images, oof_dir, k, seed, force, want, holdout)


def _changed_images(oof_dir: Path, images: pd.DataFrame) -> str:
    """What differs between the images and labels behind ``folds.csv`` (and ``holdout.csv``) and ``images``, in words.

    ``""`` when the files cannot be read or nothing differs image by image.
    """
    try:
        old = load_folds(oof_dir)[HOLDOUT_COLS]
        if (oof_dir / HOLDOUT_CSV).exists():
            old = pd.concat([old, read_csv(oof_dir / HOLDOUT_CSV, dtype={"person": str, "image": str})[HOLDOUT_COLS]])
    except KfError:
        return ""
    both = old.merge(images[HOLDOUT_COLS], on="image", how="outer", suffixes=("_old", "_new"), indicator=True)
    gone, new = both[both["_merge"] == "left_only"], both[both["_merge"] == "right_only"]
    relabel = both[(both["_merge"] == "both") & (both["label_old"] != both["label_new"])]
    moved = both[(both["_merge"] == "both") & (both["person_old"] != both["person_new"])]
    parts = []
    if len(relabel):
        r = relabel.iloc[0]
        parts.append(f"{len(relabel)} image(s) with another label, e.g. {r['image']}: {int(r['label_old'])} -> "
                     f"{int(r['label_new'])}")
    for what, rows in (("new", new), ("gone", gone), ("with another person", moved)):
        if len(rows):
            parts.append(f"{len(rows)} image(s) {what}, e.g. {rows.iloc[0]['image']}")
    return "; ".join(parts)


def _ensure_folds(images: pd.DataFrame, oof_dir: Path, k: int, seed: int, force: bool, want: str,
                  holdout: float) -> tuple[pd.DataFrame, dict, bool]:
    csv, meta_path = oof_dir / FOLDS_CSV, oof_dir / FOLDS_JSON
    if csv.exists() and not force:
        meta = read_json(meta_path)
        if meta.get("settings_fingerprint") != want:
            same = (meta.get("k"), meta.get("seed"), float(meta.get("holdout", 0))) == (k, seed, float(holdout))
            changed = _changed_images(oof_dir, images) if same else ""
            asked = (f"made with other settings than asked: the same K, seed and holdout, other data ({changed}; "
                     "train.csv, the age cuts or the corrections changed since)"
                     if changed else
                     f"made with other settings (K={meta.get('k')}, seed={meta.get('seed')}, "
                     f"holdout={meta.get('holdout', 0)}, {meta.get('n_images')} images) than asked (K={k}, seed={seed}, "
                     f"holdout={holdout:g}, {len(images)} images, or other labels/corrections)")
            raise ParamError(
                f"{csv}: {asked}; use another {{oof_dir}} folder, or {{force}} to rewrite it "
                "(runs trained on the old folds can then not be ensembled with new ones)", "oof_dir", "force")
        folds = load_folds(oof_dir)
        return folds, meta, True
    held = make_holdout(images, holdout, seed) if holdout else np.zeros(len(images), dtype=bool)
    folds = make_folds(images[~held].reset_index(drop=True), k, seed)
    meta = {"k": int(k), "seed": int(seed), "n_images": len(folds), "n_people": int(folds.person.nunique()),
            "settings_fingerprint": want, "folds_fingerprint": folds_fingerprint(folds),
            "repaired": folds.attrs.get("repaired", [])}
    hold_csv = oof_dir / HOLDOUT_CSV
    if holdout:
        hold = images.loc[held, HOLDOUT_COLS].reset_index(drop=True)
        meta.update({"holdout": float(holdout), "n_holdout_people": int(hold.person.nunique()),
                     "n_holdout_images": len(hold), "holdout_fingerprint": holdout_fingerprint(hold)})
        write_csv(hold, hold_csv)
    else:
        hold_csv.unlink(missing_ok=True)
    write_csv(folds, csv)
    write_json(meta, meta_path)
    return folds, meta, False


def holdout_fingerprint(holdout: pd.DataFrame) -> str:
    """``joblib.hash`` of the holdout table (image, person, label)."""
    return joblib.hash([holdout[c].tolist() for c in ("image", "person")] + [holdout["label"].astype(int).tolist()])


def load_holdout(oof_dir: str | Path, meta: dict | None = None) -> pd.DataFrame:
    """Read ``oof/holdout.csv`` (``image, person, label``), checked against ``folds.json``.

    Returns:
        The holdout table, or an empty one with those columns when the folds have no holdout.

    Raises:
        KfError: ``folds.json`` records a holdout but the file is missing, or it does not match its fingerprint.
    """
    oof_dir = Path(oof_dir)
    meta = read_json(oof_dir / FOLDS_JSON) if meta is None else meta
    if not meta.get("holdout"):
        return pd.DataFrame({"image": pd.Series(dtype=str), "person": pd.Series(dtype=str),
                             "label": pd.Series(dtype=np.int64)})
    csv = oof_dir / HOLDOUT_CSV
    hold = read_csv(csv, required=HOLDOUT_COLS, dtype={"person": str, "image": str})
    if holdout_fingerprint(hold) != meta.get("holdout_fingerprint"):
        raise KfError(f"{csv}: content does not match holdout_fingerprint in {oof_dir / FOLDS_JSON} (edited or damaged); "
                      "rerun kf folds --force")
    return hold[HOLDOUT_COLS]


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
        raise KfError(f"{csv}: content does not match folds_fingerprint in {oof_dir / FOLDS_JSON} (edited or damaged); "
                      "rerun kf folds --force")
    return folds


def stratification_report(folds: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Share (%) of each gender x age-band class per fold and overall, people counted once.

    Returns:
        DataFrame indexed by fold (plus ``all``) with one column per class
        ``g<gender>a<band>`` and a ``max_dev_pp`` column: the largest absolute
        deviation from the overall share in percentage points.
    """
    per = folds[["image", "fold"]].merge(images[["image", "person", "gender", "age_band"]], on="image")
    per = per.drop_duplicates("person")  # holdout people (not in folds) are left out
    cls = "g" + per["gender"].astype(str) + "a" + per["age_band"].astype(str)
    tab = pd.crosstab(per["fold"], cls.rename("class"), normalize="index") * 100
    overall = cls.value_counts(normalize=True).reindex(tab.columns).fillna(0) * 100
    tab["max_dev_pp"] = (tab[overall.index] - overall).abs().max(axis=1)
    tab.loc["all"] = list(overall) + [0.0]
    return tab.round(2)
