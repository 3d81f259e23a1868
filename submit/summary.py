"""What ``kf submit`` prints: class distribution, changes against an older submission, local score."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from kfold import labels as L
from kfold.io import KfError
from kfold.labels import N_CLASSES, class_names
from kfold.metrics import accuracy, macro_f1


def train_labels(data: str | os.PathLike) -> tuple[np.ndarray | None, str | None]:
    """Labels of the training images (competition age cuts 30/60, no corrections), for comparison.

    Computed from ``train/train.csv`` alone (:func:`kfold.data.read_people`):
    every person has the seven images ``mask1..mask5, incorrect_mask,
    normal``, so the image folders need not be listed (``kf train`` checks
    them). This gives the labels of :func:`kfold.data.read_train` in a tenth
    of the time on the competition's 2,700 people.

    Returns:
        ``(labels, None)`` with labels an int64 array of shape
        ``(7 * n_people,)``, or ``(None, note)`` when ``<data>/train/train.csv``
        is absent or invalid (the submission does not need it).
    """
    csv = Path(data) / "train" / "train.csv"
    if not csv.is_file():
        return None, f"train distribution skipped: {csv} not found"
    from kfold.data import read_people

    try:
        people = read_people(data)
    except KfError as e:
        return None, f"train distribution skipped: {e}"
    gender = people["gender"].map(L.GENDER_CODE).to_numpy(dtype=np.int64)
    band = L.age_band(people["age"].to_numpy(dtype=float), L.DEFAULT_AGE_CUTS)
    masks = np.array([L.MASK_OF_STEM[s] for s in L.IMAGE_STEMS], dtype=np.int64)
    return L.encode(masks[None, :], gender[:, None], band[:, None]).reshape(-1).astype(np.int64), None


def class_distribution(answers: np.ndarray, train: np.ndarray | None = None) -> pd.DataFrame:
    """Count and share of each class among ``answers`` and, if given, ``train`` labels.

    Args:
        answers: int array of shape ``(n_images,)``, values in 0..17.
        train: int array of shape ``(n_train_images,)`` or None.

    Returns:
        DataFrame indexed by class 0..17 with ``name``, ``predicted``,
        ``predicted_pct`` and, with ``train``, ``train``, ``train_pct``
        (percentages 0..100).
    """
    answers = np.asarray(answers, dtype=np.int64)
    pred = np.bincount(answers, minlength=N_CLASSES)
    df = pd.DataFrame({"name": class_names(), "predicted": pred,
                       "predicted_pct": 100.0 * pred / max(len(answers), 1)})
    if train is not None:
        tr = np.bincount(np.asarray(train, dtype=np.int64), minlength=N_CLASSES)
        df["train"] = tr
        df["train_pct"] = 100.0 * tr / max(len(train), 1)
    df.index.name = "class"
    return df


def compare_answers(old: np.ndarray, new: np.ndarray, top: int = 10) -> tuple[int, pd.DataFrame]:
    """How many answers differ between two submissions in the same row order, and the commonest changes.

    Args:
        old, new: int arrays of shape ``(n_images,)``, values in 0..17.
        top: rows of the change table.

    Returns:
        ``(n_changed, table)``; ``table`` has columns ``old``, ``new``,
        ``count``, most frequent first (ties by old then new class), at most
        ``top`` rows.
    """
    old, new = np.asarray(old, dtype=np.int64), np.asarray(new, dtype=np.int64)
    changed = old != new
    pairs = pd.DataFrame({"old": old[changed], "new": new[changed]})
    table = (pairs.value_counts().rename("count").reset_index()
             .sort_values(["count", "old", "new"], ascending=[False, True, True], kind="stable")
             .head(top).reset_index(drop=True))
    return int(changed.sum()), table


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Macro F1 and accuracy as the competition scored a submission.

    ``sklearn.metrics.f1_score(truth, pred, average="macro",
    labels=range(18), zero_division=0)``: every one of the 18 classes counts,
    so a class absent from ``truth`` scores 0 (on the full competition test
    set every class is present, and this equals the plain
    ``average="macro"``).

    Args:
        truth, pred: int arrays of shape ``(n_images,)``, values in 0..17.

    Returns:
        ``{"macro_f1", "accuracy", "absent_classes"}``, the last the classes
        with no image in ``truth``.
    """
    truth, pred = np.asarray(truth, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    absent = [c for c in range(N_CLASSES) if not (truth == c).any()]
    return {"macro_f1": macro_f1(truth, pred), "accuracy": accuracy(truth, pred), "absent_classes": absent}


def format_distribution(dist: pd.DataFrame) -> str:
    """The table of :func:`class_distribution` as text."""
    has_train = "train" in dist.columns
    w = max(map(len, dist["name"])) + 3
    head = f"{'class':<{w}} {'predicted':>15}" + (f" {'train':>15}" if has_train else "")
    lines = [head]
    for c, r in dist.iterrows():
        line = f"{c:>2} {r['name']:<{w - 3}} {r.predicted:>8,} {r.predicted_pct:5.1f}%"
        if has_train:
            line += f" {r.train:>8,} {r.train_pct:5.1f}%"
        lines.append(line)
    total = f"{'total':<{w}} {int(dist.predicted.sum()):>8,} {100.0:5.1f}%"
    if has_train:
        total += f" {int(dist.train.sum()):>8,} {100.0:5.1f}%"
    lines.append(total)
    return "\n".join(lines)


def format_changes(n_changed: int, n: int, table: pd.DataFrame, old_name: str) -> str:
    """The result of :func:`compare_answers` as text."""
    lines = [f"compared with {old_name}: {n_changed:,} of {n:,} answers changed ({100.0 * n_changed / max(n, 1):.1f}%)"]
    if len(table):
        names = class_names()
        w = max(map(len, names))
        lines.append("most frequent changes (old -> new):")
        lines.append(f"{'count':>7}  {'old':<{w + 3}}    new")
        for r in table.itertuples():
            lines.append(f"{r.count:>7,}  {r.old:>2} {names[r.old]:<{w}} -> {r.new:>2} {names[r.new]}")
    return "\n".join(lines)


def format_score(result: dict, gt_name: str) -> str:
    """The result of :func:`score` as text."""
    line = (f"ground truth {gt_name}: macro F1 {result['macro_f1']:.4f}, accuracy {result['accuracy']:.4f} "
            f"(sklearn f1_score average='macro', labels 0..{N_CLASSES - 1}, zero_division=0)")
    absent = result["absent_classes"]
    if absent:
        line += (f"\nnote: {len(absent)} class(es) absent from the ground truth count as F1 0: "
                 f"{', '.join(map(str, absent))}")
    return line
