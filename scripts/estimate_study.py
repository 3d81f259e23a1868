"""Which OOF estimate predicts the local-holdout score, and which test-time pipeline scores best there?

Usage (an --oof folder made with ``kf folds --holdout``; its runs trained)::

    python scripts/estimate_study.py --oof runs/h20 [--runs lite0,mnv3] [--out docs/study.csv]

For every ``kf ensemble --method all --bias`` option it prints the estimates
kf can compute from OOF rows alone (in-sample, nested mean per fold, nested
pooled, the .632 mix) and the holdout macro F1 of three ways of predicting the
holdout (= the test set) with the option fitted on all OOF rows:

* ``fold-mean``: the option applied to the mean of the K fold models
  (what ``kf train`` writes to test.csv and holdout.csv);
* ``per-fold``: the option applied to each fold model's probabilities (the
  kind of input it was fitted on), the K outputs averaged;
* ``sharpened``: the fold-mean probabilities of each run sharpened by a power
  ``s`` (``softmax(s * log p)``), ``s`` fitted on the unlabelled test images
  so that their mean top probability equals that of single fold models.

Then the signed and absolute errors of each estimate against each
pipeline's holdout score, and the person-bootstrap spread of the holdout.
Nothing here is fitted on the holdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import brentq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble.base import log_proba, softmax  # noqa: E402
from ensemble.methods import METHODS  # noqa: E402
from ensemble.pipeline import fit_method  # noqa: E402
from ensemble.selection import bootstrap_macro_f1  # noqa: E402
from kfold.metrics import macro_f1  # noqa: E402
from kfold.runset import load_runs  # noqa: E402
from kfold.stagefiles import PROB_COLS  # noqa: E402


def fold_probs(run_dir: Path, k: int, name: str) -> np.ndarray:
    """``(k, n, 18)`` per-fold probabilities of ``fold<f>/<name>.csv``."""
    return np.stack([pd.read_csv(run_dir / f"fold{f}" / f"{name}.csv")[PROB_COLS].to_numpy(np.float64) for f in range(k)])


def sharpen_power(per_fold_test: np.ndarray) -> float:
    """Power ``s`` with mean max of ``softmax(s log mean_k p_k)`` equal to the mean max of single ``p_k``."""
    target = per_fold_test.max(axis=-1).mean()
    logm = log_proba(per_fold_test.mean(axis=0))
    return float(brentq(lambda s: softmax(s * logm).max(axis=-1).mean() - target, 0.5, 20.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oof", required=True)
    ap.add_argument("--runs", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args()
    rs = load_runs(a.oof, a.runs.split(",") if a.runs else None)
    if rs.holdout is None:
        sys.exit(f"{a.oof}: no holdout (kf folds --holdout 0.2, then retrain)")
    hy, k = rs.holdout_y, rs.k
    per_fold_hold = np.stack([fold_probs(d, k, "holdout") for d in rs.dirs], axis=1)  # (k, runs, n, 18)
    per_fold_test = [fold_probs(d, k, "test") for d in rs.dirs]
    powers = np.array([sharpen_power(t) for t in per_fold_test])
    sharp_hold = np.stack([softmax(s * log_proba(h)) for s, h in zip(powers, rs.holdout)])
    print(f"runs: {', '.join(rs.names)}; sharpening powers {np.round(powers, 3).tolist()}")
    rows, hold_preds = [], []
    for m, name in enumerate(rs.names):
        pools = {"fold-mean": rs.holdout[m], "per-fold": per_fold_hold[:, m].mean(axis=0), "sharpened": sharp_hold[m]}
        oof = macro_f1(rs.y, rs.oof[m].argmax(1))
        rows.append({"name": name, "in_sample": oof, "nested_mean": np.mean([macro_f1(rs.y[rs.folds == f],
                     rs.oof[m][rs.folds == f].argmax(1)) for f in np.unique(rs.folds)]), "pooled": oof, "e632": oof,
                     **{f"holdout_{p}": macro_f1(hy, v.argmax(1)) for p, v in pools.items()}})
        hold_preds.append(rs.holdout[m].argmax(1))
    for method in METHODS:
        for f in fit_method(method, rs, bias=True):
            est = f.estimator
            pools = {"fold-mean": f.holdout_proba,
                     "per-fold": np.mean([est.predict_proba(per_fold_hold[j]) for j in range(k)], axis=0),
                     "sharpened": est.predict_proba(sharp_hold)}
            ins = macro_f1(rs.y, f.oof_proba.argmax(1))
            pooled = macro_f1(rs.y, f.nested_proba.argmax(1))
            rows.append({"name": f.name, "in_sample": ins, "nested_mean": float(np.mean(f.per_fold)), "pooled": pooled,
                         "e632": 0.368 * ins + 0.632 * pooled,
                         **{f"holdout_{p}": macro_f1(hy, v.argmax(1)) for p, v in pools.items()}})
            hold_preds.append(f.holdout_proba.argmax(1))
    t = pd.DataFrame(rows).set_index("name")
    boot = bootstrap_macro_f1(hy, np.stack(hold_preds), rs.holdout_keys["person"].to_numpy(), a.n_boot)
    t["holdout_sd"] = boot.std(axis=1, ddof=1)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(t.round(4).to_string())
        print("\nerror of each estimate against each pipeline's holdout score (mean signed / mean absolute):")
        for p in ("fold-mean", "per-fold", "sharpened"):
            for e in ("in_sample", "nested_mean", "pooled", "e632"):
                err = t[e] - t[f"holdout_{p}"]
                print(f"  {p:<10} {e:<12} signed {err.mean():+.4f}  absolute {err.abs().mean():.4f}")
        print(f"mean holdout person-bootstrap sd: {t['holdout_sd'].mean():.4f}")
    if a.out:
        t.to_csv(a.out, float_format="%.4f")


if __name__ == "__main__":
    main()
