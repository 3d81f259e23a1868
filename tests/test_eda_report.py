"""kf eda and kf report on tiny generated data: table numbers, plots, report metrics against sklearn and by hand."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import f1_score, precision_recall_fscore_support

from kf.cli import main
from kfold import labels as L
from kfold.data import read_train
from kfold.io import KfError
from kfold.synth import make_data
from reports.evaluate import evaluate, read_oof, suspects_table, task_probs
from reports.report import run_report

PROB_COLS = [f"prob_{c}" for c in range(18)]
TINY = ["model=test_efficientnet", "pretrained=none", "image_size=[32,32]", "epochs=1", "batch_size=16",
        "tta=none", "eval_batch_size=64", "augment.affine=0"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="kf")


def assert_valid_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        im.verify()
    assert w > 100 and h > 100, (path, w, h)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- kf eda

@pytest.fixture(scope="module")
def eda(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eda") / "eda"
    res = invoke("eda", "--data", tiny_data, "--out", out)
    assert res.exit_code == 0, res.output
    return out, res.output


def table(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.csv", keep_default_na=False)


def test_eda_people_per_gender_and_race_equal_train_csv_counts(eda, tiny_data):
    out, _ = eda
    people = pd.read_csv(tiny_data / "train" / "train.csv", dtype=str)
    gender = table(out, "gender").set_index("gender")
    assert gender["people"].to_dict() == {g: int((people.gender == g).sum()) for g in L.GENDER_NAMES}
    assert gender["images"].to_dict() == {g: 7 * int((people.gender == g).sum()) for g in L.GENDER_NAMES}
    race = table(out, "race").set_index("race")["people"].to_dict()
    assert race == people["race"].value_counts().to_dict()


def test_eda_images_and_people_per_class_equal_read_train_label_counts(eda, tiny_data):
    out, _ = eda
    images, _ = read_train(tiny_data)
    cls = table(out, "classes")
    assert list(cls["class"]) == list(range(18))
    assert list(cls["name"]) == L.class_names()
    assert list(cls["images"]) == list(np.bincount(images["label"], minlength=18))
    assert list(cls["people"]) == [images.loc[images.label == c, "person"].nunique() for c in range(18)]
    mask = table(out, "mask").set_index("mask")["images"].to_dict()
    assert mask == {n: int((images["mask"] == m).sum()) for m, n in enumerate(L.MASK_NAMES)}


def test_eda_age_bands_histogram_and_gender_by_age_agree_with_train_csv(eda, tiny_data):
    out, _ = eda
    ages = pd.read_csv(tiny_data / "train" / "train.csv")["age"]
    bands = table(out, "age_bands").set_index("age_band")["people"].to_dict()
    assert bands == {"<30": int((ages < 30).sum()), "30-59": int(((ages >= 30) & (ages < 60)).sum()), ">=60": int((ages >= 60).sum())}
    hist = table(out, "age_histogram")
    assert hist["people"].sum() == len(ages)
    assert dict(zip(hist["age"], hist["people"]))[int(ages.iloc[0])] == int((ages == ages.iloc[0]).sum())
    ga = table(out, "gender_age").set_index("gender")
    assert ga.loc["all", "all"] == len(ages) and ga.loc["all", ">=60"] == bands[">=60"]


def test_eda_junk_count_equals_the_junk_make_data_created(eda, tiny_data):
    out, output = eda
    on_disk = sorted(p.relative_to(tiny_data).as_posix() for p in (tiny_data / "train" / "images").rglob("*")
                     if p.name.startswith("._") or p.name == ".ipynb_checkpoints")
    assert on_disk, "the tiny data set should contain junk for this test to mean anything"
    junk = table(out, "junk")
    assert sorted(junk["path"]) == on_disk
    overview = table(out, "overview").set_index("item")["value"]
    assert int(overview["junk entries"]) == len(on_disk) == int(overview["junk skipped by the reader"])
    assert f"junk: {len(on_disk)} entries" in output


def test_eda_extension_and_size_counts_match_the_files_on_disk(eda, tiny_data):
    out, _ = eda
    train_files = [p for d in (tiny_data / "train" / "images").iterdir() if d.is_dir() and not d.name.startswith(".")
                   for p in d.iterdir() if not p.name.startswith(".")]
    ext = table(out, "extensions")
    got = dict(zip(ext.loc[ext.split == "train", "extension"], ext.loc[ext.split == "train", "files"]))
    assert got == pd.Series([p.suffix for p in train_files]).value_counts().to_dict()
    assert len(got) > 1  # make_data mixes .jpg/.jpeg/.png/.JPG
    assert ext.loc[ext.split == "eval", "files"].sum() == len(list((tiny_data / "eval" / "images").iterdir()))
    sizes = table(out, "image_sizes")
    assert sizes["files"].sum() == 140 + 42
    assert set(zip(sizes.width, sizes.height)) == {(32, 32)}
    modes = sizes[sizes.split == "train"].groupby("mode")["files"].sum().to_dict()
    on_disk_modes = pd.Series([Image.open(p).mode for p in train_files]).value_counts().to_dict()
    assert modes == on_disk_modes


def test_eda_plots_are_valid_pngs_and_the_summary_is_short(eda):
    out, output = eda
    for name in ("class_distribution.png", "age_histogram.png"):
        assert_valid_png(out / name)
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert len(output.splitlines()) < 20
    assert no_temp_files(out)


def test_eda_applies_corrections_and_age_cuts(tiny_data, tmp_path):
    people = pd.read_csv(tiny_data / "train" / "train.csv", dtype=str)
    p0, p1 = people["path"].iloc[0], people["path"].iloc[1]
    other = "female" if people["gender"].iloc[0] == "male" else "male"
    corr = tmp_path / "corr.csv"
    corr.write_text(f"path,field,value\n{p0},gender,{other}\n{p1},age,59\n{p1},mask-swap,incorrect_mask:normal\n")
    out = tmp_path / "eda"
    res = invoke("eda", "--data", tiny_data, "--out", out, "--corrections", corr, "--age-cuts", "30,58")
    assert res.exit_code == 0, res.output
    images, report = read_train(tiny_data, (30, 58), corr)
    assert list(table(out, "classes")["images"]) == list(np.bincount(images["label"], minlength=18))
    assert list(table(out, "age_bands")["age_band"]) == ["<30", "30-57", ">=58"]
    rows = table(out, "corrections")
    assert list(rows["field"]) == ["gender", "age", "mask-swap"]
    assert rows["new"].iloc[0] == other and rows["new"].iloc[1] == "59 (>=58)"
    assert rows["new"].iloc[2] == "incorrect_mask=not wear, normal=incorrect"
    assert int(table(out, "overview").set_index("item").at["label corrections applied", "value"]) == report.corrections_applied
    gender = table(out, "gender").set_index("gender")["people"]
    csv_gender = people["gender"].value_counts()
    assert gender[other] == csv_gender.get(other, 0) + 1


def test_eda_on_a_missing_data_folder_is_one_error_line(tmp_path):
    res = invoke("eda", "--data", tmp_path / "nope", "--out", tmp_path / "eda")
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: {tmp_path / 'nope'}: data folder not found (pass --data or set KF_DATA)"]
    assert not (tmp_path / "eda").exists()


def test_eda_names_images_pil_cannot_read_instead_of_a_traceback(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    images, _ = read_train(data)
    bad = [data / images["image"].iloc[3], data / images["image"].iloc[10]]
    bad[0].write_bytes(b"\x01\xda" + bytes(510))  # SGI magic: PIL raises ValueError, not OSError
    bad[1].write_bytes(b"not an image")  # PIL raises UnidentifiedImageError
    res = invoke("eda", "--data", data, "--out", tmp_path / "eda")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    note = next(line for line in res.output.splitlines() if "PIL cannot read" in line)
    assert note.startswith("note: 2 image(s)") and str(bad[0]) in note and str(bad[1]) in note
    sizes = table(tmp_path / "eda", "image_sizes")
    assert int(sizes.loc[sizes["mode"] == "unreadable", "files"].sum()) == 2


# --------------------------------------------------------------------------- kf report, hand-made oof.csv

#            y     pred  confidence (probability of pred; the rest spread evenly)
HAND = [(0, 0, 0.90), (0, 0, 0.80), (0, 1, 0.95),   # fold 0
        (1, 1, 0.70), (1, 2, 0.60), (2, 2, 0.85)]   # fold 1


def hand_probs(pred: int, conf: float) -> np.ndarray:
    p = np.full(18, (1 - conf) / 17)
    p[pred] = conf
    return p


def make_run(oof_dir: Path, name: str, keys: pd.DataFrame, probs: np.ndarray, kind: str = "run", **extra) -> Path:
    d = oof_dir / name
    d.mkdir(parents=True)
    df = pd.concat([keys.reset_index(drop=True), pd.DataFrame(probs, columns=PROB_COLS)], axis=1)
    df.to_csv(d / "oof.csv", index=False)
    (d / "run.json").write_text(json.dumps({"name": name, "kind": kind, "k": 2, "finished": True,
                                            "data": {"age_cuts": [30.0, 60.0]}, **extra}))
    return d


@pytest.fixture(scope="module")
def hand(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hand")
    images, _ = read_train(tiny_data)
    keys = pd.DataFrame({"image": images["image"].iloc[:6].to_numpy(), "person": images["person"].iloc[:6].to_numpy(),
                         "fold": [0, 0, 0, 1, 1, 1], "label": [y for y, _, _ in HAND]})
    probs = np.stack([hand_probs(p, c) for _, p, c in HAND])
    make_run(tmp / "oof", "hand", keys, probs)
    reports, written = run_report(["hand"], tmp / "oof", out=tmp / "report", data_root=tiny_data, top=6)
    return tmp, reports[0], written


def test_hand_made_oof_per_class_scores_are_the_ones_computed_by_hand(hand):
    tmp, r, _ = hand
    pc = pd.read_csv(tmp / "report" / "hand" / "per_class.csv").set_index("class")
    # class 0: tp 2 fp 0 fn 1; class 1: tp 1 fp 1 fn 1; class 2: tp 1 fp 1 fn 0
    np.testing.assert_allclose(pc.loc[[0, 1, 2], "precision"], [1.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(pc.loc[[0, 1, 2], "recall"], [2 / 3, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(pc.loc[[0, 1, 2], "f1"], [0.8, 0.5, 2 / 3], atol=1e-6)
    assert list(pc.loc[[0, 1, 2], "support"]) == [3, 2, 1] and pc.loc[3:, ["f1", "support"]].eq(0).all().all()
    comp = pd.read_csv(tmp / "report" / "comparison.csv").set_index("name")
    assert comp.at["hand", "macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 18, abs=1e-6)
    assert comp.at["hand", "accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # all six are wear/male: mask and gender always right, the age band wrong twice
    assert comp.at["hand", "mask_accuracy"] == 1 and comp.at["hand", "gender_accuracy"] == 1
    assert comp.at["hand", "age_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    per_fold = pd.read_csv(tmp / "report" / "hand" / "per_fold.csv")
    np.testing.assert_allclose(per_fold["macro_f1"], [0.8 / 18, (2 / 3 + 2 / 3) / 18], atol=1e-6)
    np.testing.assert_allclose(per_fold["accuracy"], [2 / 3, 2 / 3], atol=1e-6)


def test_hand_made_confusion_counts_and_most_confident_errors(hand):
    tmp, r, _ = hand
    cm = pd.read_csv(tmp / "report" / "hand" / "confusion.csv").set_index("true")
    names = L.class_names()
    assert cm.loc[names[0], names[0]] == 2 and cm.loc[names[0], names[1]] == 1
    assert cm.loc[names[1], names[2]] == 1 and cm.to_numpy().sum() == 6
    mis = pd.read_csv(tmp / "report" / "hand" / "misclassified.csv")
    assert list(mis["label"]) == [0, 1] and list(mis["predicted"]) == [1, 2]
    np.testing.assert_allclose(mis["confidence"], [0.95, 0.60], atol=1e-6)  # the report's CSVs hold 6 decimals
    assert list(mis["true"]) == [names[0], names[1]] and list(mis["pred"]) == [names[1], names[2]]
    assert_valid_png(tmp / "report" / "hand" / "misclassified.png")


def test_task_predictions_marginalise_probabilities_over_the_other_tasks():
    # argmax class 0 is wear/male/<30, but the female classes together weigh more
    p = np.full(18, 0.2 / 15)
    p[0], p[3], p[4] = 0.3, 0.25, 0.25
    tp = task_probs(p[None])
    assert tp["gender"].argmax(1)[0] == 1 and L.decode(int(p.argmax()))[1] == 0
    np.testing.assert_allclose(tp["gender"][0], [0.3 + 8 * 0.2 / 15, 0.5 + 7 * 0.2 / 15])
    np.testing.assert_allclose([tp[t].sum() for t in tp], [1, 1, 1])


def test_suspects_are_exactly_the_people_with_injected_label_noise_under_an_oracle_model(tmp_path):
    root = tmp_path / "noisy"
    make_data(root, people=30, eval_people=1, size=(16, 16), seed=3, noise=0.2)
    noisy, _ = read_train(root)
    clean, _ = read_train(root, corrections=root / "noise.csv")
    noise = pd.read_csv(root / "noise.csv", dtype=str)
    assert set(noise["field"]) == {"gender", "mask-swap"}
    keys = noisy[["image", "person", "label"]].assign(fold=0)
    probs = np.stack([hand_probs(c, 0.9) for c in clean["label"]])  # predicts the truth, labels are noisy
    s = suspects_table(keys, probs, (30, 60)).set_index("person")
    assert set(s.index[s["score"] > 0.5]) == set(noise["path"])
    assert set(s.index[s["p_other_gender"] > 0.5]) == set(noise.loc[noise.field == "gender", "path"])
    assert set(s.index[s["p_mask_swap"] > 0.5]) == set(noise.loc[noise.field == "mask-swap", "path"])
    assert (s["p_age_band"] > 0.9).all()


# --------------------------------------------------------------------------- kf report, trained run

@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny run (test_efficientnet 32x32, 1 epoch, K=2), a copy of it as an ensemble, and kf report on both."""
    from kfold.config import load_config, parse_overrides
    from kfold.data import load_data
    from kfold.train import train_runs

    tmp = tmp_path_factory.mktemp("report")
    (tmp / "tiny.yaml").write_text("lr: 0.003\nseed: 7\n")
    cfg = load_config(tmp / "tiny.yaml", parse_overrides(TINY))
    oof = tmp / "oof"
    train_runs([cfg], load_data(tiny_data, oof, k=2, seed=0), oof, echo=lambda s: None, progress=False)
    keys, probs = read_oof(oof / "tiny" / "oof.csv")
    make_run(oof / "ensemble", "copy", keys, probs[:, ::-1] * 0.5 + probs * 0.5, kind="ensemble", nested_macro_f1=0.0123)
    res = invoke("report", "--oof", oof, "--data", tiny_data, "--top", "12")
    assert res.exit_code == 0, res.output
    return oof, res.output


