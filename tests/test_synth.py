"""The synthetic data generator (kfold.synth.make_data): layout, quirks, determinism, noise, signal."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kfold import labels as L
from kfold import synth
from kfold.data import read_eval, read_train
from kfold.io import KfError
from kfold.options import flag_errors
from kfold.synth import make_data


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train" / "images").rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


@pytest.fixture(scope="module")
def quirky(tmp_path_factory) -> Path:
    """200 people with quirks: enough for every quirk to show up."""
    root = tmp_path_factory.mktemp("quirky") / "data"
    make_data(root, people=200, eval_people=1, size=(16, 16), seed=3, quirks=True)
    return root


# --------------------------------------------------------------------------- layout

def test_make_data_writes_the_competition_layout(tmp_path):
    root = tmp_path / "d"
    counts = make_data(root, people=6, eval_people=3, size=(16, 24), seed=0)
    assert counts == {"people": 6, "train_images": 42, "eval_images": 21, "noisy_people": 0}
    people = pd.read_csv(root / "train" / "train.csv", dtype=str)
    assert list(people.columns) == ["id", "gender", "race", "age", "path"]
    assert len(people) == 6
    for r in people.itertuples():
        assert r.path == f"{r.id}_{r.gender}_{r.race}_{r.age}"
        files = [p for p in (root / "train" / "images" / r.path).iterdir() if not p.name.startswith(".")]
        assert sorted(p.stem for p in files) == sorted(L.IMAGE_STEMS)  # 7 images per person
        for p in files:
            assert Image.open(p).size == (16, 24)
    info = pd.read_csv(root / "eval" / "info.csv", dtype=str)
    assert list(info.columns) == ["ImageID", "ans"] and len(info) == 21
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", i) for i in info["ImageID"])
    assert info["ImageID"].is_unique
    assert sorted(p.name for p in (root / "eval" / "images").iterdir()) == sorted(info["ImageID"])
    assert not (root / "noise.csv").exists()


def test_gt_csv_holds_a_valid_answer_for_each_eval_image_in_info_order(tmp_path):
    root = tmp_path / "d"
    make_data(root, people=2, eval_people=4, size=(16, 16), seed=0)
    info = pd.read_csv(root / "eval" / "info.csv", dtype={"ImageID": str})
    gt = pd.read_csv(root / "gt.csv", dtype={"ImageID": str})
    assert gt["ImageID"].tolist() == info["ImageID"].tolist()
    assert gt["ans"].between(0, 17).all()
    # each eval person gives three mask classes; masks appear 5:1:1
    masks = gt["ans"] // 6
    assert masks.value_counts().to_dict() == {0: 20, 1: 4, 2: 4}


def test_generated_data_reads_back_with_matching_labels(tiny_data):
    df, _ = read_train(tiny_data)
    people = pd.read_csv(tiny_data / "train" / "train.csv", dtype=str)
    for r in people.itertuples():
        rows = df[df.person == r.path]
        g, band = L.GENDER_CODE[r.gender], int(L.age_band(float(r.age)))
        assert rows["label"].tolist() == [m * 6 + g * 3 + band for m in (0, 0, 0, 0, 0, 1, 2)]
    assert len(read_eval(tiny_data)) == 6 * 7


# --------------------------------------------------------------------------- quirks

def test_quirks_include_every_oddity_of_the_real_data(quirky):
    files = image_files(quirky)
    exts = {p.suffix for p in files}
    assert exts == {".jpg", ".jpeg", ".png", ".JPG"}
    modes = {Image.open(p).mode for p in files if p.suffix == ".png"}
    assert {"RGB", "RGBA", "L"} <= modes
    assert list((quirky / "train" / "images").rglob("._*"))
    assert [p for p in (quirky / "train" / "images").rglob(".ipynb_checkpoints") if p.is_dir()]
    ids = pd.read_csv(quirky / "train" / "train.csv", dtype=str)["id"]
    assert ids.str.fullmatch(r"\d{6}-1").any()
    df, report = read_train(quirky)
    assert len(df) == 1400 and report.junk_skipped > 0 and report.warnings == []


def test_generated_rgba_and_grayscale_pngs_convert_to_rgb(quirky):
    odd = [p for p in image_files(quirky) if p.suffix == ".png" and Image.open(p).mode in ("RGBA", "L")]
    assert odd
    for p in odd:
        arr = np.asarray(Image.open(p).convert("RGB"))
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8


def test_no_quirks_means_plain_jpgs_and_no_junk(tmp_path):
    root = tmp_path / "d"
    make_data(root, people=40, eval_people=1, size=(16, 16), seed=3, quirks=False)
    everything = [p for p in (root / "train" / "images").rglob("*") if p.is_file()]
    assert {p.suffix for p in everything} == {".jpg"}
    assert len(everything) == 280
    assert not pd.read_csv(root / "train" / "train.csv", dtype=str)["id"].str.contains("-").any()


# --------------------------------------------------------------------------- determinism and refusals

def test_the_same_seed_writes_the_same_data(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_data(a, people=12, eval_people=3, size=(16, 16), seed=5)
    make_data(b, people=12, eval_people=3, size=(16, 16), seed=5)
    for f in ("train/train.csv", "eval/info.csv", "gt.csv"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb
    for rel in fa:
        if rel.suffix.lower() in (".jpg", ".jpeg", ".png") and not rel.name.startswith("."):
            np.testing.assert_array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)), err_msg=str(rel))


def test_another_seed_writes_other_data(tmp_path):
    make_data(tmp_path / "a", people=12, eval_people=3, size=(16, 16), seed=5)
    make_data(tmp_path / "b", people=12, eval_people=3, size=(16, 16), seed=6)
    for f in ("train/train.csv", "eval/info.csv"):
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "b" / f).read_bytes()


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(KfError, match="not empty"):
        make_data(tmp_path, people=2, eval_people=1, size=(16, 16))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(KfError, match="is a file"):
        make_data(tmp_path / "f", people=2, eval_people=1, size=(16, 16))
    assert (tmp_path / "f").read_text() == "mine"


def test_an_existing_empty_folder_is_accepted(tmp_path):
    make_data(tmp_path, people=2, eval_people=1, size=(16, 16))
    assert (tmp_path / "train" / "train.csv").is_file()


@pytest.mark.parametrize("kwargs", [{"size": (15, 32)}, {"size": (32, 8)}, {"people": 0}, {"eval_people": 0}])
def test_too_small_sizes_and_counts_are_refused(tmp_path, kwargs):
    args = {"people": 2, "eval_people": 1, "size": (16, 16)} | kwargs
    with pytest.raises(KfError, match="make-data"):
        make_data(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- label noise

def test_noise_csv_corrections_restore_the_labels_the_pixels_show(tmp_path, monkeypatch):
    drawn = []
    real_draw = synth.draw_face

    def spy(rng, size, gender, age, race, mask, colour):
        drawn.append((gender, age, mask))
        return real_draw(rng, size, gender, age, race, mask, colour)

    monkeypatch.setattr(synth, "draw_face", spy)
    root = tmp_path / "d"
    counts = make_data(root, people=40, eval_people=1, size=(16, 16), seed=2, noise=0.25)
    truth = pd.DataFrame(drawn[:40 * 7], columns=["gender", "age", "mask"])  # train images come first, in order
    truth_label = L.encode(truth["mask"], truth["gender"], L.age_band(truth["age"]))

    noise = pd.read_csv(root / "noise.csv", dtype=str)
    assert list(noise.columns) == ["path", "field", "value"]
    assert set(noise["field"]) == {"gender", "mask-swap"}
    assert counts["noisy_people"] == noise["path"].nunique() > 0

    noisy, _ = read_train(root)
    fixed, report = read_train(root, corrections=root / "noise.csv")
    assert report.corrections_applied == len(noise)
    np.testing.assert_array_equal(fixed["label"].to_numpy(), truth_label.to_numpy())
    wrong_people = set(noisy.loc[noisy["label"].to_numpy() != truth_label.to_numpy(), "person"])
    assert wrong_people == set(noise["path"])


def test_noise_csv_gender_values_are_the_true_genders_opposite_train_csv(tmp_path):
    root = tmp_path / "d"
    make_data(root, people=40, eval_people=1, size=(16, 16), seed=2, noise=0.25)
    people = pd.read_csv(root / "train" / "train.csv", dtype=str).set_index("path")
    noise = pd.read_csv(root / "noise.csv", dtype=str)
    flips = noise[noise.field == "gender"]
    assert len(flips) > 0
    for r in flips.itertuples():
        assert r.value in ("male", "female") and r.value != people.loc[r.path, "gender"]
    assert set(noise.loc[noise.field == "mask-swap", "value"]) == {"incorrect_mask:normal"}


# --------------------------------------------------------------------------- a learnable signal

def test_a_linear_model_on_16x16_pixels_beats_chance_on_mask_gender_and_age(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupShuffleSplit
    from threadpoolctl import threadpool_limits

    root = tmp_path / "d"
    make_data(root, people=100, eval_people=1, size=(48, 64), seed=0, quirks=False)
    df, _ = read_train(root)
    x = np.stack([np.asarray(Image.open(root / p).convert("RGB").resize((16, 16), Image.BILINEAR),
                             dtype=np.float32).ravel() / 255 for p in df["image"]])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    tr, te = next(GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0).split(x, groups=df["person"]))
    scores = {}
    with threadpool_limits(1):  # many BLAS threads on few cores make this 50x slower
        for task in ("mask", "gender", "age_band"):
            y = df[task].to_numpy()
            clf = LogisticRegression(C=0.01, max_iter=300, class_weight="balanced").fit(x[tr], y[tr])
            scores[task] = balanced_accuracy_score(y[te], clf.predict(x[te]))
    chance = {"mask": 1 / 3, "gender": 1 / 2, "age_band": 1 / 3}
    for task, s in scores.items():
        assert s >= chance[task] + 0.2, f"{task}: balanced accuracy {s:.2f}, chance {chance[task]:.2f} ({scores})"


@pytest.mark.parametrize("noise", [-0.1, 1.5])
def test_noise_outside_zero_to_one_is_refused(tmp_path, noise):
    with pytest.raises(KfError, match="^make-data: noise .* must be a fraction in 0..1"):
        make_data(tmp_path / "d", people=2, eval_people=1, size=(16, 16), noise=noise)
    with pytest.raises(KfError, match="--noise .* must be a fraction in 0..1"), flag_errors(noise="--noise"):
        make_data(tmp_path / "d", people=2, eval_people=1, size=(16, 16), noise=noise)
