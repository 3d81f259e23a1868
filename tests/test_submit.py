"""``kf submit``: validations (exit 2, one line, nothing written), the written file, atomicity, summary."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, f1_score

from kf.cli import main
from kfold.io import KfError
from kfold.labels import N_CLASSES
from submit import compare_answers, make_submission, read_info_ids, score, validate_submission, write_submission

PROBS = [f"prob_{c}" for c in range(N_CLASSES)]


# --------------------------------------------------------------------------- helpers

def info_ids(data: Path) -> list[str]:
    return pd.read_csv(data / "eval" / "info.csv", dtype=str)["ImageID"].tolist()


def probs_frame(ids: list[str], labels: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Random softmax rows whose argmax is ``labels`` (one row per id, same order)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(N_CLASSES), len(ids)) * 0.5
    p[np.arange(len(ids)), labels] += 0.5
    df = pd.DataFrame(p, columns=PROBS)
    df.insert(0, "ImageID", ids)
    return df


def write_run(oof: Path, df: pd.DataFrame, name: str = "lite0") -> Path:
    path = oof / name / "test.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def run_submit(*args: str):
    return CliRunner().invoke(main, ["submit", *map(str, args)])


def assert_refused(result, *fragments: str) -> str:
    """Exit 2 with exactly one ``error: ...`` line holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture
def labels(tiny_data) -> np.ndarray:
    """A fixed answer per info.csv row, covering many classes."""
    return np.arange(len(info_ids(tiny_data))) * 7 % N_CLASSES


@pytest.fixture
def run(tmp_path, tiny_data, labels):
    """A valid run ``lite0`` under ``tmp_path/oof``; returns ``(oof, test.csv path, frame)``."""
    oof = tmp_path / "oof"
    df = probs_frame(info_ids(tiny_data), labels)
    return oof, write_run(oof, df), df


def eval_only_data(root: Path, ids: list[str]) -> Path:
    """A data folder with only ``eval/info.csv`` (what submit needs) and no train/."""
    (root / "eval").mkdir(parents=True)
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(root / "eval" / "info.csv", index=False)
    return root


# --------------------------------------------------------------------------- the written file

def test_submission_follows_info_csv_order_with_argmax_answers(tmp_path, tiny_data, run, labels):
    oof, _, _ = run
    out = tmp_path / "submission.csv"
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.splitlines()[0] == "ImageID,ans"
    assert re.fullmatch(r"(\d+)", text.splitlines()[1].split(",")[1])  # written as an int, not 3.0
    sub = pd.read_csv(out, dtype={"ImageID": str})
    assert sub["ImageID"].tolist() == info_ids(tiny_data)
    assert sub["ans"].dtype == np.int64
    assert sub["ans"].between(0, N_CLASSES - 1).all()
    np.testing.assert_array_equal(sub["ans"].to_numpy(), labels)


def test_reordered_test_csv_gives_the_same_submission(tmp_path, tiny_data, run):
    oof, _, df = run
    write_run(oof, df.iloc[::-1], "shuffled")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", a).exit_code == 0
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "shuffled", "--out", b)
    assert result.exit_code == 0, result.output
    assert "rows reordered to info.csv order" in result.stdout
    assert a.read_bytes() == b.read_bytes()


def test_from_accepts_an_ensemble_name_and_a_direct_path(tmp_path, tiny_data, run):
    oof, path, df = run
    write_run(oof, df, "ensemble/caruana")
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    assert run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", a).exit_code == 0
    assert run_submit("--data", tiny_data, "--oof", oof, "--from", "ensemble/caruana", "--out", b).exit_code == 0
    assert run_submit("--data", tiny_data, "--oof", tmp_path / "elsewhere", "--from", path, "--out", c).exit_code == 0
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()


def test_ties_go_to_the_lowest_class(tiny_data):
    ids = info_ids(tiny_data)
    df = pd.DataFrame(np.full((len(ids), N_CLASSES), 1 / N_CLASSES), columns=PROBS)
    df[["prob_5", "prob_9"]] = 0.5
    df[[c for c in PROBS if c not in ("prob_5", "prob_9")]] = 0.0
    df.insert(0, "ImageID", ids)
    sub = make_submission(df, ids)
    assert sub["ans"].dtype == np.int64
    assert (sub["ans"] == 5).all()


def test_overwrite_replaces_an_existing_submission(tmp_path, tiny_data, run, labels):
    oof, _, _ = run
    out = tmp_path / "submission.csv"
    out.write_text("old\n")
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(pd.read_csv(out)["ans"].to_numpy(), labels)


# --------------------------------------------------------------------------- refusals: nothing written

