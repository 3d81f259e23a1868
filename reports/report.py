"""Reports on runs and ensembles (``kf report``): what the models get right and wrong.

Reads only the files of earlier stages (``docs/formats.md``): a run's or an
ensemble's ``oof.csv`` and ``run.json``, a run's ``fold<k>/log.csv``, and
the train images (for the contact sheet). For each report it computes, on
the OOF predictions (``argmax`` of the 18 probabilities):

* per-class precision, recall, F1 and support (scikit-learn's
  ``precision_recall_fscore_support(labels=range(18), zero_division=0)``),
  macro F1 over the 18 classes (the competition metric, as ``kf train`` and
  ``kf ensemble`` report it) and accuracy;
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

Files written are listed in ``docs/reports.md``.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kfold import labels as L
from kfold.io import KfError, atomic_write, read_csv, read_json, write_csv
from kfold.stagefiles import KEY_COLS, PROB_COLS, read_oof_csv

from .eda import band_names, class_labels, html_page, png_tag, save_png, table_html

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
        KfError: ``oof_dir`` does not exist or a ``run.json`` is not valid JSON.
    """
    oof_dir = Path(oof_dir)
    if not oof_dir.is_dir():
        raise KfError(f"{oof_dir}: folder not found (pass --oof, or train runs with kf train first)")
    names = []
    for d in sorted(oof_dir.iterdir()):
        if d.is_dir() and d.name not in NOT_RUNS and not d.name.startswith(".") and (d / "run.json").is_file():
            if read_json(d / "run.json").get("finished") is True:
                names.append(d.name)
    ens = oof_dir / "ensemble"
    if ens.is_dir():
        for d in sorted(ens.iterdir()):
            if d.is_dir() and (d / "run.json").is_file() and read_json(d / "run.json").get("finished") is True:
                names.append(f"ensemble/{d.name}")
    return names


def resolve(name: str, oof_dir: str | Path) -> Path:
    """Folder of run or ensemble ``name``: ``<oof>/<name>``, or ``name`` itself as a path.

    Raises:
        KfError: neither holds a ``run.json`` (the message lists what ``--oof`` holds).
    """
    oof_dir = Path(oof_dir)
    for d in (oof_dir / name, Path(name)):
        if (d / "run.json").is_file():
            return d
    have = ", ".join(find_reports(oof_dir)) if oof_dir.is_dir() else f"{oof_dir} not found"
    raise KfError(f"{name}: not a run or ensemble under {oof_dir} (no {oof_dir / name / 'run.json'}; "
                  f"finished there: {have or 'none'})")


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
    p = np.asarray(probs).reshape(-1, 3, 2, 3)  # class = mask*6 + gender*3 + age
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
        from ``sklearn.metrics.precision_recall_fscore_support(labels=range(C), zero_division=0)``.
    """
    from sklearn.metrics import precision_recall_fscore_support

    c = len(names)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(c)), zero_division=0)
    return pd.DataFrame({"class": np.arange(c), "name": list(names), "precision": p, "recall": r, "f1": f,
                         "support": s.astype(np.int64), "predicted": np.bincount(pred, minlength=c)[:c]})


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` int64 confusion counts ``cm[true, pred]``."""
    return np.bincount(np.asarray(y, np.int64) * n + np.asarray(pred, np.int64), minlength=n * n).reshape(n, n)


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
        if (member / "run.json").is_file():
            cuts = (read_json(member / "run.json").get("data") or {}).get("age_cuts")
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
    from sklearn.metrics import f1_score

    oof_dir = Path(oof_dir)
    d = resolve(name, oof_dir)
    rj = read_json(d / "run.json")
    if rj.get("finished") is not True:
        raise KfError(f"{d / 'run.json'}: {name} is not finished (its oof.csv comes when every fold is done)")
    if not (d / "oof.csv").is_file():
        raise KfError(f"{d / 'oof.csv'}: file not found ({name} is marked finished; was the file deleted?)")
    keys, probs = read_oof(d / "oof.csv")
    kind = "ensemble" if rj.get("kind") == "ensemble" or d.parent.name == "ensemble" else "run"
    cuts = _age_cuts(rj, oof_dir)
    names = class_labels(cuts)
    y, pred = keys["label"].to_numpy(), probs.argmax(1)
    labels18 = list(range(L.N_CLASSES))
    macro = float(f1_score(y, pred, average="macro", labels=labels18, zero_division=0))
    folds = []
    for f in sorted(keys["fold"].unique()):
        m = keys["fold"].to_numpy() == f
        folds.append({"fold": int(f), "images": int(m.sum()),
                      "macro_f1": float(f1_score(y[m], pred[m], average="macro", labels=labels18, zero_division=0)),
                      "accuracy": float((y[m] == pred[m]).mean())})
    tp, tl, tn = task_probs(probs), task_labels(y), task_names(cuts)
    task_rows, task_cm = [], {}
    for t in TASKS:
        tpred = tp[t].argmax(1)
        n = len(tn[t])
        task_rows.append({"task": t, "accuracy": float((tl[t] == tpred).mean()),
                          "macro_f1": float(f1_score(tl[t], tpred, average="macro", labels=list(range(n)), zero_division=0))})
        task_cm[t] = confusion(tl[t], tpred, n)
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
                     accuracy=float((y == pred).mean()), per_class=per_class_table(y, pred, names),
                     per_fold=pd.DataFrame(folds), tasks=pd.DataFrame(task_rows), confusion=confusion(y, pred, L.N_CLASSES),
                     task_confusion=task_cm, curves=curves,
                     misclassified=mis[["image", "person", "fold", "label", "true", "predicted", "pred", "confidence", "p_true"]],
                     suspects=suspects_table(keys, probs, cuts), notes=notes, nested_macro_f1=nested)


