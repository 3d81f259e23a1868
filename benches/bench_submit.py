"""Time ``kf submit`` on a competition-sized eval set (12,600 images). Not a test.

Writes a 12,600-row ``eval/info.csv`` and a shuffled ``test.csv`` (float32-like
softmax rows, as a run writes them) into a temporary folder, then times

* ``library``: read_info_ids + read_test_probs + make_submission + write_submission
  (everything the command does to produce the file), and
* ``cli``: the whole ``kf submit`` command in-process (adds option parsing and
  the summary; no train/ folder, so no train distribution),
* ``cli+train``: the same with a 2,700-person ``train/train.csv`` (the
  competition's size), so the summary adds the train distribution,

and, as the reference, ``naive``: pandas read_csv + argmax + to_csv with no
checks at all, over ``--repeats`` runs, and prints the median and min-max in
seconds.

    .venv/bin/python benches/bench_submit.py [--rows 12600] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kfold.labels import N_CLASSES


def make_inputs(root: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ids = [f"{rng.bytes(20).hex()}.jpg" for _ in range(rows)]
    (root / "data" / "eval").mkdir(parents=True)
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(root / "data" / "eval" / "info.csv", index=False)
    logits = rng.normal(0, 3, (rows, N_CLASSES))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    df = pd.DataFrame(p, columns=[f"prob_{c}" for c in range(N_CLASSES)])
    df.insert(0, "ImageID", ids)
    test = root / "oof" / "run" / "test.csv"
    test.parent.mkdir(parents=True)
    df.sample(frac=1.0, random_state=seed).to_csv(test, index=False)
    return test


def make_train_csv(data: Path, people: int = 2700, seed: int = 0) -> None:
    """A competition-sized train.csv (the summary reads only this file, not the images)."""
    rng = np.random.default_rng(seed)
    gender = rng.choice(["male", "female"], people)
    age = rng.integers(18, 80, people)
    rows = [(f"{i:06d}", g, "Asian", str(a), f"{i:06d}_{g}_Asian_{a}") for i, (g, a) in enumerate(zip(gender, age))]
    (data / "train").mkdir(parents=True)
    pd.DataFrame(rows, columns=["id", "gender", "race", "age", "path"]).to_csv(data / "train" / "train.csv", index=False)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(rows: int = 12_600, repeats: int = 7) -> list[tuple[str, list[float]]]:
    """Time each way of writing the submission (after a warm-up): ``[(case, seconds per repeat), ...]``.

    Cases: ``naive`` (pandas read_csv + argmax + to_csv in info.csv order, no
    checks: the baseline way), ``library``, ``cli``, ``cli+train``.
    """
    from click.testing import CliRunner

    from kf.cli import main as kf
    from submit import make_submission, read_info_ids, read_test_probs, write_submission

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        test = make_inputs(root, rows)
        data, out = root / "data", root / "submission.csv"

        def naive() -> None:
            info = pd.read_csv(data / "eval" / "info.csv")
            probs = pd.read_csv(test).set_index("ImageID").loc[info["ImageID"]]
            info["ans"] = probs.to_numpy().argmax(1)
            info.to_csv(root / "naive.csv", index=False)

        def library() -> None:
            ids = read_info_ids(data)
            sub = make_submission(read_test_probs(test), ids, source=test)
            write_submission(sub, out, ids, overwrite=True)

        def cli() -> None:
            r = CliRunner().invoke(kf, ["submit", "--data", str(data), "--oof", str(root / "oof"),
                                        "--from", "run", "--out", str(out), "--overwrite"])
            assert r.exit_code == 0, r.output

        naive()  # warm-up: imports, file cache
        library()
        cli()
        results = []
        for _ in range(repeats):  # interleaved, so load changes hit every case alike
            for name, fn in (("naive", naive), ("library", library), ("cli", cli)):
                results.append((name, timed(fn, 1)[0]))
        make_train_csv(data)
        cli()
        results += [("cli+train", t) for t in timed(cli, repeats)]
    names = list(dict.fromkeys(n for n, _ in results))
    return [(n, [t for m, t in results if m == n]) for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12_600)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    results = measure(args.rows, args.repeats)
    print(f"kf submit on {args.rows:,} rows, {args.repeats} repeats (seconds):")
    for name, ts in results:
        print(f"  {name:<10} median {statistics.median(ts):.3f}  min-max {min(ts):.3f}-{max(ts):.3f}")


def run(ctx) -> list:
    """The runner's rows (benches/run.py): kf submit on 12,600 rows, goal 1 s."""
    from common import Row, Stat

    t = dict(measure(12_600, 2 if ctx.quick else max(5, ctx.repeats)))
    one_s = lambda x: x <= 1.0  # noqa: E731
    naive = Stat(t["naive"], "s", 3)
    vs = lambda name: Stat([a / b for a, b in zip(t[name], t["naive"])], "x", 2)  # noqa: E731
    return [
        Row("5 submit", "12,600 rows: library (read, validate, write) vs naive pandas", Stat(t["library"], "s", 3),
            naive, "naive pandas, no checks", vs("library"), "≤ 1 s", one_s, note="ratio = kf time / naive time", goal_on="kf"),
        Row("5 submit", "12,600 rows: `kf submit` command, in-process", Stat(t["cli"], "s", 3), naive,
            "naive pandas, no checks", vs("cli"), "≤ 1 s", one_s, goal_on="kf"),
        Row("5 submit", "12,600 rows: `kf submit` with a 2,700-person train.csv (summary adds train distribution)",
            Stat(t["cli+train"], "s", 3), goal_text="≤ 1 s", goal=one_s),
    ]


if __name__ == "__main__":
    main()
