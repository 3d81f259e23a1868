"""The honest estimate (nested over folds) and the scores table.

A method that learns from OOF rows (weights, Caruana, stacking, biases)
scores higher on those rows than on new images. The nested estimate removes
that optimism: for each fold ``f`` the method is fitted on the OOF rows of
the other K-1 folds only (stacking cross-fits inside those K-1 folds, so its
inner folds exclude ``f`` too) and scored on fold ``f``'s rows. Its mean
over folds is comparable with a single run's mean per-fold macro F1, since a
run's OOF rows are already predicted by models that never saw them.

The nested predictions of all folds, pooled into one ``(n_images, 18)``
array and scored once (``pooled_macro_f1``), are the selection estimate: the
mean of per-fold macro F1 on ~750-image folds is biased low where classes
are rare (a class with 3 images in a fold has a noisy, often zero F1), which
is exactly where bias tuning acts (Forman & Scholz 2010, "Apples-to-apples in
cross-validation studies: pitfalls in classifier performance measurement",
recommend pooling F1 over folds for this reason). Its spread comes from a
person-level bootstrap (:mod:`ensemble.selection`).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from sklearn.base import clone

from kfold.labels import N_CLASSES
from kfold.metrics import accuracy, f1_per_class

from .base import Ensembler, Scorer, get_scorer


def nested_fits(estimator: Ensembler, P: np.ndarray, y: np.ndarray, folds: np.ndarray) -> Iterator[tuple[int, np.ndarray, Ensembler]]:
    """For each fold ``f`` (sorted), a clone of ``estimator`` fitted on the rows of the other folds.

    Args:
        estimator: an unfitted method.
        P: ``(n_runs, n_images, 18)`` float OOF probabilities.
        y: ``(n_images,)`` int labels.
        folds: ``(n_images,)`` int folds.

    Yields:
        ``(f, held, fitted)``: ``held`` is the ``(n_images,)`` bool mask of fold
        ``f``'s rows, none of which ``fitted`` saw.
    """
    folds = np.asarray(folds)
    for f in np.unique(folds):
        held = folds == f
        yield int(f), held, clone(estimator).fit(P[:, ~held], y[~held], folds[~held])


def nested_estimate(estimator: Ensembler, P: np.ndarray, y: np.ndarray, folds: np.ndarray,
                    scorer: Scorer | None = None) -> np.ndarray:
    """Honest score of a method: per fold, fitted without that fold, scored on it.

    Args: see :func:`nested_fits`; ``scorer``: ``(y_true, y_pred) -> float``, None for macro F1.

    Returns:
        ``(n_folds,)`` float64 score (macro F1 by default) of each held-out fold, in fold order.
    """
    score = get_scorer(scorer)
    return np.array([score(y[held], est.predict(P[:, held])) for _, held, est in nested_fits(estimator, P, y, folds)])


def nested_predictions(estimator: Ensembler, P: np.ndarray, y: np.ndarray, folds: np.ndarray,
                       scorer: Scorer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The nested (honest) probabilities of every OOF row, and the score of each held-out fold.

    Args: see :func:`nested_fits`; ``scorer``: ``(y_true, y_pred) -> float``, None for macro F1.

    Returns:
        ``(per_fold, pooled)``: ``(n_folds,)`` float64 score of each held-out
        fold, and ``(n_images, 18)`` float64 probabilities, each row predicted
        by the fit that did not see its fold.
    """
    score = get_scorer(scorer)
    pooled = np.zeros(P.shape[1:], dtype=np.float64)
    per_fold = []
    for _, held, est in nested_fits(estimator, P, y, folds):
        pooled[held] = est.predict_proba(P[:, held])
        per_fold.append(score(y[held], pooled[held].argmax(axis=1)))
    return np.array(per_fold), pooled


def fold_scores(proba: np.ndarray, y: np.ndarray, folds: np.ndarray, scorer: Scorer | None = None) -> np.ndarray:
    """``(n_folds,)`` score (macro F1 by default) of ``(n_images, 18)`` probabilities on each fold's rows, in fold order."""
    score = get_scorer(scorer)
    pred = proba.argmax(axis=1)
    return np.array([score(y[folds == f], pred[folds == f]) for f in np.unique(folds)])


def score_row(name: str, kind: str, oof_proba: np.ndarray, y: np.ndarray, per_fold: np.ndarray,
              pooled_proba: np.ndarray | None = None, scorer: Scorer | None = None) -> dict:
    """One row of the scores table.

    The ``*_macro_f1`` columns hold ``scorer``'s value (macro F1 by default,
    the competition metric); ``accuracy`` and the per-class ``f1_*`` describe
    the predictions whatever the scorer.

    Args:
        name: run or ensemble name.
        kind: ``run`` or ``ensemble``.
        oof_proba: ``(n_images, 18)`` OOF probabilities (in-sample for a fitted method).
        per_fold: ``(n_folds,)`` held-out macro F1 per fold (the nested estimate;
            for a run, its own per-fold OOF macro F1).
        pooled_proba: ``(n_images, 18)`` nested probabilities of every row
            (:func:`nested_predictions`); default ``oof_proba`` (a run's OOF rows
            are held-out already).
        scorer: ``(y_true, y_pred) -> float``; None for macro F1.

    Returns:
        ``{name, kind, oof_macro_f1, nested_macro_f1, pooled_macro_f1, fold<k>_macro_f1..., accuracy, f1_0..f1_17}``.
    """
    score = get_scorer(scorer)
    pred = oof_proba.argmax(axis=1)
    pooled = score(y, (oof_proba if pooled_proba is None else pooled_proba).argmax(axis=1))
    row = {"name": name, "kind": kind, "oof_macro_f1": score(y, pred), "nested_macro_f1": float(np.mean(per_fold)),
           "pooled_macro_f1": pooled}
    row.update({f"fold{k}_macro_f1": float(s) for k, s in enumerate(per_fold)})
    row["accuracy"] = accuracy(y, pred)
    row.update({f"f1_{c}": float(v) for c, v in enumerate(f1_per_class(y, pred, N_CLASSES))})
    return row