@pytest.mark.trains
def test_report_numbers_equal_sklearn_on_a_trained_run(trained):
    oof, _ = trained
    df = pd.read_csv(oof / "tiny" / "oof.csv")
    y, pred = df["label"].to_numpy(), df[PROB_COLS].to_numpy().argmax(1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(18)), zero_division=0)
    pc = pd.read_csv(oof / "report" / "tiny" / "per_class.csv")
    np.testing.assert_allclose(pc["precision"], p, atol=1e-6)
    np.testing.assert_allclose(pc["recall"], r, atol=1e-6)
    np.testing.assert_allclose(pc["f1"], f, atol=1e-6)
    assert list(pc["support"]) == list(s)
    comp = pd.read_csv(oof / "report" / "comparison.csv").set_index("name")
    macro = f1_score(y, pred, average="macro", labels=list(range(18)), zero_division=0)
    run_json = json.loads((oof / "tiny" / "run.json").read_text())
    assert comp.at["tiny", "macro_f1"] == pytest.approx(macro, abs=1e-6) == pytest.approx(run_json["oof_macro_f1"], abs=1e-6)
    assert comp.at["tiny", "accuracy"] == pytest.approx((y == pred).mean(), abs=1e-6)
    per_fold = pd.read_csv(oof / "report" / "tiny" / "per_fold.csv")
    for row in per_fold.itertuples():
        m = df["fold"].to_numpy() == row.fold
        assert row.macro_f1 == pytest.approx(f1_score(y[m], pred[m], average="macro", labels=list(range(18)), zero_division=0), abs=1e-6)
        assert row.macro_f1 == pytest.approx(run_json["folds"][str(row.fold)]["macro_f1"], abs=1e-6)
    # task accuracy: marginal probability of each task value, summed class by class
    probs = df[PROB_COLS].to_numpy()
    for t, decode_index in (("mask", 0), ("gender", 1), ("age", 2)):
        codes = np.array([L.decode(c)[decode_index] for c in range(18)])
        marg = np.stack([probs[:, codes == v].sum(1) for v in range(codes.max() + 1)], axis=1)
        truth = np.array([L.decode(int(c))[decode_index] for c in y])
        assert comp.at["tiny", f"{t}_accuracy"] == pytest.approx((marg.argmax(1) == truth).mean(), abs=1e-6)


