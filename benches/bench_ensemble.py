"""Benchmark of the ensemble methods at competition size (not a test).

5 runs x 18,900 OOF images x 18 classes (the competition's 2,700 people x 7
images). Goal: Caruana selection (25 iterations) + bias tuning under 2 s on
a 2-core machine. Prints a table: median of the repeats, with min-max.

    .venv/bin/python benches/bench_ensemble.py [--repeats 5] [--stacking]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
from sklearn.metrics import f1_score

from ensemble import (BiasTuning, CaruanaSelection, OptimizedWeights, SoftVoting, Stacking, load_runs, macro_f1,
                      nested_estimate, tune_biases)
from ensemble.base import log_proba
from ensemble.synth import synthetic_labels, synthetic_probs, write_synthetic_runs


def timeit(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--people", type=int, default=2700)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stacking", action="store_true", help="also time stacking (cross-fitted, 6 logistic regressions)")
    args = ap.parse_args()

    folds_df = synthetic_labels(args.people, k=5, seed=0)
    y, folds = folds_df["label"].to_numpy(), folds_df["fold"].to_numpy()
    P = synthetic_probs(y, args.runs, list(np.linspace(1.5, 2.5, args.runs)), seed=1)
    pred = P.mean(0).argmax(1)
    r = args.repeats
    cases = [
        ("macro_f1 (bincount), 1 call", lambda: macro_f1(y, pred), r * 20),
        ("sklearn f1_score macro, 1 call", lambda: f1_score(y, pred, average="macro", labels=range(18), zero_division=0), r),
        ("soft voting fit", lambda: SoftVoting().fit(P, y), r),
        ("weights (SLSQP, log-loss) fit", lambda: OptimizedWeights().fit(P, y), r),
        ("caruana 25 it fit", lambda: CaruanaSelection(25).fit(P, y), r),
        ("bias tuning alone (on soft voting)", lambda: tune_biases(log_proba(P.mean(0)), y), r),
        ("caruana 25 it + bias fit  [goal < 2000 ms]", lambda: BiasTuning(CaruanaSelection(25)).fit(P, y, folds), r),
        ("caruana + bias nested estimate (5 fits)", lambda: nested_estimate(BiasTuning(CaruanaSelection(25)), P, y, folds), max(1, r // 2)),
    ]
    if args.stacking:
        cases.append(("stacking fit (5 fold models + all-rows model)", lambda: Stacking().fit(P, y, folds), 1))
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_runs(tmp, n_people=args.people, n_runs=args.runs, n_test=12600)
        cases.append((f"load_runs ({args.runs} oof.csv + test.csv, validated)", lambda: load_runs(tmp), max(1, r // 2)))

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{args.runs} runs x {len(y)} OOF images x 18 classes; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPU(s), load average {load:.1f}, numpy {np.__version__}")
        print(f"{'case':52s} {'median ms':>10s} {'min ms':>10s} {'max ms':>10s} {'repeats':>7s}")
        for name, fn, reps in cases:
            fn()  # warm-up
            med, lo, hi = timeit(fn, reps)
            print(f"{name:52s} {med * 1e3:10.2f} {lo * 1e3:10.2f} {hi * 1e3:10.2f} {reps:7d}")
    est = BiasTuning(CaruanaSelection(25)).fit(P, y, folds)
    print(f"\nOOF macro F1: soft {macro_f1(y, P.mean(0).argmax(1)):.4f}, caruana "
          f"{macro_f1(y, est.estimator_.oof_proba_.argmax(1)):.4f}, caruana+bias {macro_f1(y, est.oof_proba_.argmax(1)):.4f}")


if __name__ == "__main__":
    main()