# --------------------------------------------------------------------------- plots

def _matrix(ax, cm: np.ndarray, names: Sequence[str], title: str, fontsize: float):
    """Draw a row-normalised confusion matrix in ``ax``, shares written in non-empty cells; returns the image."""
    norm = normalise_rows(cm)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(names)
    ax.set_xticks(range(n), names, rotation=60 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=fontsize + 2)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, _share(norm[i, j]), ha="center", va="center",
                        fontsize=fontsize - 1, color="white" if norm[i, j] > 0.55 else "black")
    return im


def _share(v: float) -> str:
    """A share in a matrix cell: ``.42``, ``<.01``, ``>.99``, ``1``."""
    s = f"{v:.2f}"
    if s == "0.00":
        return "<.01"
    if s == "1.00":
        return "1" if v >= 1 else ">.99"
    return s.lstrip("0")


def plot_confusion(cm: np.ndarray, names: Sequence[str], title: str):
    """Row-normalised (recall) 18x18 confusion matrix with class names on both axes. Returns a ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 10))
    ax = fig.subplots()
    im = _matrix(ax, cm, names, title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the true class (row)")
    return fig


def plot_task_confusions(task_cm: dict[str, np.ndarray], age_cuts: Sequence[float], title: str):
    """Three row-normalised confusion matrices (mask, gender, age band) side by side. Returns a ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.8))
    axes = fig.subplots(1, 3)
    names = task_names(age_cuts)
    for ax, t in zip(axes, TASKS):
        cm = task_cm[t]
        acc = np.trace(cm) / max(1, cm.sum())
        _matrix(ax, cm, names[t], f"{t} (accuracy {acc:.3f})", fontsize=10)
    fig.suptitle(title + "  (task probabilities marginalised over the other tasks)")
    fig.subplots_adjust(wspace=0.45)
    return fig


