"""Blend weights fitted on OOF probabilities by minimising the log-loss on the simplex."""
from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize

from .base import WeightedMean, check_P

log = logging.getLogger(__name__)


class OptimizedWeights(WeightedMean):
    """Weighted mean of the members' probabilities, weights fitted on OOF rows.

    Minimises the log-loss ``-mean_i log(sum_m w_m P[m, i, y_i])`` subject to
    ``w >= 0`` and ``sum(w) = 1`` with ``scipy.optimize.minimize(method="SLSQP")``
    (Kraft 1988, sequential least squares programming) and the analytic
    gradient, starting from equal weights. The log-loss is convex in ``w``
    over the simplex, so the optimum does not depend on the start. This is
    the usual Kaggle "optimise blend weights on OOF" recipe; the log-loss is
    a smooth stand-in for macro F1 (add ``BiasTuning`` to aim at macro F1).

    Args:
        max_iter: SLSQP iterations.
        tol: SLSQP ``ftol``.

    Attributes:
        weights_: ``(n_runs,)`` float64, ``>= 0``, sum 1.
        loss_: the final OOF log-loss.
        n_iter_: SLSQP iterations used.
        oof_proba_: ``(n_images, 18)`` in-sample OOF probabilities.
    """

    def __init__(self, max_iter: int = 200, tol: float = 1e-9):
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, P: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None) -> "OptimizedWeights":
        """Fit the weights.

        Args:
            P: ``(n_runs, n_images, 18)`` float OOF probabilities.
            y: ``(n_images,)`` int labels 0..17.
            folds: unused (the weights are fitted on all rows given).

        Returns:
            self
        """
        P = check_P(P)
        y = np.asarray(y, dtype=np.int64)
        n_runs = len(P)
        Q = P[:, np.arange(P.shape[1]), y]  # (n_runs, n_images): each member's probability of the true class

        def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            mix = np.maximum(w @ Q, 1e-15)
            return float(-np.log(mix).mean()), -(Q / mix).mean(axis=1)

        w0 = np.full(n_runs, 1.0 / n_runs)
        if n_runs == 1:
            w, res = w0, None
        else:
            res = minimize(loss_grad, w0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n_runs,
                           constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                           options={"maxiter": self.max_iter, "ftol": self.tol})
            if not res.success:
                log.warning("weights: SLSQP did not converge (%s); using its last weights", res.message)
            w = np.clip(res.x, 0.0, None)
            w = w / w.sum() if w.sum() > 0 else w0
        self.weights_ = w
        self.loss_ = loss_grad(w)[0]
        self.n_iter_ = 0 if res is None else int(res.nit)
        return self._finish(P)
