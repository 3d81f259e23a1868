"""Scores of one run or ensemble from its stage files (``kf report``): what the models get right and wrong.

Reads only the files of earlier stages (``docs/formats.md``): a run's or an
ensemble's ``oof.csv`` and ``run.json``, a run's ``fold<k>/log.csv``, and
the train images (for the contact sheet). For each report it computes, on
the OOF predictions (``argmax`` of the 18 probabilities):

* per-class precision, recall and support (scikit-learn's
  ``precision_recall_fscore_support(labels=range(18), zero_division=0)``),
  per-class F1 and macro F1 over the 18 classes (:mod:`kfold.metrics`, the
  competition metric as ``kf train`` and ``kf ensemble`` report it) and accuracy;
* per task (mask, gender, age band) accuracy, macro F1 and confusion matrix.
  Task predictions **marginalise** the probabilities: ``p(mask=m)`` is the
  sum of the 6 classes with mask ``m``, and the task prediction is its
  argmax. This can differ from decoding the 18-class argmax (e.g. 0.3 on
  ``wear/male/<30`` and 0.25 + 0.25 on ``wear/female/<30`` and
  ``wear/female/30-59`` decode to male but marginalise to female);
* macro F1 and accuracy per fold (``oof.csv``'s ``fold`` column);
* the OOF images misclassified with the highest confidence (probability of
  the predicted class), drawn as a contact sheet: how label noise is found;
* per person, the evidence against its labels (``suspects.csv``): the mean
  probability of the other gender over its 7 images, how much ``normal`` and
  ``incorrect_mask`` look swapped, and the predicted age band.

The plots are in :mod:`reports.plots`, the files written (:mod:`reports.report`) in ``docs/reports.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kfold import labels as L
from kfold.io import KfError, read_csv
from kfold.labels import band_names, class_labels
from kfold.metrics import accuracy, confusion_matrix, f1_per_class, macro_f1
from kfold.runrecord import finished_names, is_run_dir, read_run_json, resolve_run_dir
from kfold.stagefiles import read_oof_csv

#: folders under ``--oof`` that are never runs
NOT_RUNS = ("ensemble", "cache", "report", "eda")
TASKS = ("mask", "gender", "age")


def task_names(age_cuts: Sequence[float]) -> dict[str, tuple[str, ...]]:
    """Class names of each task: ``{'mask': MASK_NAMES, 'gender': GENDER_NAMES, 'age': band names}``."""
    return {"mask": L.MASK_NAMES, "gender": L.GENDER_NAMES, "age": band_names(age_cuts)}


# --------------------------------------------------------------------------- finding and reading

def find_reports(oof_dir: str | Path) -> list[str]:
    """Names of the finished runs (``<oof>/<run>/``) and then ensembles (``ensemble/<name>``), sorted.

    A run or ensemble is a folder with a ``run.json`` whose ``finished`` is true.

    Raises:
        ParamError: ``oof_dir`` does not exist. KfError: a ``run.json`` is not valid JSON.
    """
    return finished_names(oof_dir)


def resolve(name: str, oof_dir: str | Path) -> Path:
    """Folder of run or ensemble ``name``: ``<oof>/<name>``, or ``name`` itself as a path.

    Raises:
        KfError: neither holds a ``run.json`` (the message lists what ``--oof`` holds).
    """
    return resolve_run_dir(name, oof_dir)


def read_oof(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read and validate an ``oof.csv``: :func:`kfold.stagefiles.read_oof_csv`, the reader ``kf ensemble`` uses too."""
    return read_oof_csv(path)


def read_curves(run_dir: Path, k: int | None) -> pd.DataFrame | None:
    """Concatenate ``fold<k>/log.csv`` of a run: ``fold, epoch, train_loss, val_loss, val_macro_f1, ...``.

    Returns:
        The table, or None when no fold has a log.

    Raises:
        KfError: a log lacks ``epoch``, ``train_loss``, ``val_loss`` or ``val_macro_f1``.
    """
    folds = range(k) if k else sorted(int(p.name[4:]) for p in run_dir.glob("fold*") if p.name[4:].isdigit())
    parts = []
    for f in folds:
        p = run_dir / f"fold{f}" / "log.csv"
        if p.is_file():
            parts.append(read_csv(p, required=["epoch", "train_loss", "val_loss", "val_macro_f1"]).assign(fold=f))
    if not parts:
        return None
    df = pd.concat(parts, ignore_index=True)
    return df[["fold"] + [c for c in df.columns if c != "fold"]]