def plot_curves(curves: pd.DataFrame, title: str):
    """Loss (train solid, validation dashed) and validation macro F1 per epoch, one colour per fold. Returns a ``Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.5))
    ax_loss, ax_f1 = fig.subplots(1, 2)
    cmap = [f"C{i}" for i in range(10)]
    for f, g in curves.groupby("fold"):
        c = cmap[int(f) % 10]
        ax_loss.plot(g["epoch"], g["train_loss"], "-o", color=c, markersize=3, label=f"fold {f} train")
        ax_loss.plot(g["epoch"], g["val_loss"], "--s", color=c, markersize=3, label=f"fold {f} val")
        ax_f1.plot(g["epoch"], g["val_macro_f1"], "-o", color=c, markersize=3, label=f"fold {f}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: validation)")
    ax_f1.set(xlabel="epoch", ylabel="validation macro F1", title="validation macro F1 (18 classes)")
    epochs = sorted(curves["epoch"].unique())
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, ncol=2 if ax is ax_loss else 1)
    fig.suptitle(title)
    return fig


def plot_per_class_f1(reports: list[RunReport]):
    """Grouped horizontal bars: per-class F1 of every report (class names on the axis). Returns a ``Figure``."""
    from matplotlib.figure import Figure

    names = reports[0].per_class["name"].tolist()
    fig = Figure(figsize=(9, 2 + 0.12 * L.N_CLASSES * max(3, len(reports) + 1)))
    ax = fig.subplots()
    h = 0.8 / len(reports)
    y = np.arange(L.N_CLASSES)[::-1]
    for i, r in enumerate(reports):
        ax.barh(y + 0.4 - h * (i + 0.5), r.per_class["f1"], height=h, label=f"{r.name} (macro F1 {r.macro_f1:.3f})")
    ax.set_yticks(y, [f"{c:2d} {n}" for c, n in enumerate(names)], fontsize=8, family="monospace")
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 on out-of-fold predictions")
    ax.set_title("Per-class F1")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=min(3, len(reports)))
    return fig


def contact_sheet(mis: pd.DataFrame, data_root: str | Path, title: str, top: int = 24, cols: int = 6,
                  per_person: int | None = 2):
    """Grid of the ``top`` most confidently misclassified images, with true/predicted class and confidence.

    Args:
        mis: :attr:`RunReport.misclassified` (most confident first).
        data_root: the folder ``mis['image']`` is relative to (the ``--data`` folder).
        per_person: at most this many images of one person (None: no limit), so that
            one mislabelled person does not fill the sheet with its 7 images.

    Returns:
        A ``Figure``, or None when nothing is misclassified.

    Raises:
        KfError: ``data_root`` is missing or an image is not found or unreadable there.
    """
    from matplotlib.figure import Figure
    from PIL import Image, UnidentifiedImageError

    data_root = Path(data_root)
    rows = mis if per_person is None else mis[mis.groupby("person", sort=False).cumcount() < per_person]
    rows = rows.head(top)
    if rows.empty:
        return None
    cols = min(cols, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = Figure(figsize=(2.5 * cols, 3.3 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, r in zip(axes, rows.itertuples()):
        path = data_root / r.image
        try:
            with Image.open(path) as im:
                im.draft("RGB", (200, 200))
                im = im.convert("RGB")
                im.thumbnail((200, 200))
        except FileNotFoundError:
            raise KfError(f"{path}: image not found; is --data {data_root} the folder the run was trained on?") from None
        except (UnidentifiedImageError, OSError) as e:
            raise KfError(f"{path}: cannot read image: {e}") from None
        ax.imshow(np.asarray(im))
        folder = Path(r.image).parent.name
        folder = folder if len(folder) <= 30 else folder[:29] + "…"
        ax.set_title(f"{folder}\n{Path(r.image).name} (fold {r.fold})\ntrue {r.true}\npred {r.pred}  p={r.confidence:.2f}",
                     fontsize=7, loc="left")
    limit = f", at most {per_person} per person" if per_person is not None else ""
    fig.suptitle(f"{title}: the {len(rows)} most confident OOF errors{limit} (of {len(mis)} errors)", fontsize=12)
    fig.subplots_adjust(hspace=0.45, wspace=0.08)
    return fig


# --------------------------------------------------------------------------- writing

def comparison_table(reports: list[RunReport]) -> pd.DataFrame:
    """One row per report: ``name, kind, images, macro_f1, nested_macro_f1, accuracy, <task>_accuracy,
    <task>_macro_f1, fold_f1_mean, fold_f1_std, worst_class`` (see :class:`RunReport` for ``nested_macro_f1``)."""
    return pd.DataFrame([r.row() for r in reports])


def default_data_root(oof_dir: str | Path, reports: list[RunReport]) -> Path | None:
    """The data folder recorded in a ``run.json`` (``data.root``) of the reports or of any run under ``oof_dir``, if it exists."""
    dirs = [r.dir for r in reports if r.kind == "run"]
    oof_dir = Path(oof_dir)
    if oof_dir.is_dir():
        dirs += [d for d in sorted(oof_dir.iterdir()) if (d / "run.json").is_file()]
    for d in dirs:
        root = (read_json(d / "run.json").get("data") or {}).get("root")
        if root and Path(root).is_dir():
            return Path(root)
    return None


def _safe(name: str) -> str:
    return name.replace("/", "__")


def write_report(reports: list[RunReport], out: str | Path, data_root: str | Path | None, top: int = 24) -> list[Path]:
    """Write every report's tables and plots, ``comparison.csv``, ``per_class_f1.png`` and ``index.html``.

    Layout: ``<out>/<name>/...`` per report (``ensemble/caruana`` -> ``<out>/ensemble/caruana/``),
    see ``docs/reports.md``.

    Args:
        data_root: the train images' folder for the contact sheets; None when ``top`` is 0.
        top: images on each contact sheet (0: no contact sheet).

    Raises:
        KfError: ``out`` is a file; ``data_root`` is missing or lacks an image.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KfError(f"{out}: exists and is not a folder (--out)")
    if top > 0 and data_root is None:
        raise KfError("no data folder for the contact sheet of confident errors (no run.json records one that exists); "
                      "pass --data, or --top 0 for no contact sheet")
    if top > 0 and not Path(data_root).is_dir():
        raise KfError(f"{data_root}: data folder not found; the contact sheet reads the train images "
                      "(pass --data, or --top 0 for no contact sheet)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def csv(df: pd.DataFrame, path: Path) -> None:
        write_csv(df, path, float_format="%.6f")
        written.append(path)

    def png(fig, path: Path) -> bytes:
        data = save_png(fig, path)
        written.append(path)
        return data

    table = comparison_table(reports)
    csv(table, out / "comparison.csv")
    f1_png = png(plot_per_class_f1(reports), out / "per_class_f1.png")
    body = ["<h2>Runs and ensembles (out-of-fold)</h2>", table_html(table),
            "<p>Task columns use task probabilities marginalised over the other tasks. "
            "Confusion matrices are normalised per true class (rows sum to 1; each cell is a share of that class's images).</p>",
            png_tag(f1_png, "per-class F1")]
    for r in reports:
        d = out / r.name
        d.mkdir(parents=True, exist_ok=True)
        names = r.per_class["name"].tolist()
        csv(r.per_class, d / "per_class.csv")
        csv(r.per_fold, d / "per_fold.csv")
        csv(r.tasks, d / "tasks.csv")
        cm = pd.DataFrame(r.confusion, columns=names)
        cm.insert(0, "true", names)
        csv(cm, d / "confusion.csv")
        csv(r.misclassified, d / "misclassified.csv")
        csv(r.suspects, d / "suspects.csv")
        figs = [("confusion.png", png(plot_confusion(r.confusion, names, f"{r.name}: confusion matrix, OOF, rows normalised"),
                                      d / "confusion.png"))]
        figs.append(("confusion_tasks.png", png(plot_task_confusions(r.task_confusion, r.age_cuts, r.name), d / "confusion_tasks.png")))
        if r.curves is not None:
            csv(r.curves, d / "curves.csv")
            figs.append(("curves.png", png(plot_curves(r.curves, f"{r.name}: training curves"), d / "curves.png")))
        if top > 0:
            sheet = contact_sheet(r.misclassified, data_root, r.name, top=top)
            if sheet is not None:
                figs.append(("misclassified.png", png(sheet, d / "misclassified.png")))
        body += [f"<h2 id='{html.escape(_safe(r.name))}'>{html.escape(r.name)} ({r.kind})</h2>",
                 f"<p>macro F1 <b>{r.macro_f1:.4f}</b>, accuracy {r.accuracy:.4f}, {len(r.keys)} images, "
                 f"age cuts {r.age_cuts[0]:g},{r.age_cuts[1]:g}. Files: {html.escape(r.name)}/</p>",
                 "<h3>per task</h3>", table_html(r.tasks), "<h3>per fold</h3>", table_html(r.per_fold),
                 "<h3>per class</h3>", table_html(r.per_class)]
        body += [png_tag(data, f"{r.name} {file}") for file, data in figs]
        body += ["<h3>people whose labels the models doubt most (suspects.csv, top 15)</h3>", table_html(r.suspects.head(15), 3)]
        body += [f"<p>note: {html.escape(n)}</p>" for n in r.notes]
    with atomic_write(out / "index.html") as fh:
        fh.write(html_page("kf report", body))
    written.append(out / "index.html")
    return written


def format_summary(reports: list[RunReport]) -> str:
    """Terminal summary: the comparison table, then per report its three worst classes and most suspect people."""
    table = comparison_table(reports)
    cols = ["name", "kind", "macro_f1", "nested_macro_f1", "accuracy", "mask_accuracy", "gender_accuracy", "age_accuracy",
            "fold_f1_std"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        lines = [table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    if (table["kind"] == "ensemble").any():
        lines.append("macro_f1: on all OOF rows (in-sample for an ensemble: its weights saw them); nested_macro_f1: "
                     "per-fold mean for a run, kf ensemble's nested estimate for an ensemble: compare on this one")
    for r in reports:
        worst = r.per_class.sort_values(["f1", "class"], kind="stable").head(3)
        lines.append(f"{r.name}: worst classes " + ", ".join(f"{w.name} F1 {w.f1:.2f} (n={w.support})" for w in worst.itertuples())
                     + f"; {len(r.misclassified)} OOF errors")
        s = r.suspects.head(3)
        lines.append(f"{r.name}: most suspect labels " + ", ".join(
            f"{p.person} (p other gender {p.p_other_gender:.2f}, p mask swap {p.p_mask_swap:.2f})" for p in s.itertuples()))
        lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def run_report(names: Sequence[str] | None, oof_dir: str | Path, out: str | Path | None = None,
               data_root: str | Path | None = None, top: int = 24) -> tuple[list[RunReport], list[Path]]:
    """Everything ``kf report`` does: evaluate each run/ensemble and write the report folder.

    Args:
        names: runs/ensembles; None or empty for every finished one under ``oof_dir`` (:func:`find_reports`).
        oof_dir: the ``--oof`` folder.
        out: output folder (default ``<oof>/report``).
        data_root: train images for the contact sheet; None: the ``data.root`` a run recorded.
        top: images per contact sheet (0: none, and no data folder is needed).

    Returns:
        ``(reports, written paths)``.

    Raises:
        KfError: no finished run, unknown name, bad ``oof.csv``, missing data folder or image.
    """
    oof_dir = Path(oof_dir)
    if not names:
        names = find_reports(oof_dir)
        if not names:
            raise KfError(f"{oof_dir}: no finished runs or ensembles (train with kf train, or name a run folder)")
    if len(set(names)) != len(names):
        raise KfError(f"a run is named twice: {', '.join(names)}")
    reports = [evaluate(n, oof_dir) for n in names]
    if top > 0 and data_root is None:
        data_root = default_data_root(oof_dir, reports)
    written = write_report(reports, out if out is not None else oof_dir / "report", data_root, top=top)
    return reports, written
