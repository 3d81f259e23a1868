"""Person-grouped, stratified K-fold and the folds.csv/folds.json files (kfold.folds)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kfold.data import read_train
from kfold.folds import ensure_folds, folds_fingerprint, load_folds, make_folds, stratification_report
from kfold.io import KfError, read_json
from kfold.options import flag_errors
from kfold.synth import make_data


@pytest.fixture(scope="module")
def people200(tmp_path_factory) -> Path:
    """~200 generated people at the smallest image size the generator allows."""
    root = tmp_path_factory.mktemp("folds") / "data"
    make_data(root, people=200, eval_people=1, size=(16, 16), seed=3)
    return root


@pytest.fixture(scope="module")
def images200(people200) -> pd.DataFrame:
    return read_train(people200)[0]


@pytest.fixture
def tiny_images(tiny_data) -> pd.DataFrame:
    return read_train(tiny_data)[0]


def person_table(images: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    return images.assign(fold=folds["fold"].to_numpy()).drop_duplicates("person")


# --------------------------------------------------------------------------- make_folds

@pytest.mark.parametrize("seed", [0, 42])
def test_no_person_is_in_two_folds(images200, seed):
    folds = make_folds(images200, k=5, seed=seed)
    assert (folds.groupby("person")["fold"].nunique() == 1).all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]


def test_the_fold_table_follows_the_image_order_with_labels(images200):
    folds = make_folds(images200, k=5, seed=42)
    assert list(folds.columns) == ["image", "person", "label", "fold"]
    assert folds["image"].tolist() == images200["image"].tolist()
    assert folds["person"].tolist() == images200["person"].tolist()
    assert folds["label"].tolist() == images200["label"].tolist()


def test_folds_hold_about_the_same_number_of_people(images200):
    per = person_table(images200, make_folds(images200, k=5, seed=42))
    sizes = per.groupby("fold").size()
    assert sizes.sum() == 200
    assert sizes.max() - sizes.min() <= 4


@pytest.mark.parametrize("seed", [0, 7, 42])
def test_each_fold_has_each_gender_age_class_within_3_points_of_the_whole(images200, seed):
    folds = make_folds(images200, k=5, seed=seed)
    per = person_table(images200, folds)
    cls = per["gender"] * 3 + per["age_band"]
    overall = cls.value_counts(normalize=True) * 100
    for f, grp in per.groupby("fold"):
        share = (grp["gender"] * 3 + grp["age_band"]).value_counts(normalize=True).reindex(overall.index, fill_value=0) * 100
        assert (share - overall).abs().max() <= 3.0, f"fold {f}: {share.round(1).to_dict()} vs {overall.round(1).to_dict()}"
    rep = stratification_report(folds, images200)
    assert rep.loc[[0, 1, 2, 3, 4], "max_dev_pp"].max() <= 3.0
    assert rep.loc["all"].drop("max_dev_pp").sum() == pytest.approx(100, abs=0.1)


def test_people_are_grouped_by_path_even_when_ids_repeat():
    # 30 pairs of people sharing an id: grouping by id would keep each pair together
    rows = []
    for i in range(60):
        person = f"{i // 2:06d}_p{i}"
        for stem_i in range(7):
            rows.append({"image": f"train/images/{person}/{stem_i}.jpg", "person": person, "id": f"{i // 2:06d}",
                         "gender": i % 2, "age_band": (i // 2) % 3, "label": (i % 2) * 3 + (i // 2) % 3})
    images = pd.DataFrame(rows)
    folds = make_folds(images, k=5, seed=0)
    per = person_table(images, folds)
    assert (folds.groupby("person")["fold"].nunique() == 1).all()
    assert (per.groupby("id")["fold"].nunique() > 1).any()


def test_the_same_seed_gives_the_same_folds(images200):
    pd.testing.assert_frame_equal(make_folds(images200, 5, 11), make_folds(images200, 5, 11))


def test_another_seed_gives_other_folds(images200):
    a, b = make_folds(images200, 5, 11), make_folds(images200, 5, 12)
    assert (a["fold"] != b["fold"]).mean() > 0.3


@pytest.mark.parametrize("k", [1, 0, 21])
def test_k_below_2_or_above_the_number_of_people_is_refused(tiny_images, k):
    with pytest.raises(KfError, match=r"2 <= K <= number of people \(20\)"):
        make_folds(tiny_images, k=k)


# --------------------------------------------------------------------------- ensure_folds / load_folds

def test_ensure_folds_writes_folds_csv_and_json(tiny_images, tmp_path):
    folds, meta, reused = ensure_folds(tiny_images, tmp_path / "oof", k=4, seed=5)
    assert not reused
    on_disk = pd.read_csv(tmp_path / "oof" / "folds.csv", dtype={"person": str})
    assert list(on_disk.columns) == ["image", "person", "label", "fold"]
    pd.testing.assert_frame_equal(on_disk, folds)
    js = read_json(tmp_path / "oof" / "folds.json")
    assert js == meta
    assert (js["k"], js["seed"], js["n_images"], js["n_people"]) == (4, 5, 140, 20)
    assert js["folds_fingerprint"] == folds_fingerprint(folds)
    assert set(js) == {"k", "seed", "n_images", "n_people", "settings_fingerprint", "folds_fingerprint", "repaired"}
    assert js["repaired"] == []  # no fold was left empty


def test_matching_settings_reuse_the_file_without_rewriting_it(tiny_images, tmp_path):
    oof = tmp_path / "oof"
    first, _, _ = ensure_folds(tiny_images, oof, k=4, seed=5)
    csv = oof / "folds.csv"
    st = os.stat(csv)
    content = csv.read_bytes()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # any rewrite would be visible
    st = os.stat(csv)
    again, meta, reused = ensure_folds(tiny_images, oof, k=4, seed=5)
    assert reused
    after = os.stat(csv)
    assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert csv.read_bytes() == content
    pd.testing.assert_frame_equal(again, first)


@pytest.mark.parametrize("change", ["k", "seed", "age cuts", "corrections"])
def test_other_settings_are_refused_instead_of_reusing_the_file(tiny_data, tiny_images, tmp_path, change):
    oof = tmp_path / "oof"
    ensure_folds(tiny_images, oof, k=4, seed=5)
    content = (oof / "folds.csv").read_bytes()
    images, k, seed = tiny_images, 4, 5
    if change == "k":
        k = 3
    elif change == "seed":
        seed = 6
    elif change == "age cuts":
        images = read_train(tiny_data, age_cuts=(30, 40))[0]
        assert (images.label != tiny_images.label).any()
    else:
        person = tiny_images.loc[0, "person"]
        new = "male" if tiny_images.loc[0, "gender"] == 1 else "female"
        corr = tmp_path / "c.csv"
        corr.write_text(f"path,field,value\n{person},gender,{new}\n")
        images = read_train(tiny_data, corrections=corr)[0]
    with pytest.raises(KfError, match="other settings.*another oof_dir folder, or force to rewrite it"):
        ensure_folds(images, oof, k=k, seed=seed)
    with pytest.raises(KfError, match="other settings.*--force") as err:
        with flag_errors(force="--force", oof_dir="--oof"):  # as kf folds words it
            ensure_folds(images, oof, k=k, seed=seed)
    assert str(oof / "folds.csv") in str(err.value)
    assert (oof / "folds.csv").read_bytes() == content
    if change in ("age cuts", "corrections"):  # same K, seed and holdout: the message says which images changed, not two equal brackets
        assert re.search(r"other data \(\d+ image\(s\) with another label, e\.g\. train/images/\S+: \d+ -> \d+;",
                         str(err.value)), str(err.value)


def test_force_rewrites_folds_made_with_other_settings(tiny_images, tmp_path):
    oof = tmp_path / "oof"
    ensure_folds(tiny_images, oof, k=4, seed=5)
    folds, meta, reused = ensure_folds(tiny_images, oof, k=3, seed=5, force=True)
    assert not reused
    assert meta["k"] == 3 and read_json(oof / "folds.json")["k"] == 3
    assert sorted(load_folds(oof)["fold"].unique()) == [0, 1, 2]
    # and the new file is now reused without --force
    assert ensure_folds(tiny_images, oof, k=3, seed=5)[2]


def test_load_folds_refuses_an_edited_folds_csv(tiny_images, tmp_path):
    oof = tmp_path / "oof"
    folds, _, _ = ensure_folds(tiny_images, oof, k=4, seed=5)
    edited = folds.copy()
    edited.loc[0, "fold"] = (edited.loc[0, "fold"] + 1) % 4
    edited.to_csv(oof / "folds.csv", index=False)
    with pytest.raises(KfError, match="does not match folds_fingerprint") as err:
        load_folds(oof)
    assert str(oof / "folds.csv") in str(err.value)
    with pytest.raises(KfError, match="does not match folds_fingerprint"):
        ensure_folds(tiny_images, oof, k=4, seed=5)


def test_load_folds_reads_back_the_written_table(tiny_images, tmp_path):
    folds, _, _ = ensure_folds(tiny_images, tmp_path / "oof", k=4, seed=5)
    pd.testing.assert_frame_equal(load_folds(tmp_path / "oof"), folds)


def test_load_folds_without_folds_json_is_refused(tiny_images, tmp_path):
    oof = tmp_path / "oof"
    ensure_folds(tiny_images, oof, k=4, seed=5)
    (oof / "folds.json").unlink()
    with pytest.raises(KfError, match="folds.json: file not found"):
        load_folds(oof)


def test_folds_fingerprint_changes_when_any_assignment_changes(tiny_images):
    folds = make_folds(tiny_images, 4, 5)
    moved = folds.copy()
    moved.loc[len(moved) - 1, "fold"] = (moved.loc[len(moved) - 1, "fold"] + 1) % 4
    assert folds_fingerprint(folds) == folds_fingerprint(folds.copy())
    assert folds_fingerprint(moved) != folds_fingerprint(folds)


def test_a_copied_oof_folder_keeps_working(tiny_images, tmp_path):
    ensure_folds(tiny_images, tmp_path / "a", k=4, seed=5)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert ensure_folds(tiny_images, tmp_path / "b", k=4, seed=5)[2]