@pytest.mark.trains
def test_report_without_names_covers_runs_and_ensembles_and_writes_valid_pngs(trained):
    oof, output = trained
    comp = pd.read_csv(oof / "report" / "comparison.csv")
    assert list(comp["name"]) == ["tiny", "ensemble/copy"] and list(comp["kind"]) == ["run", "ensemble"]
    # the honest column: an ensemble's recorded nested estimate, a run's per-fold mean. comparison.csv holds
    # 6 decimals (within 5e-7 of the value), so it is compared with the unrounded per-fold scores of run.json
    folds = json.loads((oof / "tiny" / "run.json").read_text())["folds"]
    assert list(comp["nested_macro_f1"]) == pytest.approx([np.mean([f["macro_f1"] for f in folds.values()]), 0.0123],
                                                          abs=1e-6)
    assert "nested_macro_f1" in output.splitlines()[0] and "0.0123" in output
    rep = oof / "report"
    pngs = [rep / "per_class_f1.png"] + [rep / n / f for n in ("tiny", "ensemble/copy")
                                         for f in ("confusion.png", "confusion_tasks.png", "misclassified.png")]
    pngs.append(rep / "tiny" / "curves.png")
    for p in pngs:
        assert_valid_png(p)
    assert not (rep / "ensemble" / "copy" / "curves.png").exists()  # no training curves for an ensemble
    curves = pd.read_csv(rep / "tiny" / "curves.csv")
    assert sorted(curves["fold"].unique()) == [0, 1] and list(curves["epoch"]) == [1, 1]
    html = (rep / "index.html").read_text()
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(embedded) == len(pngs)
    assert base64.b64decode(embedded[0]) == (rep / "per_class_f1.png").read_bytes()
    assert "tiny" in output and "ensemble/copy" in output and no_temp_files(rep)
    mis = pd.read_csv(rep / "tiny" / "misclassified.csv")
    assert (mis["label"] != mis["predicted"]).all() and mis["confidence"].is_monotonic_decreasing


