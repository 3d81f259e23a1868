"""The estimator interface shared by every ensembling method.

Methods look like scikit-learn estimators: hyper-parameters in ``__init__``,
``fit(P, y, folds=None)`` learns attributes ending in ``_``, and
``predict_proba(P)`` returns probabilities. ``P`` is always the stacked
probabilities of the members, ``(n_runs, n_images, 18)`` float, each row
summing to 1 (validated once by :func:`kfold.runset.load_runs`; inside the
library the arrays are trusted). ``sklearn.base.clone`` works on every method.

After ``fit`` every method also holds ``oof_proba_``: the ``(n_images, 18)``
probabilities it writes to its ``oof.csv``. For a blend of probabilities
this is ``predict_proba`` of the fitted rows (in-sample); for stacking it is
the cross-fitted prediction, each fold predicted by a model that never saw it.
"""
from __future__ import annotations

import importlib
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator

from kfold.io import KfError
from kfold.labels import N_CLASSES
from kfold.metrics import macro_f1

#: a score of predicted classes, higher is better: ``scorer(y_true, y_pred) -> float`` on ``(n_images,)`` int arrays
Scorer = Callable[[np.ndarray, np.ndarray], float]


def get_scorer(scorer: Scorer | str | None) -> Scorer:
    """The scorer to use: :func:`kfold.metrics.macro_f1` (the competition metric) for None, else ``scorer``.

    A string ``"module:function"`` (as :func:`scorer_name` records it in an ensemble JSON) is imported.

    Raises:
        KfError: a string that names no importable function.
    """
    if scorer is None:
        return macro_f1
    if isinstance(scorer, str):
        mod, _, attr = scorer.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError):
            raise KfError(f"scorer {scorer!r}: not an importable function (module:function)") from None
    return scorer


def is_default_scorer(scorer: Scorer | str | None) -> bool:
    """True for the competition metric, for which the vectorised macro F1 paths apply."""
    return scorer is None or scorer is macro_f1


def scorer_name(scorer: Scorer | str | None) -> str | None:
    """``"module:function"`` of a custom scorer for JSON, None for the default."""
    if is_default_scorer(scorer):
        return None
    if isinstance(scorer, str):
        return scorer
    return f"{scorer.__module__}:{scorer.__qualname__}"

#: probabilities are clipped to [EPS, 1] before a log
EPS = 1e-7


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, C)`` logits (log-probabilities plus biases)."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_proba(p: np.ndarray) -> np.ndarray:
    """``log(clip(p, EPS, 1))``: probabilities to log-probabilities without ``-inf``."""
    return np.log(np.clip(p, EPS, 1.0))


def check_P(P: np.ndarray, n_runs: int | None = None) -> np.ndarray:
    """Return ``P`` as float64 ``(n_runs, n_images, 18)``.

    Raises:
        ValueError: wrong number of dimensions, classes, or runs (``n_runs``
            from ``fit``).
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 3 or P.shape[2] != N_CLASSES:
        raise ValueError(f"P must have shape (n_runs, n_images, {N_CLASSES}), got {P.shape}")
    if n_runs is not None and P.shape[0] != n_runs:
        raise ValueError(f"P has {P.shape[0]} runs, the ensemble was fitted on {n_runs}")
    return P


class Ensembler(BaseEstimator):
    """Base of the ensembling methods; see the module docstring."""

    def fit(self, P: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None) -> "Ensembler":  # pragma: no cover
        raise NotImplementedError

    def predict_proba(self, P: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def predict(self, P: np.ndarray) -> np.ndarray:
        """``(n_images,)`` int64 class with the highest probability."""
        return self.predict_proba(P).argmax(axis=1)


class WeightedMean(Ensembler):
    """Base of the methods that predict a weighted mean of the members' probabilities.

    Subclasses set ``weights_``, ``(n_runs,)`` float64, ``>= 0``, summing to 1.
    """

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        """Weighted mean ``sum_m weights_[m] * P[m]``.

        Args:
            P: ``(n_runs, n_images, 18)`` float probabilities.

        Returns:
            ``(n_images, 18)`` float64 probabilities, rows summing to 1.
        """
        P = check_P(P, len(self.weights_))
        return np.einsum("r,rnc->nc", self.weights_, P)  # einsum: no BLAS threads

    def _finish(self, P: np.ndarray) -> "WeightedMean":
        self.oof_proba_ = self.predict_proba(P)
        return self
