"""Greedy ensemble selection with replacement, scored directly by the metric (macro F1 by default)."""
from __future__ import annotations

import numpy as np

from .base import Scorer, WeightedMean, check_P, get_scorer


class CaruanaSelection(WeightedMean):
    """Greedy forward selection of members with replacement (Caruana et al. 2004).

    Caruana, Niculescu-Mizil, Crew, Ksikes, "Ensemble selection from
    libraries of models", ICML 2004, in AutoGluon's variant
    (``autogluon.core.models.greedy_ensemble.EnsembleSelection``): start from
    an empty ensemble; at each of ``n_iterations`` steps add (again, if it is
    already in) the member whose addition gives the best macro F1 of the
    averaged probabilities; finally keep the ensemble of the best step
    (earliest among equals). A member's weight is how many times it was
    picked, divided by the number of picks. Ties between candidates go to the
    first member in order (AutoGluon draws one at random), so the result is
    deterministic.

    Args:
        n_iterations: selection steps (AutoGluon's ``ensemble_size``; >= 25 recommended).
        scorer: ``(y_true, y_pred) -> float``, higher is better; None for
            :func:`kfold.metrics.macro_f1` (the competition metric).

    Attributes:
        weights_: ``(n_runs,)`` float64, ``>= 0``, sum 1.
        indices_: member picked at each kept step.
        trajectory_: ``(n_iterations,)`` OOF score after each step.
        best_iteration_: number of steps kept (1-based).
        oof_proba_: ``(n_images, 18)`` in-sample OOF probabilities.
    """

    def __init__(self, n_iterations: int = 25, scorer: Scorer | None = None):
        self.n_iterations = n_iterations
        self.scorer = scorer

    def fit(self, P: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None) -> "CaruanaSelection":
        """Select members on ``(n_runs, n_images, 18)`` OOF probabilities ``P`` and ``(n_images,)`` labels ``y``.

        ``folds`` is unused. Returns self.

        Raises:
            ValueError: ``n_iterations < 1``.
        """
        if self.n_iterations < 1:
            raise ValueError("n_iterations must be >= 1")
        P = check_P(P)
        y = np.asarray(y, dtype=np.int64)
        n_runs = len(P)
        score = get_scorer(self.scorer)
        running = np.zeros(P.shape[1:])  # sum of picked members' probabilities; argmax(sum) == argmax(mean)
        picks, trajectory = [], []
        for _ in range(self.n_iterations):
            scores = [score(y, (running + P[m]).argmax(axis=1)) for m in range(n_runs)]
            best = int(np.argmax(scores))
            running += P[best]
            picks.append(best)
            trajectory.append(scores[best])
        self.trajectory_ = np.asarray(trajectory)
        self.best_iteration_ = int(np.argmax(self.trajectory_)) + 1
        self.indices_ = picks[: self.best_iteration_]
        self.weights_ = np.bincount(self.indices_, minlength=n_runs) / self.best_iteration_
        return self._finish(P)
