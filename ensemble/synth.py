"""Synthetic runs for trying the ensemble stage without training: noisy softmax of the labels.

Used by the tests and the benchmark; handy in a notebook too::

    from ensemble.synth import write_synthetic_runs
    write_synthetic_runs("oof_demo", n_people=400, n_runs=4)
    # kf ensemble --oof oof_demo --method all --bias
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kfold.folds import HOLDOUT_COLS, HOLDOUT_CSV, folds_fingerprint, holdout_fingerprint
from kfold.io import write_csv, write_json
from kfold.labels import N_CLASSES
from kfold.runrecord import RunRecord, write_run_json
from kfold.stagefiles import KEY_COLS, write_probs_csv

from .base import softmax

#: class frequencies shaped like the competition's (old people and incorrect/normal masks are rare)
CLASS_WEIGHTS = np.array([5, 4, 0.8, 6, 7, 1.2] * 1, dtype=float)


def synthetic_labels(n_people: int, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """A fold table ``image, person, label, fold`` of ``n_people`` x 7 images (5 mask, 1 incorrect, 1 normal).

    People are assigned to folds round-robin after shuffling; gender and age
    band are drawn per person with competition-like frequencies.
    """
    rng = np.random.default_rng(seed)
    ga = rng.choice(6, size=n_people, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())
    fold = rng.permutation(np.arange(n_people) % k)
    rows = []
    for p in range(n_people):
        person = f"{p:06d}_synthetic"
        for stem, mask in (("mask1", 0), ("mask2", 0), ("mask3", 0), ("mask4", 0), ("mask5", 0),
                           ("incorrect_mask", 1), ("normal", 2)):
            rows.append((f"train/images/{person}/{stem}.jpg", person, int(mask * 6 + ga[p]), int(fold[p])))
    return pd.DataFrame(rows, columns=["image", "person", "label", "fold"])


def synthetic_probs(y: np.ndarray, n_runs: int, strength: float | list[float] = 2.0, shared: float = 0.5,
                    seed: int = 0) -> np.ndarray:
    """Noisy softmax probabilities of ``n_runs`` runs for labels ``y``.

    Logits are ``strength[m] * onehot(y) + noise``; the noise mixes a part
    shared by all runs (weight ``shared``, correlated errors) and a part of
    each run.

    Returns:
        ``(n_runs, len(y), 18)`` float64 probabilities, rows summing to 1.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    s = np.broadcast_to(np.asarray(strength, dtype=float), (n_runs,))
    common = rng.normal(size=(len(y), N_CLASSES))
    out = np.empty((n_runs, len(y), N_CLASSES))
    for m in range(n_runs):
        z = shared * common + (1 - shared) * rng.normal(size=(len(y), N_CLASSES)) * 1.4
        z[np.arange(len(y)), y] += s[m]
        out[m] = softmax(z)
    return out


def write_synthetic_runs(oof_dir: str | Path, n_people: int = 100, n_runs: int = 3, k: int = 5, n_test: int = 70,
                         strength: float | list[float] | None = None, seed: int = 0, shared: float = 0.5,
                         n_holdout_people: int = 0) -> list[str]:
    """Write ``folds.csv``/``folds.json`` and runs ``run0..`` (``oof.csv``, ``test.csv``, ``run.json``).

    Args:
        shared: weight of the noise shared by all runs (0: independent errors, see :func:`synthetic_probs`).
        n_holdout_people: with > 0, a local holdout of that many more people
            (``holdout.csv`` beside ``folds.csv`` and in every run, as ``kf folds --holdout`` and ``kf train`` write).

    Returns:
        The run names.
    """
    oof_dir = Path(oof_dir)
    oof_dir.mkdir(parents=True, exist_ok=True)
    folds = synthetic_labels(n_people + n_holdout_people, k, seed)
    hold = folds[folds["person"] >= f"{n_people:06d}"].reset_index(drop=True)[HOLDOUT_COLS]
    folds = folds[folds["person"] < f"{n_people:06d}"].reset_index(drop=True)
    fp = folds_fingerprint(folds)
    write_csv(folds, oof_dir / "folds.csv")
    meta = {"k": k, "seed": seed, "n_images": len(folds), "n_people": n_people, "settings_fingerprint": "synthetic",
            "folds_fingerprint": fp}
    if n_holdout_people:
        write_csv(hold, oof_dir / HOLDOUT_CSV)
        meta.update(holdout=n_holdout_people / (n_people + n_holdout_people), n_holdout_people=n_holdout_people,
                    n_holdout_images=len(hold), holdout_fingerprint=holdout_fingerprint(hold))
    write_json(meta, oof_dir / "folds.json")
    if strength is None:
        strength = list(np.linspace(1.5, 2.5, n_runs))
    P = synthetic_probs(folds["label"].to_numpy(), n_runs, strength, shared, seed=seed + 1)
    H = synthetic_probs(hold["label"].to_numpy(), n_runs, strength, shared, seed=seed + 4)
    y_test = np.random.default_rng(seed + 2).integers(0, N_CLASSES, n_test)
    T = synthetic_probs(y_test, n_runs, strength, shared, seed=seed + 3)
    ids = [f"{i:04x}{'ab' * 4}.jpg" for i in range(n_test)]
    names = []
    for m in range(n_runs):
        name = f"run{m}"
        d = oof_dir / name
        d.mkdir(exist_ok=True)
        write_probs_csv(d / "oof.csv", folds[KEY_COLS], P[m])
        write_probs_csv(d / "test.csv", pd.DataFrame({"ImageID": ids}), T[m])
        if n_holdout_people:
            write_probs_csv(d / HOLDOUT_CSV, hold[HOLDOUT_COLS], H[m])
        write_run_json(RunRecord.synthetic(name, {"model": "synthetic", "strength": float(np.atleast_1d(strength)[m])},
                                           fp, k), d)
        names.append(name)
    return names
