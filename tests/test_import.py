"""``kf import`` / ``kf export``: a teammate's predictions, made elsewhere, join the ensemble as a run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ensemble import load_runs
from ensemble.external import match_keys, parse_columns
from ensemble.synth import synthetic_probs
from kf.cli import main
from kfold.io import KfError, write_json
from kfold.stagefiles import PROB_COLS, write_probs_csv

K = 5


def kf(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def assert_refused(result, *fragments: str) -> str:
    """Exit 2 with exactly one ``error: ...`` line holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture
def oof(tmp_path, tiny_data):
    """oof/ with kf's folds of tiny_data (K=5) and two runs lite0, mnv3 in info.csv test order."""
    d = tmp_path / "oof"
    ok(kf("folds", "--data", tiny_data, "--oof", d, "--k", K))
    folds = pd.read_csv(d / "folds.csv", dtype={"person": str})
    fp = json.loads((d / "folds.json").read_text())["folds_fingerprint"]
    ids = pd.read_csv(tiny_data / "eval" / "info.csv", dtype=str)["ImageID"]
    P = synthetic_probs(folds["label"].to_numpy(), 2, [1.5, 2.5], seed=1)
    T = synthetic_probs(np.arange(len(ids)) % 18, 2, [1.5, 2.5], seed=2)
    for m, name in enumerate(["lite0", "mnv3"]):
        (d / name).mkdir()
        write_probs_csv(d / name / "oof.csv", folds[["image", "person", "fold", "label"]], P[m])
        write_probs_csv(d / name / "test.csv", pd.DataFrame({"ImageID": ids}), T[m])
        write_json({"name": name, "kind": "run", "folds_fingerprint": fp, "k": K, "tta": "none", "finished": True,
                    "data": {"root": str(tiny_data), "age_cuts": [30, 58]}}, d / name / "run.json")
    return d


