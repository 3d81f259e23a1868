"""Soft voting and the geometric mean: the two unfitted blends."""
from __future__ import annotations

import numpy as np

from .base import Ensembler, WeightedMean, check_P, log_proba, softmax


class SoftVoting(WeightedMean):
    """Soft voting: the mean of the members' probabilities.

    scikit-learn's ``VotingClassifier(voting="soft")`` with equal weights.
    Nothing is learned from the labels; ``weights_`` is ``1 / n_runs`` each.

    Attributes:
        weights_: ``(n_runs,)`` float64, all ``1 / n_runs``.
        oof_proba_: ``(n_images, 18)`` mean OOF probabilities.
    """

    def fit(self, P: np.ndarray, y: np.ndarray | None = None, folds: np.ndarray | None = None) -> "SoftVoting":
        """Set equal weights. ``P``: ``(n_runs, n_images, 18)`` float probabilities; ``y`` and ``folds`` unused."""
        P = check_P(P)
        self.weights_ = np.full(len(P), 1.0 / len(P))
        return self._finish(P)


class GeometricMean(Ensembler):
    """Geometric mean of the members' probabilities, renormalised to sum to 1.

    ``softmax(mean_m log P[m])`` (probabilities clipped at 1e-7 before the
    log), i.e. the normalised product of experts (Hinton 2002, "Training
    products of experts by minimizing contrastive divergence"). It punishes
    a class any member finds unlikely more than soft voting does.

    Attributes:
        weights_: ``(n_runs,)`` float64, all ``1 / n_runs`` (weights of the log-probabilities).
        oof_proba_: ``(n_images, 18)`` OOF probabilities.
    """

    def fit(self, P: np.ndarray, y: np.ndarray | None = None, folds: np.ndarray | None = None) -> "GeometricMean":
        """Set equal weights. ``P``: ``(n_runs, n_images, 18)`` float probabilities; ``y`` and ``folds`` unused."""
        P = check_P(P)
        self.weights_ = np.full(len(P), 1.0 / len(P))
        self.oof_proba_ = self.predict_proba(P)
        return self

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        """``(n_images, 18)`` float64 renormalised geometric mean of ``(n_runs, n_images, 18)`` ``P``."""
        P = check_P(P, len(self.weights_))
        return softmax(np.einsum("r,rnc->nc", self.weights_, log_proba(P)))
