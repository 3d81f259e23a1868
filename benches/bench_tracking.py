"""Overhead of ``kf train --track`` per epoch: lite0 at 96 px, with and without tracking, side by side.

    python benches/bench_tracking.py [--epochs 3] [--repeats 2] [--people 60]

Trains fold 0 of tf_efficientnet_lite0 (offline ImageNet weights) at 96x96 on
generated data, alternating untracked and tracked runs (``off, on, off, on``)
so that a change in machine load hits both alike. Tracking logs to
``MLFLOW_TRACKING_URI`` when set (e.g. a team server), else to a SQLite file
in a temporary folder (MLflow's local default, no server). Prints the median
epoch time of each mode and the wall time spent inside the tracking hooks:
per epoch (``log_epoch``: one request) and once per fold/run (finding or
creating the runs, the fold's result and artifacts, the summary).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402

from kfold import tracking  # noqa: E402
from kfold.config import load_config, parse_overrides  # noqa: E402
from kfold.data import load_data  # noqa: E402
from kfold.synth import make_data  # noqa: E402
from kfold.train import train_runs  # noqa: E402

HOOKS = ("run_started", "log_epoch", "fold_done", "run_finished")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--people", type=int, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    os.chdir(tmp)  # MLflow's local store writes ./mlruns
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "bench-tracking")
    make_data(tmp / "data", people=args.people, eval_people=10, size=(96, 96), seed=0, quirks=False)
    data = load_data(tmp / "data", tmp / "oof", k=2, seed=0)
    spent = {h: [] for h in HOOKS}  # seconds inside each hook, tracked runs only
    current = {"mode": "off"}
    for h in HOOKS:
        real = getattr(tracking, h)

        def timed(*a, _real=real, _h=h, **kw):
            t0 = time.perf_counter()
            try:
                return _real(*a, **kw)
            finally:
                if current["mode"] == "on":
                    spent[_h].append(time.perf_counter() - t0)
        setattr(tracking, h, timed)
    repo = Path(__file__).resolve().parents[1]
    epochs = {"off": [], "on": []}
    for i in range(args.repeats):
        for mode in ("off", "on"):
            name = f"{mode}{i}"
            cfg = load_config(repo / "configs" / "lite0.yaml",
                              parse_overrides([f"name={name}", f"epochs={args.epochs}", f"track={mode == 'on'}"]))
            current["mode"] = mode
            train_runs([cfg], data, tmp / "oof", folds=[0], echo=lambda s: None, progress=False)
            log = pd.read_csv(tmp / "oof" / name / "fold0" / "log.csv")
            epochs[mode] += list(log["seconds"])
    per_epoch = spent["log_epoch"]
    firsts = per_epoch[::args.epochs]  # a fold's first epoch also finds or creates the parent and child runs
    steady = statistics.median([t for i, t in enumerate(per_epoch) if i % args.epochs] or per_epoch)
    first = statistics.median(firsts)
    once = sum(sum(spent[h]) for h in ("run_started", "fold_done", "run_finished")) / args.repeats
    off, on = statistics.median(epochs["off"]), statistics.median(epochs["on"])
    print(f"tracking URI: {os.environ['MLFLOW_TRACKING_URI']}; lite0 96x96, {len(data.folds) // 2} train images "
          f"per epoch, {args.repeats} x {args.epochs} epochs per mode")
    print(f"median epoch: untracked {off:.2f} s, tracked {on:.2f} s, ratio tracked/untracked {on / off:.3f}")
    print(f"log_epoch per epoch: median {steady * 1000:.1f} ms ({100 * steady / off:.2f} % of an untracked epoch); "
          f"first epoch of a fold {first * 1000:.0f} ms (finds or creates the runs)")
    print(f"once per fold and run (start, fold result + artifacts, summary): {once:.2f} s")


if __name__ == "__main__":
    main()