# --------------------------------------------------------------------------- metrics

def task_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Marginal probabilities of each task from ``(n, 18)`` class probabilities.

    Returns:
        ``{'mask': (n, 3), 'gender': (n, 2), 'age': (n, 3)}``, each row summing to the row sum of ``probs``.
    """
    p = np.asarray(probs).reshape(-1, len(L.MASK_NAMES), len(L.GENDER_NAMES), len(L.AGE_NAMES))  # class = mask*6 + gender*3 + age
    return {"mask": p.sum(axis=(2, 3)), "gender": p.sum(axis=(1, 3)), "age": p.sum(axis=(1, 2))}


def task_labels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """``{'mask', 'gender', 'age'}`` codes of ``(n,)`` 18-class labels (:func:`kfold.labels.decode`)."""
    m, g, a = L.decode(np.asarray(labels, dtype=np.int64))
    return {"mask": m, "gender": g, "age": a}


def per_class_table(y: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1, support and predicted count over all ``len(names)`` classes.

    Args:
        y, pred: ``(n,)`` int labels and predictions in ``0..len(names)-1``.

    Returns:
        DataFrame ``class, name, precision, recall, f1, support, predicted`` (one row per class),
        precision and recall from ``sklearn.metrics.precision_recall_fscore_support(labels=range(C),
        zero_division=0)``, F1 from :func:`kfold.metrics.f1_per_class`.
    """
    from sklearn.metrics import precision_recall_fscore_support

    c = len(names)
    p, r, _, s = precision_recall_fscore_support(y, pred, labels=list(range(c)), zero_division=0)
    f = f1_per_class(y, pred, c)
    return pd.DataFrame({"class": np.arange(c), "name": list(names), "precision": p, "recall": r, "f1": f,
                         "support": s.astype(np.int64), "predicted": np.bincount(pred, minlength=c)[:c]})


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (recall per true class); rows of zeros stay zero."""
    s = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, s, out=np.zeros(cm.shape, dtype=float), where=s > 0)


@dataclass
class RunReport:
    """Everything :func:`evaluate` derives from one run's or ensemble's ``oof.csv``.

    Attributes:
        name: ``lite0`` or ``ensemble/caruana``. kind: ``run`` or ``ensemble``. dir: its folder.
        age_cuts: from ``run.json`` (``data.age_cuts``; for an ensemble, its first member's), else (30, 60).
        keys: ``(n, 4)`` ``image, person, fold, label``. probs: ``(n, 18)`` float64. pred: ``(n,)`` argmax.
        macro_f1, accuracy: over the 18 classes.
        per_class: see :func:`per_class_table` (18 rows).
        per_fold: ``fold, images, macro_f1, accuracy``.
        tasks: ``task, accuracy, macro_f1`` (3 rows; marginalised predictions).
        confusion: ``(18, 18)`` counts; task_confusion: task -> ``(C, C)`` counts.
        curves: see :func:`read_curves` (None for ensembles or without logs).
        misclassified: the wrong predictions, most confident first:
            ``image, person, fold, label, true, pred, predicted, confidence, p_true``.
        suspects: see :func:`suspects_table`.
        nested_macro_f1: the honest score to compare runs with ensembles: for
            a run the mean of its per-fold macro F1 (each fold predicted by a
            model that never saw it); for an ensemble the nested estimate
            ``kf ensemble`` recorded in its ``run.json`` (the blend refitted
            without each fold, scored on it), NaN when absent. An ensemble's
            ``macro_f1`` is in-sample: its weights and biases saw every row.
    """

    name: str
    kind: str
    dir: Path
    age_cuts: tuple[float, float]
    keys: pd.DataFrame
    probs: np.ndarray
    pred: np.ndarray
    macro_f1: float
    accuracy: float
    per_class: pd.DataFrame
    per_fold: pd.DataFrame
    tasks: pd.DataFrame
    confusion: np.ndarray
    task_confusion: dict[str, np.ndarray]
    curves: pd.DataFrame | None
    misclassified: pd.DataFrame
    suspects: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    nested_macro_f1: float = float("nan")

    def row(self) -> dict:
        """One row of the side-by-side comparison table."""
        t = self.tasks.set_index("task")
        f = self.per_fold["macro_f1"]
        return {"name": self.name, "kind": self.kind, "images": len(self.keys), "macro_f1": self.macro_f1,
                "nested_macro_f1": self.nested_macro_f1, "accuracy": self.accuracy, **{f"{k}_accuracy": t.at[k, "accuracy"] for k in TASKS},
                **{f"{k}_macro_f1": t.at[k, "macro_f1"] for k in TASKS},
                "fold_f1_mean": float(f.mean()), "fold_f1_std": float(f.std(ddof=0)),
                "worst_class": self.per_class.sort_values("f1", kind="stable").iloc[0]["name"]}


def _age_cuts(rj: dict, oof_dir: Path) -> tuple[float, float]:
    cuts = (rj.get("data") or {}).get("age_cuts")
    if not cuts and rj.get("members"):
        member = oof_dir / rj["members"][0]
        if is_run_dir(member):
            cuts = (read_run_json(member).get("data") or {}).get("age_cuts")
    return (float(cuts[0]), float(cuts[1])) if cuts else tuple(float(c) for c in L.DEFAULT_AGE_CUTS)


def suspects_table(keys: pd.DataFrame, probs: np.ndarray, age_cuts: Sequence[float]) -> pd.DataFrame:
    """Per person, how strongly the OOF predictions disagree with the labels; most suspect first.

    The two kinds of label noise known in the competition data are scored:
    a wrong gender in train.csv and swapped ``normal``/``incorrect_mask``
    files. Age disagreements are listed but not scored (age is ordinal, and
    people near a cut are expected errors); sort by ``p_age_band`` for them.

    Args:
        keys: ``(n, 4)`` ``image, person, fold, label``; probs: ``(n, 18)``.

    Returns:
        One row per person: ``person, fold, images, gender`` (label),
        ``p_other_gender`` (mean marginal probability of the other gender over
        the person's images), ``p_mask_swap`` (the smaller of p(incorrect) on
        the ``normal`` image and p(not wear) on the ``incorrect_mask`` image; 0
        without both), ``age_band`` (label), ``pred_age_band`` (argmax of the
        mean marginal age probabilities), ``p_age_band`` (mean probability of
        the labelled band), ``score`` = max(``p_other_gender``, ``p_mask_swap``);
        sorted by ``score`` descending.
    """
    names = band_names(age_cuts)
    tp = task_probs(probs)
    tl = task_labels(keys["label"].to_numpy())
    rows = np.arange(len(keys))
    stems = keys["image"].map(lambda s: Path(s).stem).to_numpy()
    df = pd.DataFrame({"person": keys["person"].to_numpy(), "fold": keys["fold"].to_numpy(),
                       "gender": tl["gender"], "age_band": tl["age"],
                       "p_other_gender": tp["gender"][rows, 1 - tl["gender"]],
                       "p_age_band": tp["age"][rows, tl["age"]],
                       **{f"p_age{i}": tp["age"][:, i] for i in range(3)},
                       "p_incorrect": tp["mask"][:, 1], "p_not_wear": tp["mask"][:, 2], "stem": stems})
    out = df.groupby("person", sort=False).agg(
        fold=("fold", "first"), images=("fold", "size"), gender=("gender", "first"),
        p_other_gender=("p_other_gender", "mean"), age_band=("age_band", "first"), p_age_band=("p_age_band", "mean"),
        p_age0=("p_age0", "mean"), p_age1=("p_age1", "mean"), p_age2=("p_age2", "mean")).reset_index()
    normal = df[df.stem == "normal"].groupby("person")["p_incorrect"].first()
    incorrect = df[df.stem == "incorrect_mask"].groupby("person")["p_not_wear"].first()
    out["p_mask_swap"] = np.minimum(out["person"].map(normal).fillna(0).to_numpy(), out["person"].map(incorrect).fillna(0).to_numpy())
    out["pred_age_band"] = out[["p_age0", "p_age1", "p_age2"]].to_numpy().argmax(1)
    out["score"] = np.maximum(out["p_other_gender"].to_numpy(), out["p_mask_swap"].to_numpy())
    out["gender"] = out["gender"].map(dict(enumerate(L.GENDER_NAMES)))
    out["age_band"] = out["age_band"].map(dict(enumerate(names)))
    out["pred_age_band"] = out["pred_age_band"].map(dict(enumerate(names)))
    cols = ["person", "fold", "images", "gender", "p_other_gender", "p_mask_swap", "age_band", "pred_age_band", "p_age_band", "score"]
    return out[cols].sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def evaluate(name: str, oof_dir: str | Path) -> RunReport:
    """Score one run or ensemble from its ``oof.csv``.

    Args:
        name: run (``lite0``) or ensemble (``ensemble/caruana``) under ``oof_dir``, or a folder path.
        oof_dir: the ``--oof`` folder.

    Raises:
        KfError: unknown name, unfinished run, missing or invalid ``oof.csv`` or ``log.csv``.
    """
    oof_dir = Path(oof_dir)
    d = resolve(name, oof_dir)
    rj = read_run_json(d)
    if rj.get("finished") is not True:
        raise KfError(f"{d / 'run.json'}: {name} is not finished (its oof.csv comes when every fold is done)")
    if not (d / "oof.csv").is_file():
        raise KfError(f"{d / 'oof.csv'}: file not found ({name} is marked finished; was the file deleted?)")
    keys, probs = read_oof(d / "oof.csv")
    kind = "ensemble" if rj.get("kind") == "ensemble" or d.parent.name == "ensemble" else "run"
    cuts = _age_cuts(rj, oof_dir)
    names = class_labels(cuts)
    y, pred = keys["label"].to_numpy(), probs.argmax(1)
    macro = macro_f1(y, pred, L.N_CLASSES)
    folds = []
    for f in sorted(keys["fold"].unique()):
        m = keys["fold"].to_numpy() == f
        folds.append({"fold": int(f), "images": int(m.sum()),
                      "macro_f1": macro_f1(y[m], pred[m], L.N_CLASSES), "accuracy": accuracy(y[m], pred[m])})
    tp, tl, tn = task_probs(probs), task_labels(y), task_names(cuts)
    task_rows, task_cm = [], {}
    for t in TASKS:
        tpred = tp[t].argmax(1)
        n = len(tn[t])
        task_rows.append({"task": t, "accuracy": accuracy(tl[t], tpred), "macro_f1": macro_f1(tl[t], tpred, n)})
        task_cm[t] = confusion_matrix(tl[t], tpred, n)
    conf = probs[np.arange(len(pred)), pred]
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")]
    mis = keys.iloc[wrong].reset_index(drop=True)
    mis["true"] = [names[c] for c in y[wrong]]
    mis["predicted"] = pred[wrong]
    mis["pred"] = [names[c] for c in pred[wrong]]
    mis["confidence"] = conf[wrong]
    mis["p_true"] = probs[wrong, y[wrong]]
    if kind == "run":
        nested = float(np.mean([f["macro_f1"] for f in folds]))
    else:
        try:
            nested = float(rj["nested_macro_f1"])
        except (KeyError, TypeError, ValueError):
            nested = float("nan")
    curves = read_curves(d, rj.get("k")) if kind == "run" else None
    notes = [] if curves is not None or kind == "ensemble" else [f"{name}: no fold<k>/log.csv, no training curves"]
    try:  # the name under --oof (ensemble/caruana), else the folder's own name: never a path out of --out
        label = d.resolve().relative_to(oof_dir.resolve()).as_posix()
    except ValueError:
        label = d.name
    return RunReport(name=label, kind=kind, dir=d, age_cuts=cuts, keys=keys, probs=probs, pred=pred, macro_f1=macro,
                     accuracy=accuracy(y, pred), per_class=per_class_table(y, pred, names),
                     per_fold=pd.DataFrame(folds), tasks=pd.DataFrame(task_rows), confusion=confusion_matrix(y, pred, L.N_CLASSES),
                     task_confusion=task_cm, curves=curves,
                     misclassified=mis[["image", "person", "fold", "label", "true", "predicted", "pred", "confidence", "p_true"]],
                     suspects=suspects_table(keys, probs, cuts), notes=notes, nested_macro_f1=nested)