@pytest.mark.trains
def test_report_suspects_rank_people_by_the_evidence_against_their_labels(trained):
    oof, _ = trained
    s = pd.read_csv(oof / "report" / "tiny" / "suspects.csv")
    assert s["person"].is_unique and (s["images"] == 7).all() and s["score"].is_monotonic_decreasing
    df = pd.read_csv(oof / "tiny" / "oof.csv", dtype={"person": str})
    first = df[df["person"] == str(s["person"].iloc[0])]
    g = L.decode(int(first["label"].iloc[0]))[1]
    other = [c for c in range(18) if L.decode(c)[1] != g]
    assert s["p_other_gender"].iloc[0] == pytest.approx(first[[f"prob_{c}" for c in other]].sum(axis=1).mean(), abs=1e-6)


@pytest.mark.trains
def test_a_run_given_by_path_is_reported_under_its_folder_name_and_its_folder_is_untouched(trained, tmp_path):
    oof, _ = trained
    before = sorted(p.name for p in (oof / "tiny").iterdir())
    res = invoke("report", oof / "tiny", "--oof", tmp_path / "elsewhere", "--top", "0", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "tiny" / "per_class.csv").is_file()
    assert sorted(p.name for p in (oof / "tiny").iterdir()) == before


# --------------------------------------------------------------------------- kf report, bad input

