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

from ensemble import BiasTuning, CaruanaSelection, OptimizedWeights, SoftVoting, Stacking, load_runs, macro_f1, nested_estimate, tune_biases
from ensemble.base import log_proba
from ensemble.synth import synthetic_labels, synthetic_probs, write_synthetic_runs


def sklearn_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 18) -> float:
    return float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_classes)), zero_division=0))


def caruana_with_sklearn_f1(P: np.ndarray, y: np.ndarray) -> None:
    """Caruana selection scored with sklearn's ``f1_score``: the usual way, the reference for kf's bincount F1."""
    from unittest import mock

    with mock.patch("ensemble.caruana.macro_f1", sklearn_macro_f1):
        CaruanaSelection(25).fit(P, y)


def timings(fn, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def measure(repeats: int = 5, people: int = 2700, runs: int = 5, stacking: bool = False,
            cases: tuple[str, ...] | None = None) -> list[tuple[str, list[float]]]:
    """Time each case (after one warm-up call): ``[(case, seconds per repeat), ...]``.

    ``cases``: names to keep (default: all); ``load_runs`` writes the CSVs first.
    """
    folds_df = synthetic_labels(people, k=5, seed=0)
    y, folds = folds_df["label"].to_numpy(), folds_df["fold"].to_numpy()
    P = synthetic_probs(y, runs, list(np.linspace(1.5, 2.5, runs)), seed=1)
    pred = P.mean(0).argmax(1)
    r = repeats
    table = [
        ("macro_f1 (bincount), 1 call", lambda: macro_f1(y, pred), r * 20),
        ("sklearn f1_score macro, 1 call", lambda: f1_score(y, pred, average="macro", labels=range(18), zero_division=0), r),
        ("soft voting fit", lambda: SoftVoting().fit(P, y), r),
        ("weights (SLSQP, log-loss) fit", lambda: OptimizedWeights().fit(P, y), r),
        ("caruana 25 it fit", lambda: CaruanaSelection(25).fit(P, y), r),
        ("caruana 25 it fit, sklearn f1_score", lambda: caruana_with_sklearn_f1(P, y), r),
        ("bias tuning alone (on soft voting)", lambda: tune_biases(log_proba(P.mean(0)), y), r),
        ("caruana 25 it + bias fit  [goal < 2000 ms]", lambda: BiasTuning(CaruanaSelection(25)).fit(P, y, folds), r),
        ("caruana + bias nested estimate (5 fits)", lambda: nested_estimate(BiasTuning(CaruanaSelection(25)), P, y, folds), max(1, r // 2)),
    ]
    if stacking:
        table.append(("stacking fit (5 fold models + all-rows model)", lambda: Stacking().fit(P, y, folds), 1))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        name = f"load_runs ({runs} oof.csv + test.csv, validated)"
        if cases is None or name in cases:
            write_synthetic_runs(tmp, n_people=people, n_runs=runs, n_test=12600)
            table.append((name, lambda: load_runs(tmp), max(1, r // 2)))
        for case, fn, reps in table:
            if cases is not None and case not in cases:
                continue
            fn()  # warm-up
            out.append((case, timings(fn, reps)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--people", type=int, default=2700)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stacking", action="store_true", help="also time stacking (cross-fitted, 6 logistic regressions)")
    args = ap.parse_args()

    results = measure(args.repeats, args.people, args.runs, args.stacking)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.runs} runs x {args.people * 7} OOF images x 18 classes; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU(s), load average {load:.1f}, numpy {np.__version__}")
    print(f"{'case':52s} {'median ms':>10s} {'min ms':>10s} {'max ms':>10s} {'repeats':>7s}")
    for name, times in results:
        print(f"{name:52s} {statistics.median(times) * 1e3:10.2f} {min(times) * 1e3:10.2f} {max(times) * 1e3:10.2f} "
              f"{len(times):7d}")
    folds_df = synthetic_labels(args.people, k=5, seed=0)
    y, folds = folds_df["label"].to_numpy(), folds_df["fold"].to_numpy()
    P = synthetic_probs(y, args.runs, list(np.linspace(1.5, 2.5, args.runs)), seed=1)
    est = BiasTuning(CaruanaSelection(25)).fit(P, y, folds)
    print(f"\nOOF macro F1: soft {macro_f1(y, P.mean(0).argmax(1)):.4f}, caruana "
          f"{macro_f1(y, est.estimator_.oof_proba_.argmax(1)):.4f}, caruana+bias {macro_f1(y, est.oof_proba_.argmax(1)):.4f}")


def run(ctx) -> list:
    """The runner's rows (benches/run.py): goals on 5 runs x 18,900 OOF images x 18 classes."""
    from common import Row, Stat

    t = dict(measure(max(3, ctx.repeats) if not ctx.quick else 1))
    what = "5 runs × 18,900 × 18"
    two_s = lambda x: x <= 2.0  # noqa: E731
    s = lambda name, d=3: Stat(t[name], "s", d)  # noqa: E731
    return [
        Row("4 ensemble", f"{what}: Caruana 25 it + bias tuning, fit", s("caruana 25 it + bias fit  [goal < 2000 ms]"),
            goal_text="≤ 2 s", goal=two_s),
        Row("4 ensemble", f"{what}: scipy weights (SLSQP on log-loss), fit", s("weights (SLSQP, log-loss) fit"),
            goal_text="≤ 2 s", goal=two_s),
        Row("4 ensemble", f"{what}: Caruana 25 it, kf bincount macro F1 vs sklearn f1_score",
            s("caruana 25 it fit"), s("caruana 25 it fit, sklearn f1_score"), "sklearn f1_score",
            Stat([b / a for a, b in zip(t["caruana 25 it fit"], t["caruana 25 it fit, sklearn f1_score"])], "x", 1),
            note="ratio = speed-up of kf's metric"),
        Row("4 ensemble", f"{what}: nested estimate of Caruana + bias (5 fits)",
            s("caruana + bias nested estimate (5 fits)"), note="kf ensemble's honest score"),
        Row("4 ensemble", "load_runs: 5 oof.csv + test.csv, read and validated",
            s("load_runs (5 oof.csv + test.csv, validated)")),
    ]


if __name__ == "__main__":
    main()
