"""The competition metric: macro F1 over the 18 classes, from a confusion matrix vectorised with ``np.bincount``.

The competition metric is the macro F1 over the 18 classes. scikit-learn's
``f1_score(average="macro", labels=range(18), zero_division=0)`` takes
milliseconds per call; ensemble selection and bias tuning call it thousands
of times, so here it is one ``np.bincount`` into an 18x18 confusion matrix.
A class that is neither true nor predicted anywhere scores F1 = 0 and still
counts in the mean (scikit-learn's ``zero_division=0`` with explicit labels).
"""
from __future__ import annotations

import numpy as np

from .labels import N_CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Confusion matrix ``cm[true, pred]``.

    Args:
        y_true: ``(n_images,)`` int labels in ``0..n_classes-1``.
        y_pred: ``(n_images,)`` int predicted labels in the same range.

    Returns:
        ``(n_classes, n_classes)`` int64 counts.
    """
    idx = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 ``2 tp / (2 tp + fp + fn)`` from ``(..., C, C)`` confusion matrices.

    Returns:
        ``(..., C)`` float64; 0 where a class is neither true nor predicted.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2)  # (tp + fn) + (tp + fp)
    return np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """``(n_classes,)`` F1 of each class; see :func:`macro_f1`."""
    return f1_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> float:
    """Macro F1 over all ``n_classes`` classes.

    Equals ``sklearn.metrics.f1_score(y_true, y_pred, average="macro",
    labels=range(n_classes), zero_division=0)``.

    Args:
        y_true: ``(n_images,)`` int labels.
        y_pred: ``(n_images,)`` int predictions (e.g. ``probs.argmax(1)``).
    """
    return float(f1_per_class(y_true, y_pred, n_classes).mean())


def macro_f1_batch(y_true: np.ndarray, y_preds: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Macro F1 of several prediction vectors against the same labels in one ``np.bincount``.

    Args:
        y_true: ``(n_images,)`` int labels.
        y_preds: ``(n_candidates, n_images)`` int predictions.

    Returns:
        ``(n_candidates,)`` float64 macro F1, each equal to :func:`macro_f1` of its row.
    """
    y_preds = np.asarray(y_preds, dtype=np.int64)
    g = y_preds.shape[0]
    cc = n_classes * n_classes
    idx = (np.arange(g, dtype=np.int64)[:, None] * cc + np.asarray(y_true, dtype=np.int64)[None, :] * n_classes + y_preds)
    cm = np.bincount(idx.ravel(), minlength=g * cc).reshape(g, n_classes, n_classes)
    return f1_from_confusion(cm).mean(axis=-1)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of ``(n_images,)`` predictions equal to the labels."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