@pytest.mark.trains
def test_report_on_an_unknown_run_is_one_error_line_listing_the_runs(trained):
    oof, _ = trained
    res = invoke("report", "nope", "--oof", oof, "--top", "0")
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nope: not a run or ensemble") and "tiny, ensemble/copy" in lines[0]


def test_report_without_oof_csv_or_data_folder_is_one_error_line(hand, tiny_data, tmp_path):
    src, _, _ = hand
    oof = Path(shutil.copytree(src / "oof", tmp_path / "oof"))
    res = invoke("report", "hand", "--oof", oof, "--data", tmp_path / "missing", "--out", tmp_path / "r")
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: data folder not found; the contact sheet reads the train images "
        "(pass --data, or --top 0 for no contact sheet)"]
    res = invoke("report", "hand", "--oof", oof, "--data", tmp_path / "missing", "--out", tmp_path / "r", "--top", "0")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "r" / "hand" / "misclassified.png").exists()
    (oof / "hand" / "oof.csv").unlink()
    res = invoke("report", "hand", "--oof", oof, "--top", "0", "--out", tmp_path / "r")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert f"{oof / 'hand' / 'oof.csv'}: file not found" in res.output
    res = invoke("report", "--oof", tmp_path / "empty", "--top", "0")
    assert res.exit_code == 2 and "folder not found" in res.output


