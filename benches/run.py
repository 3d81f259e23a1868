"""Run every benchmark and write the results table into docs/benchmarks.md (``make bench``).

Each benchmark compares kf's way with a reference measured in the same run
(see the module docstrings of ``benches/bench_*.py``); the table gives the
median of the repeats with their min-max, and whether each goal is met. The
table replaces the part of docs/benchmarks.md between the ``bench:results``
markers; the rest of that file is prose kept by hand.

    .venv/bin/python benches/run.py                  # everything, 4-5 min on a quiet 2-core machine
    .venv/bin/python benches/run.py --quick --no-write --only tta,submit
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

from common import REAL_DATA, ROOT, Context, Row, repo_relative

BENCHES = ("feeding", "train_loop", "tta", "ensemble", "submit", "memory", "cpu")
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem_s = f", {mem / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem_s = ""
    return f"{cpu}, {os.cpu_count()} cores{mem_s}, no GPU used"


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def versions() -> str:
    import albumentations
    import numpy
    import timm
    import torch

    return (f"Python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
            f"albumentations {albumentations.__version__}, numpy {numpy.__version__}")


def table(rows: list[Row]) -> str:
    out = ["| # | case | kf | reference | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r.ref_name}: {r.ref.fmt()}" if r.ref is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        case = r.case + (f" — {r.note}" if r.note else "")
        out.append(f"| {r.group} | {case} | {r.kf.fmt() if r.kf else ''} | {ref} | "
                   f"{r.ratio.fmt() if r.ratio else ''} | {r.goal_text} | {met} |")
    return "\n".join(out)


def report(rows: list[Row], ctx: Context, started: str, load_start: str, load_end: str, wall: float,
           timings: dict[str, float]) -> str:
    lines = [
        f"Measured {started} by `make bench` (`benches/run.py{' --quick' if ctx.quick else ''}`) in "
        f"{wall / 60:.1f} min.",
        "",
        f"- machine: {machine()}",
        f"- software: {versions()}",
        f"- torch threads: {__import__('torch').get_num_threads()} (kf's `threads: auto` on CPU), "
        f"flush-denormal on (as `kf train` sets it)",
        f"- repeats: {ctx.repeats} (interleaved with the reference); cells: median (min–max)",
        f"- at start: {load_start}",
        f"- at end: {load_end}",
        f"- real set: {repo_relative(ctx.real_data) if ctx.real_data else 'not found'}",
    ]
    lines += [f"- {k}: {v}" for k, v in ctx.settings.items()]
    lines += ["- time per benchmark: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())]
    lines += ["", table(rows)]
    if ctx.notes:
        lines += [""] + [f"Note: {n}" for n in ctx.notes]
    return "\n".join(lines)


def write_doc(doc: Path, text: str) -> None:
    old = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n\n"
    block = f"{START}\n{text}\n{END}"
    if START in old and END in old:
        new = old[:old.index(START)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (default 3)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1-2 repeats: a smoke test, not a measurement")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (compiling takes ~30 s)")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    only = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHES)
    unknown = [b for b in only if b not in BENCHES]
    if unknown:
        ap.error(f"--only {unknown[0]!r}: choose from {', '.join(BENCHES)}")

    import torch

    from kfold.config import TrainConfig
    from kfold.device import configure_torch

    configure_torch(TrainConfig(), torch.device("cpu"))  # the thread count and flush-denormal of kf train on CPU
    ctx = Context(repeats=1 if args.quick else args.repeats, quick=args.quick, compile=not args.no_compile,
                  real_data=REAL_DATA if (REAL_DATA / "train" / "train.csv").exists() else None)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start, t0 = load(), time.perf_counter()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    try:
        for name in BENCHES:
            if name not in only:
                continue
            t = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                new = __import__(f"bench_{name}").run(ctx)
            except Exception as e:
                traceback.print_exc()
                ctx.notes.append(f"{name}: failed ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})")
                new = []
            rows += new
            timings[name] = time.perf_counter() - t
            for r in new:
                print(f"   {r.group} | {r.case} | {r.kf.fmt() if r.kf else ''} | "
                      f"{r.ref_name + ': ' + r.ref.fmt() if r.ref else ''} | {r.ratio.fmt() if r.ratio else ''} "
                      f"{'| goal ' + r.goal_text + (' met' if r.met else ' MISSED') if r.goal else ''}", flush=True)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    text = report(rows, ctx, started, load_start, load(), time.perf_counter() - t0, timings)
    print()
    print(text)
    if not args.no_write:
        write_doc(args.doc, text)
        print(f"\nwritten to {args.doc}")


if __name__ == "__main__":
    sys.exit(main())
