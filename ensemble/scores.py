"""The scores of ``kf ensemble``: fit a method with its nested estimate, and the table that chooses ``ensemble/best``.

Every score takes a ``scorer`` (``(y_true, y_pred) -> float``, higher is
better); None is :func:`kfold.metrics.macro_f1`, the competition metric, with
its vectorised paths. The table's columns keep their ``*_macro_f1`` names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kfold.io import ParamError
from kfold.runset import RunSet

from .base import Scorer, get_scorer
from .evaluate import fold_scores, nested_fits, score_row
from .methods import ensemble_name, make_method
from .selection import CONFIDENCE, N_BOOT, Choice, bootstrap_scores, choose


@dataclass
class Fitted:
    """One fitted variant of a method.

    Attributes:
        name: output name (``caruana``, ``caruana+bias``).
        estimator: the method fitted on all OOF rows.
        oof_proba: ``(n_images, 18)`` its OOF probabilities (``estimator.oof_proba_``).
        test_proba: ``(n_test, 18)`` its test probabilities.
        per_fold: ``(n_folds,)`` nested macro F1 of each held-out fold.
        nested_proba: ``(n_images, 18)`` nested probabilities, each fold's rows
            predicted by the fit without that fold (pooled, scored once).
        holdout_proba: ``(n_holdout, 18)`` its local-holdout probabilities, or None.
    """

    name: str
    estimator: object
    oof_proba: np.ndarray
    test_proba: np.ndarray
    per_fold: np.ndarray
    nested_proba: np.ndarray | None = None
    holdout_proba: np.ndarray | None = None


def fit_method(method: str, runs: RunSet, bias: bool = False, base_name: str | None = None,
               scorer: Scorer | None = None) -> list[Fitted]:
    """Fit ``method`` on all OOF rows and estimate it nested over folds.

    With ``bias`` two variants come back, the plain method and the
    bias-tuned one; both share the same fits (the bias-tuned estimator holds
    the plain one as ``estimator_``), in fold loop and on all rows.

    Args:
        method: a key of :data:`ensemble.methods.METHODS`.
        runs: the loaded runs.
        bias: also return the bias-tuned variant.
        base_name: output name instead of the method's.
        scorer: ``(y_true, y_pred) -> float`` that Caruana, bias tuning and the
            nested per-fold scores use; None for macro F1 (the competition metric).

    Returns:
        ``[plain]`` or ``[plain, plain+bias]``.
    """
    P, y, folds = runs.oof, runs.y, runs.folds
    score = get_scorer(scorer)
    est = make_method(method, bias=bias, scorer=scorer).fit(P, y, folds)
    plain_pooled, bias_pooled = np.zeros(P.shape[1:]), np.zeros(P.shape[1:])
    plain_scores, bias_scores = [], []
    for _, held, fold_est in nested_fits(make_method(method, bias=bias, scorer=scorer), P, y, folds):
        if bias:
            bias_pooled[held] = fold_est.predict_proba(P[:, held])
            bias_scores.append(score(y[held], bias_pooled[held].argmax(axis=1)))
            fold_est = fold_est.estimator_
        plain_pooled[held] = fold_est.predict_proba(P[:, held])
        plain_scores.append(score(y[held], plain_pooled[held].argmax(axis=1)))
    base_name = base_name or method
    plain = est.estimator_ if bias else est

    def holdout(e):
        return None if runs.holdout is None else e.predict_proba(runs.holdout)

    out = [Fitted(ensemble_name(base_name, False), plain, plain.oof_proba_, plain.predict_proba(runs.test),
                  np.array(plain_scores), plain_pooled, holdout(plain))]
    if bias:
        out.append(Fitted(ensemble_name(base_name, True), est, est.oof_proba_, est.predict_proba(runs.test),
                          np.array(bias_scores), bias_pooled, holdout(est)))
    return out


def member_rows(runs: RunSet, scorer: Scorer | None = None) -> list[dict]:
    """Score rows of the single runs: OOF score and per-fold score (already held-out); macro F1 by default."""
    return [score_row(name, "run", runs.oof[m], runs.y, fold_scores(runs.oof[m], runs.y, runs.folds, scorer),
                      scorer=scorer)
            for m, name in enumerate(runs.names)]


def score_table(runs: RunSet, fitted: list[Fitted], select_on: str = "estimate", confidence: float = CONFIDENCE,
                n_boot: int = N_BOOT, scorer: Scorer | None = None) -> tuple[pd.DataFrame, Choice]:
    """The scores table of the runs and fitted variants, with spreads, and the choice of ``ensemble/best``.

    Columns beside :func:`ensemble.evaluate.score_row`'s: ``pooled_sd`` and
    ``pooled_p_better`` (person-level bootstrap of ``pooled_macro_f1``, the
    selection estimate: its standard deviation and the share of paired
    resamples in which the option beats the best single run), and with a
    local holdout ``holdout_macro_f1``, ``holdout_sd`` (bootstrap over holdout
    people), ``holdout_p_better``. ``chosen`` marks ``ensemble/best``.

    Args:
        select_on: ``estimate`` (the pooled nested macro F1; the default) or
            ``holdout`` (the holdout macro F1, for teams that want a
            public-leaderboard-like choice; the holdout then no longer is an
            unbiased check of the chosen option).
        confidence: share of paired resamples in which a blend must beat the
            best single run to be chosen (:func:`ensemble.selection.choose`).
        n_boot: bootstrap resamples.
        scorer: ``(y_true, y_pred) -> float`` of every ``*_macro_f1`` column and
            its bootstrap; None for macro F1 (the competition metric).

    Raises:
        ParamError: ``select_on="holdout"`` without a holdout.
    """
    score = get_scorer(scorer)
    rows = member_rows(runs, scorer) + [score_row(f.name, "ensemble", f.oof_proba, runs.y, f.per_fold, f.nested_proba,
                                                  scorer=scorer) for f in fitted]
    table = pd.DataFrame(rows)
    names, kinds = list(table["name"]), list(table["kind"])
    pooled = [runs.oof[m] for m in range(len(runs.names))] + [f.nested_proba for f in fitted]
    boot = bootstrap_scores(runs.y, np.stack([p.argmax(axis=1) for p in pooled]), runs.keys["person"].to_numpy(), n_boot,
                            scorer=scorer)
    by_estimate = choose(names, kinds, table["pooled_macro_f1"].to_numpy(), boot, confidence)
    table.insert(5, "pooled_sd", boot.std(axis=1, ddof=1))
    table.insert(6, "pooled_p_better", by_estimate.p_better)
    choice = by_estimate
    if runs.holdout is not None:
        hy = runs.holdout_y
        hold = [runs.holdout[m] for m in range(len(runs.names))] + [f.holdout_proba for f in fitted]
        hpred = np.stack([p.argmax(axis=1) for p in hold])
        hboot = bootstrap_scores(hy, hpred, runs.holdout_keys["person"].to_numpy(), n_boot, scorer=scorer)
        table.insert(7, "holdout_macro_f1", [score(hy, p) for p in hpred])
        table.insert(8, "holdout_sd", hboot.std(axis=1, ddof=1))
        by_holdout = choose(names, kinds, table["holdout_macro_f1"].to_numpy(), hboot, confidence, "holdout macro F1",
                            on="holdout")
        table.insert(9, "holdout_p_better", by_holdout.p_better)
        if select_on == "holdout":
            choice = by_holdout
    elif select_on == "holdout":
        raise ParamError("{select_on} holdout: these runs have no local holdout (make folds with --holdout 0.2 and retrain)",
                         "select_on")
    table["chosen"] = [i == choice.index for i in range(len(table))]
    return table, choice


def format_table(table: pd.DataFrame) -> str:
    """Two text blocks: macro F1 (in-sample, nested, pooled with spread, holdout) and accuracy; then per-class F1.

    The per-fold columns stay in ``<label>_scores.csv`` only.
    """
    summary = table[[c for c in table.columns if not c.startswith(("f1_", "fold"))]].set_index("name")
    per_class = table.set_index("name")[[c for c in table.columns if c.startswith("f1_")]]
    per_class.columns = [c[3:] for c in per_class.columns]
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        return (summary.to_string(float_format=lambda v: f"{v:.4f}") + "\n\nper-class F1 (class = mask*6 + gender*3 + age band):\n"
                + per_class.to_string(float_format=lambda v: f"{v:.3f}"))


__all__ = ["Fitted", "fit_method", "format_table", "member_rows", "score_table"]
