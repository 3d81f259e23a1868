"""The figures of ``kf eda`` and ``kf report``: matplotlib ``Figure`` objects (never pyplot, so no display or global state).

Each function returns a ``Figure``; :func:`reports.page.save_png` renders it. EDA: class distribution and age
histogram. Reports: confusion matrices (row-normalised), training curves, per-class F1 bars and the contact
sheet of the most confident OOF errors.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from kfold import labels as L
from kfold.io import KfError, ParamError
from kfold.labels import band_names

from .evaluate import TASKS, normalise_rows, task_names

if TYPE_CHECKING:
    from .evaluate import RunReport

MASK_COLOURS = ("#4c72b0", "#dd8452", "#c44e52")  # wear, incorrect, not wear


# --------------------------------------------------------------------------- EDA

def plot_class_distribution(classes: pd.DataFrame):
    """Horizontal bars: images per class (18 rows, class names on the axis), coloured by mask state.

    Args:
        classes: the ``classes`` table of :func:`eda_tables`.

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(8, 6.5))
    ax = fig.subplots()
    y = np.arange(len(classes))[::-1]
    mask_code = [c // 6 for c in classes["class"]]
    bars = ax.barh(y, classes["images"], color=[MASK_COLOURS[m] for m in mask_code])
    ax.set_yticks(y, [f"{c:2d} {n}" for c, n in zip(classes["class"], classes["name"])], fontsize=8, family="monospace")
    for b, n, pct in zip(bars, classes["images"], classes["images_pct"]):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {n} ({pct:.1f}%)", va="center", fontsize=7)
    ax.set_xlabel("train images")
    ax.set_xlim(0, max(1, classes["images"].max()) * 1.2)
    ax.set_title(f"Images per class ({int(classes['images'].sum())} images)")
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(MASK_COLOURS, L.MASK_NAMES)], title="mask", loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_age_histogram(people: pd.DataFrame, age_cuts: Sequence[float]):
    """People per year of age, with the band cut-offs as labelled vertical lines and the band sizes.

    Args:
        people: :attr:`EdaResult.people` (columns ``age``, ``gender``).
        age_cuts: ``(a, b)``.

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    age = people["age"].to_numpy(float)
    lo, hi = int(np.floor(age.min())), int(np.floor(age.max())) + 1
    bins = np.arange(lo, hi + 1)
    by_gender = [age[people["gender"].to_numpy() == g] for g in range(2)]
    ax.hist(by_gender, bins=bins, stacked=True, label=list(L.GENDER_NAMES), color=["#4c72b0", "#dd8452"], edgecolor="white", linewidth=0.3)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("age (years, one bar per year)")
    ax.set_ylabel("people")
    names = band_names(age_cuts)
    band = L.age_band(age, age_cuts)
    ymax = ax.get_ylim()[1]
    ax.set_ylim(0, ymax * 1.18)
    for cut in age_cuts:
        ax.axvline(cut, color="black", linestyle="--", linewidth=1.2)
        ax.text(cut, ymax * 1.12, f" cut {cut:g}", ha="left", va="top", fontsize=9)
    edges = [lo, *age_cuts, hi]
    for i in range(3):
        mid = (max(edges[i], lo) + min(edges[i + 1], hi)) / 2
        n = int((band == i).sum())
        ax.text(mid, ymax * 1.02, f"{names[i]}: {n} ({100 * n / len(age):.0f}%)", ha="center", va="bottom", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_title(f"Age of the {len(age)} people, age bands {', '.join(names)}")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.86), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- reports

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
    ax_f1.set(xlabel="epoch", ylabel="validation macro F1", title=f"validation macro F1 ({L.N_CLASSES} classes)")
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
            raise ParamError(f"{path}: image not found; is {{data_root}} {data_root} the folder the run was trained on?",
                             "data_root") from None
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
