"""Shared pieces of the benchmarks: timing, result rows, the data they run on.

Every benchmark module has ``run(ctx: Context) -> list[Row]``; ``benches/run.py``
runs them in order and writes the table. A row compares kf's way with a
reference measured in the same run, repeat by repeat (the two are interleaved,
so a change of machine load hits both), and reports the median of the
per-repeat ratios with their min-max.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("KF_BENCH_DATA", ROOT.parent / "shared" / "maskfaces"))


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository root with ``/`` separators (``../shared/maskfaces``).

    What docs/benchmarks.md records, so the doc names no folder of the machine
    that ran the benchmarks.
    """
    return Path(os.path.relpath(Path(path).resolve(), ROOT)).as_posix()


@dataclass
class Stat:
    """Repeated measurements of one quantity."""

    values: list[float]
    unit: str = "s"
    digits: int = 2

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self) -> str:
        def f(v: float) -> str:
            return f"{v:,.{self.digits}f}"

        unit = "" if self.unit in ("", "x") else f" {self.unit}"
        mark = "×" if self.unit == "x" else ""
        if len(self.values) == 1:
            return f"{f(self.values[0])}{mark}{unit}"
        return f"{f(self.median)}{mark}{unit} ({f(min(self.values))}–{f(max(self.values))})"


@dataclass
class Row:
    """One line of the results table.

    ``ratio`` is per repeat; ``goal`` is a predicate on the median of
    ``goal_on`` (``"ratio"``, or ``"kf"``: kf's own value; default: the ratio
    when there is one), ``goal_text`` says it in words.
    """

    group: str
    case: str
    kf: Stat | None
    ref: Stat | None = None
    ref_name: str = ""
    ratio: Stat | None = None
    goal_text: str = ""
    goal: Callable[[float], bool] | None = None
    note: str = ""
    goal_on: str = ""

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        on = self.goal_on or ("ratio" if self.ratio is not None else "kf")
        target = self.ratio if on == "ratio" else self.kf
        return bool(self.goal(target.median)) if target is not None else None


@dataclass
class Context:
    """What the benchmarks share: settings, a scratch folder, data built once."""

    repeats: int = 3
    quick: bool = False
    compile: bool = True  # run the torch.compile case (its compile takes ~30 s)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kf-bench-")))
    real_data: Path | None = None
    notes: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    shared: dict = field(default_factory=dict)

    def images96(self, n: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``n`` cached 96x96 uint8 images with labels: the real set's cache if present, else generated faces.

        Returns:
            ``(images (n, 96, 96, 3) uint8, labels (n,) int64, source description)``.
        """
        if "real96" in self.shared:
            cache, labels = self.shared["real96"]
            src = "real set"
        else:
            if "synth96" not in self.shared:
                from kfold.cache import build_cache
                from kfold.data import read_train
                from kfold.synth import make_data

                root = self.tmp / "synth96"
                make_data(root, people=max(8, n // 7 + 1), eval_people=1, size=(96, 96), seed=1, quirks=False)
                df, _ = read_train(root)
                cache = build_cache([root / p for p in df["image"]], (96, 96), self.tmp / "cache-synth96")
                self.shared["synth96"] = (cache, df["label"].to_numpy())
            cache, labels = self.shared["synth96"]
            src = "generated faces"
        if len(cache) < n:
            idx = np.arange(n) % len(cache)
            return np.asarray(cache[idx]), labels[idx], src
        return cache[:n], labels[:n], src


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (perf_counter)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-repeat ``a[i] / b[i]``."""
    return [x / y for x, y in zip(a, b)]


def lite0_config(**overrides):
    """``configs/lite0.yaml`` as a :class:`kfold.config.TrainConfig`, with ``overrides`` applied."""
    from kfold.config import load_config

    return load_config(ROOT / "configs" / "lite0.yaml", list(overrides.items()))


def print_rows(rows: list[Row]) -> None:
    """Plain-text rows, for a module run on its own."""
    for r in rows:
        ref = f" | {r.ref_name}: {r.ref.fmt()}" if r.ref is not None else ""
        ratio = f" | ratio {r.ratio.fmt()}" if r.ratio is not None else ""
        goal = f" | goal {r.goal_text}: {'met' if r.met else 'MISSED'}" if r.goal is not None else ""
        print(f"[{r.group}] {r.case}: {r.kf.fmt() if r.kf else '-'}{ref}{ratio}{goal}" + (f"  ({r.note})" if r.note else ""))


def standalone(run: Callable[[Context], list[Row]]) -> None:
    """``python benches/bench_x.py [--repeats N] [--quick]``: run one benchmark module and print its rows."""
    import argparse
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)
    ctx = Context(repeats=args.repeats, quick=args.quick,
                  real_data=REAL_DATA if (REAL_DATA / "train" / "train.csv").exists() else None)
    try:
        print_rows(run(ctx))
        for n in ctx.notes:
            print("note:", n)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)


def fold_trainer(cfg, images: np.ndarray, labels: np.ndarray, n_val: int, test_images: np.ndarray, run_dir: Path,
                 workers: int, device: str = "cpu"):
    """A :class:`kfold.fold.FoldTrainer` for fold 0 of ``images``: the last ``n_val`` rows validate, the rest train.

    Built the way ``kf train`` builds it (same config, cache-backed data, on
    ``device``), without folds.csv or a run folder around it.
    """
    import pandas as pd
    import torch

    from kfold.data import DataBundle
    from kfold.fold import FoldTrainer

    n = len(images)
    folds = pd.DataFrame({"image": [f"img{i}" for i in range(n)], "person": [f"p{i // 7}" for i in range(n)],
                          "label": np.asarray(labels, dtype=np.int64), "fold": [1] * (n - n_val) + [0] * n_val})
    test = pd.DataFrame({"ImageID": [f"t{i}.jpg" for i in range(len(test_images))]})
    data = DataBundle(run_dir, folds, {"k": 2, "folds_fingerprint": "bench"}, test, {})
    return FoldTrainer(cfg, 0, run_dir, data, images, test_images, torch.device(device), workers,
                       echo=lambda s: None, progress=False)