def as_teammate(oof_csv: Path, test_csv: Path, data: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a notebook writes: rows shuffled, absolute image paths under the data folder, no person column,
    ImageIDs as eval/images/ paths."""
    o = pd.read_csv(oof_csv, dtype={"person": str}).sample(frac=1.0, random_state=0).reset_index(drop=True)
    o["image"] = [str(data.resolve() / p) for p in o["image"]]
    o = o.drop(columns=["person"])
    t = pd.read_csv(test_csv, dtype={"ImageID": str}).sample(frac=1.0, random_state=1).reset_index(drop=True)
    t["ImageID"] = "eval/images/" + t["ImageID"]
    out.mkdir(parents=True, exist_ok=True)
    return o, t


def save(o: pd.DataFrame, t: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    o.to_csv(out / "mate_oof.csv", index=False, float_format="%.10g")
    t.to_csv(out / "mate_test.csv", index=False, float_format="%.10g")
    return out / "mate_oof.csv", out / "mate_test.csv"


def import_args(oof, data, oof_csv, *test_csvs, name="mate", extra=()):
    return ["import", name, "--oof", oof, "--data", data, "--oof-csv", oof_csv,
            *[a for t in test_csvs for a in ("--test-csv", t)], *extra]


# --------------------------------------------------------------------------- round trip


def test_exported_run_imported_under_another_name_gives_the_same_ensemble_results(tmp_path, tiny_data, oof):
    shared = tmp_path / "shared"
    res = ok(kf("export", shared, "--run", "mnv3", "--oof", oof, "--data", tiny_data))
    assert "folds.csv" in res.output
    exported = pd.read_csv(shared / "folds.csv")
    assert list(exported.columns) == ["image", "person", "fold", "label", "mask", "gender", "age_band"]
    assert (exported["mask"] * 6 + exported["gender"] * 3 + exported["age_band"] == exported["label"]).all()
    assert pd.read_csv(shared / "classes.csv")["name"][2] == "wear/male/>=58"  # the runs' recorded age cuts
    assert "kf import" in (shared / "SPEC.md").read_text()
    o, t = as_teammate(shared / "mnv3_oof.csv", shared / "mnv3_test.csv", tiny_data, tmp_path / "nb")
    oof_csv, test_csv = save(o, t, tmp_path / "nb")
    res = ok(kf(*import_args(oof, tiny_data, oof_csv, test_csv, extra=["--who", "ana", "--where", "kaggle kernel v7"])))
    assert "kind external" in res.output
    for f in ("oof.csv", "test.csv"):  # back in folds.csv / info.csv order, the same numbers
        assert (oof / "mate" / f).read_text() == (oof / "mnv3" / f).read_text()
    rj = json.loads((oof / "mate" / "run.json").read_text())
    assert rj["kind"] == "external" and rj["finished"] is True and rj["who"] == "ana" and rj["where"] == "kaggle kernel v7"
    assert rj["sources"]["oof"]["sha256"] == __import__("hashlib").sha256(oof_csv.read_bytes()).hexdigest()
    assert rj["data"]["age_cuts"] == [30, 58] and rj["softmax_applied"] is False

    ok(kf("ensemble", "--oof", oof, "--data", tiny_data, "--method", "all", "--runs", "lite0,mnv3"))
    first = {p.relative_to(oof).as_posix(): p.read_text() for p in (oof / "ensemble").glob("*/*.csv")}
    table_a = pd.read_csv(oof / "ensemble" / "all_scores.csv")
    ok(kf("ensemble", "--oof", oof, "--data", tiny_data, "--method", "all", "--runs", "lite0,mate", "--overwrite"))
    table_b = pd.read_csv(oof / "ensemble" / "all_scores.csv")
    table_b["name"] = table_b["name"].replace("mate", "mnv3")
    pd.testing.assert_frame_equal(table_a, table_b)
    second = {p.relative_to(oof).as_posix(): p.read_text() for p in (oof / "ensemble").glob("*/*.csv")}
    assert first.keys() == second.keys() and len(first) >= 12  # oof.csv, test.csv of 5 blends and best
    assert first == second

    # submit and report need only probabilities: they take the imported run like a trained one
    ok(kf("submit", "--from", "mate", "--out", tmp_path / "a.csv", "--data", tiny_data, "--oof", oof))
    ok(kf("submit", "--from", "mnv3", "--out", tmp_path / "b.csv", "--data", tiny_data, "--oof", oof))
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    ok(kf("report", "mate", "--oof", oof, "--out", tmp_path / "report", "--top", 0))
    assert (tmp_path / "report" / "comparison.csv").is_file()


def test_logits_and_probabilities_imports_agree(tmp_path, tiny_data, oof):
    o, t = as_teammate(oof / "mnv3" / "oof.csv", oof / "mnv3" / "test.csv", tiny_data, tmp_path / "nb")
    ok(kf(*import_args(oof, tiny_data, *save(o, t, tmp_path / "nb"), name="probs")))
    o = o.drop(columns="label")  # optional
    rng = np.random.default_rng(0)
    for df in (o, t):  # logits: log-probabilities shifted by any per-row constant, under other names
        z = np.log(df[PROB_COLS].to_numpy()) + rng.normal(0, 3, (len(df), 1))
        df[PROB_COLS] = z
        df.columns = [f"logit_{c[5:]}" if c in PROB_COLS else c for c in df.columns]
    lo = tmp_path / "logits"
    lo.mkdir()
    res = ok(kf(*import_args(oof, tiny_data, *save(o, t, lo), name="logits", extra=["--logits", "--columns", "logit_{}"])))
    assert "softmax applied" in res.output
    rs = load_runs(oof, ["probs", "logits"], tiny_data / "eval" / "info.csv")
    np.testing.assert_allclose(rs.oof[1], rs.oof[0], atol=1e-6)
    np.testing.assert_allclose(rs.test[1], rs.test[0], atol=1e-6)
    assert (rs.oof[1].argmax(1) == rs.oof[0].argmax(1)).all()
    assert json.loads((oof / "logits" / "run.json").read_text())["softmax_applied"] is True


def test_per_fold_test_files_are_averaged(tmp_path, tiny_data, oof):
    o, t = as_teammate(oof / "mnv3" / "oof.csv", oof / "lite0" / "test.csv", tiny_data, tmp_path / "nb")
    oof_csv, _ = save(o, t, tmp_path / "nb")
    rng = np.random.default_rng(3)
    per_fold = rng.dirichlet(np.ones(18), (K, len(t)))
    files = []
    for f in range(K):
        tf = t[["ImageID"]].assign(**dict(zip(PROB_COLS, per_fold[f].T))).sample(frac=1.0, random_state=f)
        tf.to_csv(tmp_path / f"test_fold{f}.csv", index=False, float_format="%.12g")
        files.append(tmp_path / f"test_fold{f}.csv")
    ok(kf(*import_args(oof, tiny_data, oof_csv, *files)))
    got = pd.read_csv(oof / "mate" / "test.csv", dtype={"ImageID": str})
    want = pd.DataFrame(per_fold.mean(0), columns=PROB_COLS, index=[i.split("/")[-1] for i in t["ImageID"]])
    np.testing.assert_allclose(got[PROB_COLS].to_numpy(), want.loc[got["ImageID"]].to_numpy(), atol=1e-8)
    assert_refused(kf(*import_args(oof, tiny_data, oof_csv, *files[:3], name="three")), "3 files", "expected 1", "5")


# --------------------------------------------------------------------------- refusals
# Each case edits the teammate's frames (OOF ``o``, test ``t``; ``o`` row i is file row i + 2) and returns
# them with fragments the one-line error must hold.


def _other_folds(o, t):
    o.loc[4, "fold"] = (o.loc[4, "fold"] + 1) % K
    return o, t, ("row 6", "fold", "would leak")


def _missing_image(o, t):
    return o.drop(index=7), t, ("1 image(s)", "missing")


def _duplicate_image(o, t):
    return pd.concat([o, o.iloc[[3]]], ignore_index=True), t, (f"row {len(o) + 2}", "appears twice (first at row 5)")


def _same_image_another_way(o, t):
    o.loc[7, "image"] = o.loc[8, "image"].replace("/", "\\")  # Windows separators: still the image of row 10
    return o, t, ("row 10", "appears twice (first at row 9)")


def _nan(o, t):
    o.loc[2, "prob_4"] = np.nan
    return o, t, ("row 4", "prob_4 is nan")


def _decimal_comma(o, t):
    o["prob_17"] = o["prob_17"].map(lambda v: f"{v:.6f}".replace(".", ","))
    return o, t, ("row 2", "prob_17 is", "expected a finite probability")


def _not_summing_to_one(o, t):
    o.loc[9, "prob_0"] += 0.2
    return o, t, ("row 11", "sum to")


def _unknown_imageid(o, t):
    t.loc[1, "ImageID"] = "eval/images/not_an_eval_image.jpg"
    return o, t, ("row 3", "not in info.csv")


def _wrong_label(o, t):
    o.loc[0, "label"] = (o.loc[0, "label"] + 1) % 18
    return o, t, ("row 2", "label", "leave the label column out")


def _seventeen_columns(o, t):
    return o.drop(columns="prob_17"), t, ("17 prob_ columns", "--columns")


def _text_in_fold(o, t):
    o["fold"] = o["fold"].astype(object)
    o.loc[1, "fold"] = "two"
    return o, t, ("row 3", "not an integer")


def _other_image(o, t):
    o.loc[0, "image"] = "train/images/someone_else/mask1.jpg"
    return o, t, ("row 2", "is not in")


@pytest.mark.parametrize("case", [_other_folds, _missing_image, _duplicate_image, _same_image_another_way, _nan,
                                  _decimal_comma, _not_summing_to_one, _unknown_imageid, _wrong_label,
                                  _seventeen_columns, _text_in_fold, _other_image],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_file_is_refused_in_one_line_and_nothing_is_written(tmp_path, tiny_data, oof, case):
    o, t, fragments = case(*as_teammate(oof / "mnv3" / "oof.csv", oof / "mnv3" / "test.csv", tiny_data, tmp_path / "nb"))
    oof_csv, test_csv = save(o, t, tmp_path / "nb")
    before = snapshot(oof)
    line = assert_refused(kf(*import_args(oof, tiny_data, oof_csv, test_csv)), *fragments)
    assert str(test_csv if case is _unknown_imageid else oof_csv) in line
    assert snapshot(oof) == before


def test_logits_flag_on_probabilities_is_refused(tmp_path, tiny_data, oof):
    o, t = as_teammate(oof / "mnv3" / "oof.csv", oof / "mnv3" / "test.csv", tiny_data, tmp_path / "nb")
    before = snapshot(oof)
    assert_refused(kf(*import_args(oof, tiny_data, *save(o, t, tmp_path / "nb"), extra=["--logits"])),
                   "these are probabilities", "leave out --logits")
    assert snapshot(oof) == before


def test_a_trained_run_is_never_replaced_and_an_import_only_with_overwrite(tmp_path, tiny_data, oof):
    o, t = as_teammate(oof / "mnv3" / "oof.csv", oof / "mnv3" / "test.csv", tiny_data, tmp_path / "nb")
    files = save(o, t, tmp_path / "nb")
    before = snapshot(oof)
    assert_refused(kf(*import_args(oof, tiny_data, *files, name="lite0", extra=["--overwrite"])), "oof/lite0",
                   "not an earlier import")
    assert_refused(kf(*import_args(oof, tiny_data, *files, name="ensemble")), "NAME 'ensemble'")
    assert_refused(kf(*import_args(oof, tiny_data, *files, name="a@flip")), "NAME 'a@flip'")
    assert snapshot(oof) == before
    ok(kf(*import_args(oof, tiny_data, *files)))
    assert_refused(kf(*import_args(oof, tiny_data, *files)), "--overwrite")
    ok(kf(*import_args(oof, tiny_data, *files, extra=["--overwrite", "--who", "bo"])))
    assert json.loads((oof / "mate" / "run.json").read_text())["who"] == "bo"


def test_predict_refuses_an_external_run_and_an_ensemble_built_on_it(tmp_path, tiny_data, oof):
    o, t = as_teammate(oof / "mnv3" / "oof.csv", oof / "mnv3" / "test.csv", tiny_data, tmp_path / "nb")
    ok(kf(*import_args(oof, tiny_data, *save(o, t, tmp_path / "nb"), extra=["--who", "ana"])))
    out = tmp_path / "p.csv"
    images = tiny_data / "eval" / "images"
    assert_refused(kf("predict", "mate", "--images", images, "--out", out, "--oof", oof),
                   "oof/mate: was imported with kf import", "ana", "cannot re-run a model it does not have")
    ok(kf("ensemble", "--oof", oof, "--data", tiny_data, "--method", "soft", "--runs", "lite0,mate"))
    for name in ("ensemble/soft", "ensemble/best"):
        assert_refused(kf("predict", name, "--images", images, "--out", out, "--oof", oof),
                       f"{name}: its member mate was imported", "cannot re-run")
    assert not out.exists()
    before = snapshot(oof)
    assert_refused(kf("ensemble", "--oof", oof, "--data", tiny_data, "--runs", "lite0,mate", "--tta", "flip"),
                   "kf ensemble --tta cannot re-run", "--runs <run>@flip,mate")
    assert snapshot(oof) == before


def test_export_without_data_takes_test_ids_from_a_run_and_refuses_to_overwrite(tmp_path, oof):
    shared = tmp_path / "shared"
    ok(kf("export", shared, "--oof", oof, "--data", tmp_path / "nodata"))
    ids = pd.read_csv(shared / "test_ids.csv", dtype=str)["ImageID"]
    assert ids.tolist() == pd.read_csv(oof / "lite0" / "test.csv", dtype={"ImageID": str})["ImageID"].tolist()
    before = snapshot(shared)
    assert_refused(kf("export", shared, "--oof", oof), "already exists", "--overwrite")
    assert snapshot(shared) == before


# --------------------------------------------------------------------------- helpers


def test_match_keys_takes_the_folds_key_or_any_path_ending_with_it():
    known = ["train/images/001_female/mask1.jpg", "train/images/002_male/normal.jpg"]
    keys = ["/kaggle/input/mask/train/images/002_male/normal.jpg", "train/images/001_female/mask1.jpg",
            "C:\\data\\train\\images\\001_female\\mask1.jpg", " train/images/002_male/normal.jpg ",
            "images/002_male/normal.jpg", "train/images/003_x/mask1.jpg"]
    assert match_keys(keys, known).tolist() == [1, 0, 0, 1, -1, -1]


def test_parse_columns():
    assert parse_columns(None) == PROB_COLS
    assert parse_columns("{}") == [str(c) for c in range(18)]
    assert parse_columns("logit_{}")[17] == "logit_17"
    assert parse_columns(",".join(f"p{c}" for c in range(18)))[3] == "p3"
    with pytest.raises(KfError, match="17 names"):
        parse_columns(",".join(f"p{c}" for c in range(17)))
    with pytest.raises(KfError, match="named twice"):
        parse_columns(",".join(["a"] * 18))