def _drop_rows(df):
    return df.iloc[3:]


def _foreign_ids(df):
    df = df.copy()
    df.loc[df.index[4], "ImageID"] = "not_in_this_eval_set.jpg"
    return df


def _another_eval_set(df):
    df = df.copy()
    df["ImageID"] = [f"other_{i}.jpg" for i in range(len(df))]
    return df


def _extra_row(df):
    extra = df.iloc[:1].copy()
    extra["ImageID"] = "extra.jpg"
    return pd.concat([df, extra])


def _duplicate(df):
    return pd.concat([df, df.iloc[[2]]])


def _set(row, col, value):
    def f(df):
        df = df.copy()
        df[col] = df[col].astype(object) if isinstance(value, str) else df[col]
        df.iloc[row, df.columns.get_loc(col)] = value
        return df
    return f


def _drop_col(df):
    return df.drop(columns="prob_17")


def _extra_col(df):
    return df.assign(prob_18=0.0)


def _logits(df):
    df = df.copy()
    df[PROBS] = np.log(df[PROBS].to_numpy())
    return df


def _unnormalised(df):
    df = df.copy()
    df.iloc[5, 1:] = df.iloc[5, 1:] * 1.01
    return df


BAD_TEST_CSV = {
    "missing ImageIDs": (_drop_rows, ["3 ImageID(s) of info.csv missing"]),
    "an ImageID from another eval set": (_foreign_ids, ["row 6:", "'not_in_this_eval_set.jpg' is not in info.csv"]),
    "all ImageIDs from another eval set": (_another_eval_set, ["row 2:", "another eval set"]),
    "an extra ImageID": (_extra_row, ["'extra.jpg' is not in info.csv"]),
    "a duplicate ImageID": (_duplicate, ["duplicate ImageID", "first at row 4"]),
    "a NaN probability": (_set(7, "prob_3", np.nan), ["row 9", "prob_3 is nan"]),
    "an infinite probability": (_set(1, "prob_0", np.inf), ["row 3", "prob_0 is inf"]),
    "a text probability": (_set(2, "prob_4", "abc"), ["row 4", "prob_4 = 'abc' is not a number"]),
    "17 prob columns": (_drop_col, ["expected 18 probability columns", "found 17", "prob_17"]),
    "19 prob columns": (_extra_col, ["found 19", "prob_18"]),
    "logits (negative)": (_logits, ["row 2", "is negative", "not logits"]),
    "a row not summing to 1": (_unnormalised, ["row 7", "sum to 1.01"]),
}


@pytest.mark.parametrize("case", list(BAD_TEST_CSV))
def test_bad_test_csv_is_refused_naming_file_and_row_and_nothing_is_written(tmp_path, tiny_data, run, case):
    oof, path, df = run
    mutate, fragments = BAD_TEST_CSV[case]
    write_run(oof, mutate(df))
    out = tmp_path / "submission.csv"
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out)
    assert_refused(result, str(path), *fragments)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["oof"]


def test_row_sums_within_tolerance_are_accepted(tmp_path, tiny_data, run):
    oof, _, df = run
    df = df.copy()
    df.iloc[:, 1:] = df.iloc[:, 1:] * (1 + 9e-4)
    write_run(oof, df)
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output


def test_info_csv_with_duplicate_imageids_is_refused(tmp_path, tiny_data, run):
    oof, _, _ = run
    ids = info_ids(tiny_data)
    data = eval_only_data(tmp_path / "data", ids + [ids[3]])
    out = tmp_path / "submission.csv"
    result = run_submit("--data", data, "--oof", oof, "--from", "lite0", "--out", out)
    assert_refused(result, str(data / "eval" / "info.csv"), f"row {len(ids) + 2}: duplicate ImageID {ids[3]!r}",
                   "first at row 5")
    assert not out.exists()


def test_output_in_a_missing_folder_is_refused(tmp_path, tiny_data, run):
    oof, _, _ = run
    out = tmp_path / "nope" / "submission.csv"
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out),
                   str(out), "does not exist")
    assert not out.parent.exists()


def test_output_that_is_a_directory_is_refused(tmp_path, tiny_data, run):
    oof, _, _ = run
    out = tmp_path / "adir"
    out.mkdir()
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out, "--overwrite"),
                   str(out), "is a directory")
    assert list(out.iterdir()) == []


def test_existing_output_is_never_replaced_without_overwrite(tmp_path, tiny_data, run):
    oof, _, _ = run
    out = tmp_path / "submission.csv"
    out.write_bytes(b"ImageID,ans\nkeep,1\n")
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out),
                   str(out), "already exists", "--overwrite")
    assert out.read_bytes() == b"ImageID,ans\nkeep,1\n"