def test_report_refuses_logits_naming_the_row(hand, tmp_path):
    src, _, _ = hand
    oof = Path(shutil.copytree(src / "oof", tmp_path / "oof"))
    df = pd.read_csv(oof / "hand" / "oof.csv")
    df.loc[3, "prob_0"] = 3.5
    df.to_csv(oof / "hand" / "oof.csv", index=False)
    with pytest.raises(KfError, match=r"oof.csv: row 5 .*not logits"):
        evaluate("hand", oof)


def test_out_inside_the_competition_folder_or_equal_to_oof_is_refused(tiny_data, tmp_path):
    """Reports written among the images would be read as junk later; at the --oof root they mix with the runs."""
    before = sorted(p for p in Path(tiny_data).rglob("*"))
    for out in (Path(tiny_data) / "train", Path(tiny_data) / "eda"):
        r = invoke("eda", "--data", str(tiny_data), "--out", str(out))
        assert r.exit_code == 2 and "is inside the competition folder" in r.output, r.output
    (tmp_path / "oof").mkdir()
    r = invoke("report", "--oof", str(tmp_path / "oof"), "--out", str(tmp_path / "oof"), "--top", "0")
    assert r.exit_code == 2 and "is the --oof folder itself" in r.output, r.output
    assert sorted(p for p in Path(tiny_data).rglob("*")) == before and not any((tmp_path / "oof").iterdir())
