"""Stacking: a multinomial logistic regression on the members' OOF log-probabilities."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from kfold.labels import N_CLASSES

from .base import Ensembler, check_P, log_proba, softmax


class Stacking(Ensembler):
    """Multinomial logistic regression (scikit-learn ``LogisticRegression``, lbfgs) on stacked log-probabilities.

    Stacked generalization (Wolpert 1992): the features of an image are the
    members' log-probabilities concatenated, ``(n_runs * 18,)``, clipped at
    1e-7, standardised on the training rows (the scaling is folded into
    ``coef_`` and ``intercept_``, which apply to the raw log-probabilities;
    lbfgs converges ~10x faster). ``fit`` cross-fits like ``sklearn.model_selection.cross_val_predict``
    over the given ``folds``: the rows of fold ``f`` are predicted by a model
    trained on the other folds only, so ``oof_proba_`` never comes from a
    model that saw those rows. ``predict_proba`` (the test predictions) uses
    one more model fitted on all rows given to ``fit`` (not the mean of the
    fold models), whose ``coef_`` and ``intercept_`` are what the ensemble
    JSON stores.

    Args:
        C: inverse L2 strength of ``LogisticRegression`` (on standardised features).
        max_iter: lbfgs iterations.

    Attributes:
        coef_: ``(n_classes_seen, n_runs * 18)`` float64 of the all-rows model.
        intercept_: ``(n_classes_seen,)`` float64.
        classes_: ``(n_classes_seen,)`` classes present in the training labels;
            the other classes get probability 0.
        n_runs_: members.
        oof_proba_: ``(n_images, 18)`` cross-fitted OOF probabilities.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def _model(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fit on standardised ``X``; return ``(coef, intercept, classes)`` for the raw features."""
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        # BLAS and OpenMP threads fight each other on small machines: one thread is ~10x faster here.
        with threadpool_limits(limits=1):
            m = LogisticRegression(C=self.C, max_iter=self.max_iter).fit((X - mu) / sd, y)
        coef, intercept = m.coef_, m.intercept_
        if len(m.classes_) == 2:  # binary: one logit for class 1; as a softmax, class 0 gets logit 0
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        coef = coef / sd  # fold the scaling in: ((x - mu) / sd) @ c = x @ (c / sd) - mu @ (c / sd)
        return coef, intercept - coef @ mu, m.classes_.astype(np.int64)

    @staticmethod
    def features(P: np.ndarray) -> np.ndarray:
        """``(n_runs, n_images, 18)`` probabilities -> ``(n_images, n_runs * 18)`` log-probabilities."""
        P = check_P(P)
        return log_proba(P).transpose(1, 0, 2).reshape(P.shape[1], -1)

    @staticmethod
    def _proba(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), N_CLASSES))
        out[:, classes] = softmax(X @ coef.T + intercept)
        return out

    def fit(self, P: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None) -> "Stacking":
        """Cross-fit over ``folds`` for ``oof_proba_``, then fit on all rows for ``predict_proba``.

        Args:
            P: ``(n_runs, n_images, 18)`` float OOF probabilities.
            y: ``(n_images,)`` int labels.
            folds: ``(n_images,)`` int fold of each row (at least 2 distinct).

        Raises:
            ValueError: ``folds`` is None or has a single fold.
        """
        if folds is None or len(np.unique(folds)) < 2:
            raise ValueError("Stacking needs the folds (>= 2) to cross-fit its OOF predictions")
        X = self.features(P)
        y = np.asarray(y, dtype=np.int64)
        folds = np.asarray(folds)
        self.n_runs_ = len(P)
        oof = np.empty((len(X), N_CLASSES))
        for f in np.unique(folds):
            held = folds == f
            oof[held] = self._proba(*self._model(X[~held], y[~held]), X[held])
        self.coef_, self.intercept_, self.classes_ = self._model(X, y)
        self.oof_proba_ = oof
        return self

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        """``(n_images, 18)`` float64 probabilities of the all-rows model for ``(n_runs, n_images, 18)`` ``P``."""
        P = check_P(P, self.n_runs_)
        return self._proba(self.coef_, self.intercept_, self.classes_, self.features(P))