def test_output_over_an_input_is_refused(tmp_path, tiny_data, run):
    oof, path, _ = run
    before = path.read_bytes()
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", path, "--overwrite"),
                   "is the input")
    assert path.read_bytes() == before


def test_unknown_source_lists_what_oof_holds(tmp_path, tiny_data, run):
    oof, _, df = run
    write_run(oof, df, "ensemble/caruana")
    out = tmp_path / "submission.csv"
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "effnet", "--out", out),
                   "--from effnet", str(oof / "effnet" / "test.csv"), "available in", "lite0, ensemble/caruana")
    assert not out.exists()


def test_unfinished_run_is_named(tmp_path, tiny_data, run):
    oof, _, _ = run
    (oof / "half").mkdir()
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "half", "--out", tmp_path / "s.csv"),
                   str(oof / "half" / "test.csv"), "every fold has finished")


def test_ground_truth_with_other_imageids_is_refused_and_nothing_written(tmp_path, tiny_data, run):
    oof, _, _ = run
    gt = pd.read_csv(tiny_data / "gt.csv", dtype={"ImageID": str}).iloc[1:]
    gt.to_csv(tmp_path / "gt.csv", index=False)
    out = tmp_path / "submission.csv"
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out,
                              "--ground-truth", tmp_path / "gt.csv"),
                   str(tmp_path / "gt.csv"), "1 ImageID(s) of info.csv missing")
    assert not out.exists()


def test_compare_file_with_a_bad_answer_is_refused(tmp_path, tiny_data, run):
    oof, _, _ = run
    old = pd.DataFrame({"ImageID": info_ids(tiny_data), "ans": 0})
    old.loc[3, "ans"] = 18
    old.to_csv(tmp_path / "old.csv", index=False)
    out = tmp_path / "submission.csv"
    assert_refused(run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out,
                              "--compare", tmp_path / "old.csv"),
                   str(tmp_path / "old.csv"), "row 5", "ans 18 is not an integer in 0..17")
    assert not out.exists()


# --------------------------------------------------------------------------- library validation

def test_validate_submission_requires_info_order_and_integer_answers(tiny_data):
    ids = info_ids(tiny_data)
    good = pd.DataFrame({"ImageID": ids, "ans": np.arange(len(ids)) % N_CLASSES})
    validate_submission(good, ids)
    with pytest.raises(KfError, match=r"row 2: ImageID .*expected .*info.csv order"):
        validate_submission(good.iloc[::-1], ids)
    validate_submission(good.iloc[::-1], ids, ordered=False)
    with pytest.raises(KfError, match=r"row 3 .*ans 2.5 is not an integer"):
        validate_submission(good.assign(ans=good["ans"].astype(float).where(good.index != 1, 2.5)), ids)
    with pytest.raises(KfError, match=r"row 2 .*ans -1 is not an integer"):
        validate_submission(good.assign(ans=good["ans"].where(good.index != 0, -1)), ids)
    with pytest.raises(KfError, match="expected columns ImageID,ans"):
        validate_submission(good.assign(extra=1), ids)


def test_read_info_ids_ignores_missing_images_but_not_duplicates(tmp_path):
    data = eval_only_data(tmp_path / "d", ["a.jpg", "b.jpg"])
    assert read_info_ids(data) == ["a.jpg", "b.jpg"]
    with pytest.raises(KfError, match=r"info.csv: row 3: empty ImageID"):
        read_info_ids(eval_only_data(tmp_path / "e", ["a.jpg", ""]))


# --------------------------------------------------------------------------- atomic write

def _boom(*a, **k):
    raise OSError("disk full")


def test_failure_during_to_csv_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, tiny_data, run, monkeypatch):
    oof, _, df = run
    ids = info_ids(tiny_data)
    sub = make_submission(df, ids)
    out = tmp_path / "submission.csv"
    out.write_bytes(b"ImageID,ans\nold,3\n")
    real = pd.DataFrame.to_csv

    def half_then_fail(self, fh, *a, **k):
        real(self.iloc[: len(self) // 2], fh, *a, **k)  # half the rows reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(KfError, match=r"submission\.csv: cannot write: disk full"):  # one line naming the target
        write_submission(sub, out, ids, overwrite=True)
    assert out.read_bytes() == b"ImageID,ans\nold,3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oof", "submission.csv"]


def test_failure_at_rename_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, tiny_data, run, monkeypatch):
    oof, _, df = run
    ids = info_ids(tiny_data)
    out = tmp_path / "submission.csv"
    out.write_bytes(b"ImageID,ans\nold,3\n")
    monkeypatch.setattr(os, "replace", _boom)
    with pytest.raises(KfError, match=r"submission\.csv: cannot write: disk full"):  # one line naming the target
        write_submission(make_submission(df, ids), out, ids, overwrite=True)
    monkeypatch.undo()
    assert out.read_bytes() == b"ImageID,ans\nold,3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oof", "submission.csv"]


