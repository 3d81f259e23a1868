"""Per-class additive biases on log-probabilities, tuned for the metric (macro F1 by default) by coordinate ascent."""
from __future__ import annotations

import numpy as np
from sklearn.base import clone

from kfold.metrics import f1_from_confusion, macro_f1

from .base import Ensembler, Scorer, is_default_scorer, log_proba, softmax

DEFAULT_GRID = tuple(np.round(np.linspace(-2.0, 2.0, 41), 10))


def class_bias_scores(S: np.ndarray, logp: np.ndarray, y: np.ndarray, c: int, grid: np.ndarray) -> np.ndarray:
    """Macro F1 of ``argmax`` of ``S`` with column ``c`` replaced by ``logp[:, c] + v``, for every ``v`` in ``grid``.

    With the other classes' best score ``m`` and class ``k`` fixed, a row
    predicts ``c`` iff ``v > m - logp[c]`` (``>=`` when ``c < k``: ties go to
    the lower index, as ``argmax``), i.e. from some grid index on. One
    ``np.bincount`` over (that index, true class, ``k``) and a cumulative sum
    give the confusion matrix of every grid value.

    Args:
        S: ``(n_images, C)`` current scores (log-probabilities plus biases).
        logp: ``(n_images, C)`` log-probabilities without biases.
        y: ``(n_images,)`` int labels.
        c: the class whose bias varies.
        grid: ``(n_grid,)`` bias values, sorted ascending.

    Returns:
        ``(n_grid,)`` float64 macro F1.
    """
    n, n_classes = S.shape
    g, cc = len(grid), n_classes * n_classes
    others = S.copy()
    others[:, c] = -np.inf
    k = others.argmax(axis=1)
    t = others[np.arange(n), k] - logp[:, c]  # row predicts c iff v > t (v >= t when c < k)
    first = np.where(c < k, np.searchsorted(grid, t, side="left"), np.searchsorted(grid, t, side="right"))
    A = np.bincount(first * cc + y * n_classes + k, minlength=(g + 1) * cc).reshape(g + 1, n_classes, n_classes)
    to_c = np.cumsum(A, axis=0)[:g]  # (g, true, k): rows that predict c at grid index j
    cm = A.sum(axis=0) - to_c
    cm[:, :, c] += to_c.sum(axis=2)
    return f1_from_confusion(cm).mean(axis=1)


def _grid_scores(S: np.ndarray, logp: np.ndarray, y: np.ndarray, c: int, grid: np.ndarray,
                 scorer: Scorer) -> np.ndarray:
    """:func:`class_bias_scores` for any scorer: ``(n_grid,)`` scores, one ``argmax`` per grid value."""
    T = S.copy()
    out = np.empty(len(grid))
    for j, v in enumerate(grid):
        T[:, c] = logp[:, c] + v
        out[j] = scorer(y, T.argmax(axis=1))
    return out


def tune_biases(logp: np.ndarray, y: np.ndarray, grid=DEFAULT_GRID, n_passes: int = 3,
                scorer: Scorer | None = None) -> tuple[np.ndarray, float]:
    """Biases ``b`` maximising the score (macro F1 by default) of ``argmax(logp + b)``, by coordinate ascent on a grid.

    Starting from ``b = 0``, each pass visits the classes in order and sets
    ``b[c]`` to the grid value with the best macro F1, the other biases held
    fixed; a value replaces the current one only if it scores strictly
    higher, so the OOF macro F1 never decreases. Stops after ``n_passes``
    passes or a pass without improvement. This is the threshold/prior-shift
    adjustment common for macro F1 on imbalanced classes (e.g. Lipton et al.
    2014, "Thresholding classifiers to maximize F1 score").

    For macro F1 all grid values of a class are scored together by
    :func:`class_bias_scores`; another scorer is called once per grid value.

    Args:
        logp: ``(n_images, 18)`` float log-probabilities (or logits).
        y: ``(n_images,)`` int labels.
        grid: candidate bias values.
        n_passes: maximum passes over the classes.
        scorer: ``(y_true, y_pred) -> float``, higher is better; None for macro F1.

    Returns:
        ``(biases, score)``: ``(18,)`` float64 and the OOF score of
        ``argmax(logp + biases)``.
    """
    logp = np.asarray(logp, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    n_classes = logp.shape[1]
    fast = is_default_scorer(scorer)

    def score(pred: np.ndarray) -> float:
        return macro_f1(y, pred, n_classes) if fast else scorer(y, pred)

    b = np.zeros(n_classes)
    S = logp.copy()  # current scores logp + b
    best = score(S.argmax(axis=1))
    for _ in range(n_passes):
        improved = False
        for c in range(n_classes):
            scores = class_bias_scores(S, logp, y, c, grid) if fast else _grid_scores(S, logp, y, c, grid, scorer)
            j = int(np.argmax(scores))
            if scores[j] > best + 1e-12:
                keep = S[:, c].copy()
                S[:, c] = logp[:, c] + grid[j]
                exact = score(S.argmax(axis=1))  # == scores[j] unless rounding moved a tie
                if exact > best:
                    b[c], best, improved = grid[j], exact, True
                else:
                    S[:, c] = keep
        if not improved:
            break
    return b, best


class BiasTuning(Ensembler):
    """Any method, then per-class biases on its log-probabilities tuned for the OOF score (macro F1 by default).

    Fits ``estimator`` (a clone), tunes ``biases_`` with :func:`tune_biases`
    on the estimator's ``oof_proba_`` (cross-fitted for stacking), and
    predicts ``softmax(log(estimator.predict_proba(P)) + biases_)``, i.e. the
    probabilities reweighted per class and renormalised.

    Args:
        estimator: an unfitted method (``SoftVoting()``, ``CaruanaSelection()``, ...).
        grid: candidate bias values (default -2..2 step 0.1).
        n_passes: coordinate-ascent passes over the 18 classes.
        scorer: ``(y_true, y_pred) -> float`` to tune for; None for macro F1.

    Attributes:
        estimator_: the fitted method.
        biases_: ``(18,)`` float64 added to the log-probabilities.
        oof_proba_: ``(n_images, 18)`` OOF probabilities with the biases applied.
    """

    def __init__(self, estimator: Ensembler, grid=DEFAULT_GRID, n_passes: int = 3, scorer: Scorer | None = None):
        self.estimator = estimator
        self.grid = grid
        self.n_passes = n_passes
        self.scorer = scorer

    def fit(self, P: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None) -> "BiasTuning":
        """Fit the method on ``(n_runs, n_images, 18)`` ``P``, labels ``y``, ``folds``; then the biases."""
        self.estimator_ = clone(self.estimator).fit(P, y, folds)
        self.biases_, _ = tune_biases(log_proba(self.estimator_.oof_proba_), y, self.grid, self.n_passes, self.scorer)
        self.oof_proba_ = self.apply(self.estimator_.oof_proba_)
        return self

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """``softmax(log(proba) + biases_)`` for ``(n_images, 18)`` probabilities."""
        return softmax(log_proba(proba) + self.biases_)

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        """``(n_images, 18)`` float64 biased probabilities for ``(n_runs, n_images, 18)`` ``P``."""
        return self.apply(self.estimator_.predict_proba(P))

    @property
    def weights_(self) -> np.ndarray:
        """The underlying method's ``weights_`` (AttributeError for stacking)."""
        return self.estimator_.weights_

