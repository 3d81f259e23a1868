"""Uncertainty of every estimate and the noise-aware choice of ``ensemble/best``.

A macro F1 over 18 classes, some with a handful of images, moves by a few
hundredths when a few people change: an option that beats the best single
run by +0.005 on one sample of people loses on the next. Two tools:

* :func:`bootstrap_macro_f1`: a person-level (cluster) bootstrap. People, not
  images, are resampled with replacement (the seven images of a person are
  not independent), the same resamples for every option, so differences
  between options are paired (Efron & Tibshirani 1993, "An Introduction to
  the Bootstrap", ch. 16; the cluster bootstrap of Field & Welsh 2007). One
  ``np.bincount`` of per-person confusion matrices, then a matrix product
  with the resample counts: thousands of resamples of 14 options in a second.
* :func:`choose`: the rule that picks ``ensemble/best``. The best single run
  is the default; a blend replaces it only when it beats that run in at
  least ``confidence`` of the paired resamples (a one-sided bootstrap test),
  and among such blends the highest point estimate wins. The rule prefers
  the simpler option unless the gain is credible, and says why it chose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kfold.labels import N_CLASSES
from kfold.metrics import f1_from_confusion

from .base import Scorer, get_scorer, is_default_scorer

#: default number of person-level bootstrap resamples
N_BOOT = 1000
#: default share of paired resamples in which a blend must beat the best run
CONFIDENCE = 0.9


def bootstrap_macro_f1(y: np.ndarray, preds: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT,
                       seed: int = 0, n_classes: int = N_CLASSES) -> np.ndarray:
    """Macro F1 of each prediction vector on ``n_boot`` person-level bootstrap resamples (paired).

    Args:
        y: ``(n_images,)`` int labels.
        preds: ``(n_options, n_images)`` int predicted classes.
        groups: ``(n_images,)`` person of each image (any hashable values).
        n_boot: number of resamples.
        seed: seed of ``numpy.random.default_rng`` (the same resamples for every option).

    Returns:
        ``(n_options, n_boot)`` float64 macro F1; column ``b`` of every row is
        scored on the same resampled people.
    """
    preds = np.atleast_2d(np.asarray(preds, dtype=np.int64))
    y = np.asarray(y, dtype=np.int64)
    _, person = np.unique(np.asarray(groups), return_inverse=True)
    n_people, cc = int(person.max()) + 1, n_classes * n_classes
    # per-person confusion counts of every option: (n_options, n_people, C*C)
    idx = person[None, :] * cc + y[None, :] * n_classes + preds
    idx += (np.arange(len(preds)) * n_people * cc)[:, None]
    per_person = np.bincount(idx.ravel(), minlength=len(preds) * n_people * cc).reshape(len(preds), n_people, cc)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_people, size=(n_boot, n_people))
    counts = np.stack([np.bincount(d, minlength=n_people) for d in draws]).astype(np.float64)  # (n_boot, n_people)
    cm = np.einsum("bp,opk->obk", counts, per_person.astype(np.float64))
    return f1_from_confusion(cm.reshape(len(preds), n_boot, n_classes, n_classes)).mean(axis=-1)


def bootstrap_scores(y: np.ndarray, preds: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                     scorer: Scorer | None = None) -> np.ndarray:
    """:func:`bootstrap_macro_f1` for any scorer: the same paired person-level resamples (same ``seed``, same draws).

    Macro F1 (``scorer`` None) takes the vectorised path; another scorer is
    called once per option and resample on the resampled images.

    Args:
        y, preds, groups, n_boot, seed: as in :func:`bootstrap_macro_f1`.
        scorer: ``(y_true, y_pred) -> float``; None for macro F1.

    Returns:
        ``(n_options, n_boot)`` float64 scores.
    """
    if is_default_scorer(scorer):
        return bootstrap_macro_f1(y, preds, groups, n_boot, seed)
    score = get_scorer(scorer)
    preds = np.atleast_2d(np.asarray(preds, dtype=np.int64))
    y = np.asarray(y, dtype=np.int64)
    _, person = np.unique(np.asarray(groups), return_inverse=True)
    n_people = int(person.max()) + 1
    rows_of = [np.flatnonzero(person == p) for p in range(n_people)]
    draws = np.random.default_rng(seed).integers(0, n_people, size=(n_boot, n_people))
    out = np.empty((len(preds), n_boot))
    for b, d in enumerate(draws):
        idx = np.concatenate([rows_of[p] for p in d])
        out[:, b] = [score(y[idx], p[idx]) for p in preds]
    return out


@dataclass
class Choice:
    """What :func:`choose` picked and why.

    Attributes:
        index: row of the chosen option.
        baseline: row of the best single run.
        p_better: ``(n_options,)`` share of paired resamples in which each option beats the baseline.
        reason: one sentence for the user.
        on: what was compared: ``estimate`` (pooled nested macro F1) or ``holdout``.
    """

    index: int
    baseline: int
    p_better: np.ndarray
    reason: str
    on: str = "estimate"


def choose(names: list[str], kinds: list[str], estimate: np.ndarray, boot: np.ndarray,
           confidence: float = CONFIDENCE, what: str = "pooled nested macro F1", on: str = "estimate") -> Choice:
    """Pick the best single run unless a blend beats it credibly.

    Args:
        names, kinds: per option, its name and ``run`` or ``ensemble``.
        estimate: ``(n_options,)`` point estimates (higher is better).
        boot: ``(n_options, n_boot)`` paired bootstrap resamples of the same estimates.
        confidence: share of resamples in which a blend must beat the best run (0.5: the point estimate alone).
        what: the estimate's name, for the reason.
        on: recorded in the :class:`Choice` (``estimate`` or ``holdout``).

    Returns:
        A :class:`Choice`.

    Raises:
        ValueError: no option of kind ``run``.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    runs = [i for i, k in enumerate(kinds) if k == "run"]
    if not runs:
        raise ValueError("choose() needs at least one single run as the baseline")
    base = max(runs, key=lambda i: estimate[i])
    p_better = (boot > boot[base]).mean(axis=1)
    credible = [i for i, k in enumerate(kinds) if k != "run" and estimate[i] > estimate[base] and p_better[i] >= confidence]
    if credible:
        pick = max(credible, key=lambda i: estimate[i])
        reason = (f"{names[pick]}: {what} {estimate[pick]:.4f}, beats the best single run {names[base]} "
                  f"({estimate[base]:.4f}) by {estimate[pick] - estimate[base]:+.4f} in {p_better[pick]:.0%} of "
                  f"person-bootstrap resamples (>= {confidence:.0%} required)")
        return Choice(pick, base, p_better, reason, on)
    blends = [i for i, k in enumerate(kinds) if k != "run"]
    if blends:
        top = max(blends, key=lambda i: estimate[i])
        why = (f"the best blend, {names[top]} ({estimate[top]:.4f}, {estimate[top] - estimate[base]:+.4f}), beats it in "
               f"{p_better[top]:.0%} of person-bootstrap resamples, < {confidence:.0%} required")
    else:
        why = "no blend was fitted"
    return Choice(base, base, p_better, f"{names[base]}: the best single run ({what} {estimate[base]:.4f}); {why}", on)