# --------------------------------------------------------------------------- summary

def test_summary_shows_predicted_and_train_distribution(tmp_path, tiny_data, run, labels):
    oof, _, _ = run
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    n = len(labels)
    row0 = next(l for l in result.stdout.splitlines() if l.startswith(" 0 wear/male/<30"))
    count0 = int((labels == 0).sum())
    assert row0.split()[2] == str(count0) and row0.split()[3] == f"{100 * count0 / n:.1f}%"
    total = next(l for l in result.stdout.splitlines() if l.startswith("total"))
    assert total.split()[1] == str(n) and total.split()[3] == "140"  # 20 people x 7 train images


def test_summary_without_train_folder_skips_that_column_with_a_note(tmp_path, tiny_data, run):
    oof, _, _ = run
    data = eval_only_data(tmp_path / "data", info_ids(tiny_data))
    result = run_submit("--data", data, "--oof", oof, "--from", "lite0", "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "train distribution skipped" in result.stdout
    assert "train" not in result.stdout.splitlines()[1]
    assert len(next(l for l in result.stdout.splitlines() if l.startswith("total")).split()) == 3


def test_compare_counts_changed_answers_and_most_frequent_changes(tmp_path, tiny_data, run, labels):
    oof, _, _ = run
    old = labels.copy()
    changed_to_4 = [0, 1, 2]          # three rows: old 4 -> new labels[i]
    old[changed_to_4] = 4
    old[10] = (labels[10] + 1) % N_CLASSES
    pd.DataFrame({"ImageID": info_ids(tiny_data), "ans": old}).to_csv(tmp_path / "old.csv", index=False)
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", tmp_path / "s.csv",
                        "--compare", tmp_path / "old.csv")
    assert result.exit_code == 0, result.output
    n_expected = int((old != labels).sum())
    assert f"{n_expected} of {len(labels)} answers changed" in result.stdout
    n_changed, table = compare_answers(old, labels)
    assert n_changed == n_expected
    expected = pd.Series(list(zip(old[old != labels], labels[old != labels]))).value_counts()
    assert dict(zip(zip(table.old, table.new), table["count"])) == expected.to_dict()
    assert table["count"].is_monotonic_decreasing


def test_compare_matches_an_old_submission_by_imageid_not_by_row(tmp_path, tiny_data, run, labels):
    oof, _, _ = run
    old = pd.DataFrame({"ImageID": info_ids(tiny_data), "ans": labels}).iloc[::-1]
    old.to_csv(tmp_path / "old.csv", index=False)
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", tmp_path / "s.csv",
                        "--compare", tmp_path / "old.csv")
    assert result.exit_code == 0, result.output
    assert f"0 of {len(labels)} answers changed" in result.stdout
    assert "most frequent changes" not in result.stdout


def test_ground_truth_scores_as_sklearn_macro_f1(tmp_path, tiny_data):
    gt = pd.read_csv(tiny_data / "gt.csv", dtype={"ImageID": str})
    truth = gt["ans"].to_numpy()
    pred = truth.copy()
    pred[::3] = (pred[::3] + 5) % N_CLASSES  # a third wrong
    oof = tmp_path / "oof"
    write_run(oof, probs_frame(gt["ImageID"].tolist(), pred).iloc[::-1])  # and reordered
    out = tmp_path / "s.csv"
    result = run_submit("--data", tiny_data, "--oof", oof, "--from", "lite0", "--out", out,
                        "--ground-truth", tiny_data / "gt.csv")
    assert result.exit_code == 0, result.output
    f1 = f1_score(truth, pred, average="macro", labels=list(range(N_CLASSES)), zero_division=0)
    acc = accuracy_score(truth, pred)
    # the line prints 4 decimals: each number within 5e-5 of the value
    printed = re.search(r"macro F1 (\d\.\d{4}), accuracy (\d\.\d{4}) ", result.stdout)
    assert printed, result.stdout
    assert [float(v) for v in printed.groups()] == pytest.approx([f1, acc], abs=6e-5)
    res = score(truth, pred)
    assert res["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert res["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["absent_classes"] == sorted(set(range(N_CLASSES)) - set(truth.tolist()))
