"""The competition reader (kfold.data): layout quirks, labels, corrections and bad inputs."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kfold import labels as L
from kfold.data import read_corrections, read_eval, read_people, read_train
from kfold.io import KfError
from kfold.options import flag_errors

STEMS = L.IMAGE_STEMS
HEADER = "id,gender,race,age,path"


# --------------------------------------------------------------------------- helpers

def write_image(path: Path, mode: str = "RGB") -> None:
    """A 16x16 image; the format follows the extension, whatever its case."""
    im = Image.new("RGB", (16, 16), (200, 120, 40)).convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    im.save(path, format=fmt)


def build(root: Path, people: list[tuple[str, str, str, str, str]], *, files: dict | None = None,
          modes: dict | None = None, eval_ids: tuple[str, ...] = ("a.jpg", "b.jpg", "c.jpg")) -> Path:
    """Write a competition folder by hand.

    Args:
        people: train.csv rows ``(id, gender, race, age, path)``.
        files: ``{path: {stem: file name}}`` overrides (default ``<stem>.jpg``).
        modes: ``{(path, file name): PIL mode}`` for the written image.
    """
    files, modes = files or {}, modes or {}
    (root / "train" / "images").mkdir(parents=True)
    (root / "eval" / "images").mkdir(parents=True)
    for pid, gender, race, age, path in people:
        folder = root / "train" / "images" / path
        folder.mkdir()
        for stem in STEMS:
            name = files.get(path, {}).get(stem, f"{stem}.jpg")
            write_image(folder / name, modes.get((path, name), "RGB"))
    lines = [HEADER] + [",".join(p) for p in people]
    (root / "train" / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in eval_ids:
        write_image(root / "eval" / "images" / name)
    (root / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{n},0\n" for n in eval_ids), encoding="utf-8")
    return root


PEOPLE = [
    ("000003", "female", "Asian", "58", "000003_female_Asian_58"),
    ("000001", "male", "White", "29", "000001_male_White_29"),
    ("001498", "male", "Asian", "60", "001498_male_Asian_60"),
    ("001498", "female", "Asian", "30", "001498_female_Asian_30"),  # same id, another person
    ("001498-1", "female", "Black", "45", "001498-1_female_Black_45"),
]


@pytest.fixture
def hand(tmp_path) -> Path:
    return build(tmp_path / "data", PEOPLE)


@pytest.fixture
def tiny(tiny_data, tmp_path) -> Path:
    """A private copy of the session's generated folder, safe to edit."""
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def csv_lines(root: Path) -> list[str]:
    return (root / "train" / "train.csv").read_text(encoding="utf-8").splitlines()


def set_csv(root: Path, lines: list[str]) -> None:
    (root / "train" / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def set_field(root: Path, row: int, column: str, value: str) -> None:
    """Set ``column`` of data row ``row`` (0 = first person, file line 2)."""
    lines = csv_lines(root)
    cols = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[cols.index(column)] = value
    lines[row + 1] = ",".join(cells)
    set_csv(root, lines)


# --------------------------------------------------------------------------- layout and quirks

def test_each_image_is_found_whatever_its_extension_and_case(tmp_path):
    names = {"mask1": "mask1.jpg", "mask2": "mask2.JPG", "mask3": "mask3.jpeg", "mask4": "mask4.PNG",
             "mask5": "mask5.png", "incorrect_mask": "incorrect_mask.Jpeg", "normal": "normal.png"}
    person = PEOPLE[1]
    root = build(tmp_path / "d", [person], files={person[4]: names})
    df, report = read_train(root)
    assert df["image"].tolist() == [f"train/images/{person[4]}/{names[s]}" for s in STEMS]
    assert df["stem"].tolist() == list(STEMS)
    assert report.warnings == []
    assert all((root / p).is_file() for p in df["image"])


def test_rgba_and_grayscale_pngs_are_listed_like_any_image_and_open_as_rgb(tmp_path):
    person = PEOPLE[0]
    names = {"mask1": "mask1.png", "normal": "normal.png"}
    modes = {(person[4], "mask1.png"): "RGBA", (person[4], "normal.png"): "L"}
    root = build(tmp_path / "d", [person], files={person[4]: names}, modes=modes)
    df, _ = read_train(root)
    by_stem = dict(zip(df["stem"], df["image"]))
    assert Image.open(root / by_stem["mask1"]).mode == "RGBA"
    assert Image.open(root / by_stem["normal"]).mode == "L"
    for stem in ("mask1", "normal"):
        rgb = Image.open(root / by_stem[stem]).convert("RGB")
        assert rgb.mode == "RGB" and np.asarray(rgb).shape == (16, 16, 3)


def test_mac_junk_and_notebook_checkpoint_folders_are_skipped_and_counted(hand):
    folder = hand / "train" / "images" / PEOPLE[0][4]
    (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    (folder / "._normal.png").write_bytes(b"junk")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "mask1-checkpoint.jpg").write_bytes(b"junk")
    df, report = read_train(hand)
    assert report.junk_skipped == 3
    assert report.warnings == []
    assert "3 junk file(s) skipped" in report.summary()
    assert len(df) == 7 * len(PEOPLE)
    assert not df["image"].str.contains(r"/\.", regex=True).any()


def test_repeated_ids_with_different_paths_are_separate_people(hand):
    df, _ = read_train(hand)
    assert df["person"].nunique() == len(PEOPLE)
    same_id = df[df["id"] == "001498"]
    assert sorted(same_id["person"].unique()) == ["001498_female_Asian_30", "001498_male_Asian_60"]
    assert len(same_id) == 14
    # each keeps its own labels
    assert set(same_id.loc[same_id.person == "001498_male_Asian_60", "gender"]) == {0}
    assert set(same_id.loc[same_id.person == "001498_female_Asian_30", "gender"]) == {1}


def test_ids_keep_suffixes_and_leading_zeros_as_text(hand):
    people = read_people(hand)
    assert people["id"].tolist() == ["000003", "000001", "001498", "001498", "001498-1"]
    df, _ = read_train(hand)
    assert df.loc[df.person == "001498-1_female_Black_45", "id"].unique().tolist() == ["001498-1"]


def test_one_row_per_image_in_train_csv_order_then_mask1_to_5_incorrect_normal(hand):
    df, _ = read_train(hand)
    assert len(df) == 35
    expected_people = [p[4] for p in PEOPLE for _ in STEMS]
    assert df["person"].tolist() == expected_people
    assert df["stem"].tolist() == list(STEMS) * len(PEOPLE)
    assert df["image"].tolist() == [f"train/images/{p[4]}/{s}.jpg" for p in PEOPLE for s in STEMS]
    assert list(df.index) == list(range(35))


def test_labels_combine_mask_gender_and_age_band(hand):
    df, _ = read_train(hand)
    # (gender, band) of each person with the competition cuts 30/60
    gb = {"000003_female_Asian_58": (1, 1), "000001_male_White_29": (0, 0), "001498_male_Asian_60": (0, 2),
          "001498_female_Asian_30": (1, 1), "001498-1_female_Black_45": (1, 1)}
    for r in df.itertuples():
        g, b = gb[r.person]
        m = L.MASK_OF_STEM[r.stem]
        assert (r.gender, r.age_band, r.mask) == (g, b, m)
        assert r.label == m * 6 + g * 3 + b
    assert df["label"].dtype == np.int64
    first = df[df.person == "001498_male_Asian_60"]["label"].tolist()
    assert first == [2, 2, 2, 2, 2, 8, 14]


def test_age_cut_58_moves_a_58_year_old_to_the_oldest_band(hand):
    df60, _ = read_train(hand, age_cuts=(30, 60))
    df58, _ = read_train(hand, age_cuts=(30, 58))
    who = df60.person == "000003_female_Asian_58"
    assert set(df60.loc[who, "age_band"]) == {1}
    assert set(df58.loc[who, "age_band"]) == {2}
    assert (df58.loc[who, "label"] - df60.loc[who, "label"]).tolist() == [1] * 7
    assert (df58.loc[~who, "label"] == df60.loc[~who, "label"]).all()


def test_the_generated_tiny_set_reads_as_seven_labelled_images_per_person(tiny_data):
    df, report = read_train(tiny_data)
    people = pd.read_csv(tiny_data / "train" / "train.csv", dtype=str)
    assert df["person"].drop_duplicates().tolist() == people["path"].tolist()
    assert len(df) == 7 * len(people)
    assert report.warnings == []
    assert df["label"].between(0, 17).all()
    assert (df.groupby("person")["label"].nunique() == 3).all()  # wear, incorrect, normal


# --------------------------------------------------------------------------- accepted oddities

def test_gender_with_spaces_and_capitals_is_accepted(hand):
    set_field(hand, 1, "gender", " Female ")
    set_field(hand, 2, "gender", "MALE")
    df, _ = read_train(hand)
    assert set(df.loc[df.person == "000001_male_White_29", "gender"]) == {1}
    assert set(df.loc[df.person == "001498_male_Asian_60", "gender"]) == {0}


def test_bom_and_crlf_line_endings_in_train_csv_are_accepted(hand):
    plain, _ = read_train(hand)
    text = "\r\n".join(csv_lines(hand)) + "\r\n"
    (hand / "train" / "train.csv").write_bytes(("\ufeff" + text).encode("utf-8"))
    df, _ = read_train(hand)
    pd.testing.assert_frame_equal(df, plain)


def test_bom_and_crlf_in_info_csv_are_accepted(hand):
    (hand / "eval" / "info.csv").write_bytes("\ufeffImageID,ans\r\na.jpg,0\r\nb.jpg,0\r\n".encode("utf-8"))
    assert read_eval(hand)["ImageID"].tolist() == ["a.jpg", "b.jpg"]


def test_an_unknown_extra_file_is_a_warning_and_the_run_continues(hand, caplog):
    folder = hand / "train" / "images" / PEOPLE[2][4]
    (folder / "notes.txt").write_text("hello")
    (folder / "mask1.gif").write_bytes(b"GIF89a")
    with caplog.at_level(logging.WARNING, logger="kfold.data"):
        df, report = read_train(hand)
    assert len(df) == 35
    assert len(report.warnings) == 2
    assert all("unexpected file, skipped" in w for w in report.warnings)
    assert any(str(folder / "notes.txt") in w for w in report.warnings)
    assert report.summary().startswith("2 warning(s)")
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(logged) == sorted(report.warnings)
    assert not df["image"].str.endswith((".txt", ".gif")).any()


def test_folders_not_listed_in_train_csv_are_ignored(hand):
    (hand / "train" / "images" / "999999_male_Asian_20").mkdir()
    df, report = read_train(hand)
    assert "999999_male_Asian_20" not in set(df.person)
    assert report.warnings == []


# --------------------------------------------------------------------------- bad inputs stop the run

def _drop_column(root, col):
    rows = [line.split(",") for line in csv_lines(root)]
    i = rows[0].index(col)
    set_csv(root, [",".join(r[:i] + r[i + 1:]) for r in rows])


def _duplicate_path(root):
    lines = csv_lines(root)
    cells = lines[1].split(",")
    cells[0] = "009999"
    set_csv(root, lines + [",".join(cells)])


def _delete_image(root):
    (root / "train" / "images" / PEOPLE[1][4] / "normal.jpg").unlink()


def _delete_folder(root):
    shutil.rmtree(root / "train" / "images" / PEOPLE[3][4])


def _delete_eval_image(root):
    (root / "eval" / "images" / "b.jpg").unlink()


def _duplicate_image_id(root):
    (root / "eval" / "info.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,0\na.jpg,0\n", encoding="utf-8")


def _two_files_for_one_image(root):
    write_image(root / "train" / "images" / PEOPLE[0][4] / "mask2.png")


BAD_INPUTS = {
    # name: (edit, reader, file named, text that must appear)
    "missing train.csv column": (lambda r: _drop_column(r, "age"), "train", "train/train.csv", "missing column(s) age"),
    "non-numeric age": (lambda r: set_field(r, 1, "age", "abc"), "train", "train/train.csv", "row 3"),
    "negative age": (lambda r: set_field(r, 2, "age", "-4"), "train", "train/train.csv", "row 4"),
    "empty age": (lambda r: set_field(r, 0, "age", ""), "train", "train/train.csv", "row 2"),
    "not-a-number age": (lambda r: set_field(r, 0, "age", "nan"), "train", "train/train.csv", "row 2"),
    "unknown gender": (lambda r: set_field(r, 3, "gender", "F"), "train", "train/train.csv", "row 5"),
    "empty path": (lambda r: set_field(r, 4, "path", ""), "train", "train/train.csv", "row 6"),
    "duplicate path": (_duplicate_path, "train", "train/train.csv", "row 7"),
    "header-only train.csv": (lambda r: set_csv(r, [HEADER]), "train", "train/train.csv", "empty"),
    "zero-byte train.csv": (lambda r: (r / "train" / "train.csv").write_bytes(b""), "train", "train/train.csv", "empty"),
    "missing train.csv": (lambda r: (r / "train" / "train.csv").unlink(), "train", "train/train.csv", "not found"),
    "person folder with a missing image": (_delete_image, "train", f"train/images/{PEOPLE[1][4]}", "normal"),
    "two files for one image": (_two_files_for_one_image, "train", f"train/images/{PEOPLE[0][4]}", "mask2"),
    "person folder absent": (_delete_folder, "train", "train/train.csv", PEOPLE[3][4]),
    "info.csv image absent": (_delete_eval_image, "eval", "eval/info.csv", "row 3"),
    "info.csv duplicate ImageID": (_duplicate_image_id, "eval", "eval/info.csv", "row 4"),
    "header-only info.csv": (lambda r: (r / "eval" / "info.csv").write_text("ImageID,ans\n"), "eval", "eval/info.csv", "empty"),
    "info.csv without ImageID": (lambda r: (r / "eval" / "info.csv").write_text("id,ans\na.jpg,0\n"), "eval", "eval/info.csv", "ImageID"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_stops_with_one_line_naming_the_file_and_row(hand, case):
    edit, reader, named, text = BAD_INPUTS[case]
    edit(hand)
    with pytest.raises(KfError) as err:
        read_train(hand) if reader == "train" else read_eval(hand)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(hand / named) in msg
    assert text in msg


def test_a_missing_data_folder_says_how_to_point_at_one(tmp_path):
    with pytest.raises(KfError, match=r"\(pass root or set KF_DATA\)$"):
        read_train(tmp_path / "nowhere")
    with pytest.raises(KfError, match="--data"), flag_errors(root="--data"):
        read_train(tmp_path / "nowhere")


def test_read_eval_keeps_info_csv_order_and_paths(hand):
    (hand / "eval" / "info.csv").write_text("ImageID,ans\nc.jpg,0\na.jpg,0\nb.jpg,0\n", encoding="utf-8")
    ev = read_eval(hand)
    assert ev["ImageID"].tolist() == ["c.jpg", "a.jpg", "b.jpg"]
    assert ev["image"].tolist() == ["eval/images/c.jpg", "eval/images/a.jpg", "eval/images/b.jpg"]


def test_generated_eval_set_reads_in_info_csv_order(tiny_data):
    ev = read_eval(tiny_data)
    info = pd.read_csv(tiny_data / "eval" / "info.csv", dtype=str)
    assert ev["ImageID"].tolist() == info["ImageID"].tolist()
    assert all((tiny_data / p).is_file() for p in ev["image"])


# --------------------------------------------------------------------------- label corrections

def write_corrections(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame(rows, columns=["path", "field", "value"]).to_csv(path, index=False)
    return path


def test_a_gender_correction_flips_that_persons_gender_and_is_counted(hand, tmp_path):
    before, _ = read_train(hand)
    corr = write_corrections(tmp_path / "c.csv", [("000001_male_White_29", "gender", "female")])
    df, report = read_train(hand, corrections=corr)
    who = df.person == "000001_male_White_29"
    assert set(df.loc[who, "gender"]) == {1}
    assert (df.loc[who, "label"] - before.loc[who, "label"]).tolist() == [3] * 7
    assert (df.loc[~who, "label"] == before.loc[~who, "label"]).all()
    assert report.corrections_applied == 1
    assert "1 label correction(s) applied" in report.summary()


def test_an_age_correction_moves_the_age_band(hand, tmp_path):
    corr = write_corrections(tmp_path / "c.csv", [("000001_male_White_29", "age", "61")])
    df, report = read_train(hand, corrections=corr)
    who = df.person == "000001_male_White_29"
    assert set(df.loc[who, "age"]) == {61.0}
    assert set(df.loc[who, "age_band"]) == {2}
    assert df.loc[who, "label"].tolist() == [2, 2, 2, 2, 2, 8, 14]
    assert report.corrections_applied == 1


def test_a_mask_swap_exchanges_incorrect_and_normal_labels(hand, tmp_path):
    corr = write_corrections(tmp_path / "c.csv", [("000003_female_Asian_58", "mask-swap", "incorrect_mask:normal")])
    df, report = read_train(hand, corrections=corr)
    who = df.person == "000003_female_Asian_58"
    assert df.loc[who, "mask"].tolist() == [0, 0, 0, 0, 0, 2, 1]
    assert df.loc[who, "stem"].tolist() == list(STEMS)  # files stay; only labels move
    assert df.loc[~who, "mask"].tolist() == [0, 0, 0, 0, 0, 1, 2] * (len(PEOPLE) - 1)
    assert report.corrections_applied == 1


def test_an_empty_mask_swap_value_means_incorrect_mask_and_normal(hand, tmp_path):
    corr = write_corrections(tmp_path / "c.csv", [("000003_female_Asian_58", "mask-swap", "")])
    df, _ = read_train(hand, corrections=corr)
    assert df.loc[df.person == "000003_female_Asian_58", "mask"].tolist() == [0, 0, 0, 0, 0, 2, 1]


def test_corrections_that_change_nothing_are_not_counted(hand, tmp_path):
    corr = write_corrections(tmp_path / "c.csv", [("000001_male_White_29", "gender", "Male"),
                                                  ("000001_male_White_29", "age", "29"),
                                                  ("000003_female_Asian_58", "age", "59"),
                                                  ("001498_male_Asian_60", "gender", "female")])
    before, _ = read_train(hand)
    df, report = read_train(hand, corrections=corr)
    assert report.corrections_applied == 2  # the age 58 -> 59 and the gender flip
    assert (df.label != before.label).sum() == 7


@pytest.mark.parametrize("row, text", [
    (("999999_male_Asian_20", "gender", "male"), "unknown person path"),
    (("000001_male_White_29", "race", "Asian"), "unknown field"),
    (("000001_male_White_29", "gender", "f"), "gender value"),
    (("000001_male_White_29", "age", "old"), "age value"),
    (("000001_male_White_29", "age", "-1"), "age value"),
    (("000001_male_White_29", "mask-swap", "mask1:mask1"), "mask-swap value"),
    (("000001_male_White_29", "mask-swap", "incorrect_mask"), "mask-swap value"),
    (("000001_male_White_29", "mask-swap", "incorrect:normal"), "mask-swap value"),
])
def test_a_bad_correction_row_stops_with_the_file_and_row(hand, tmp_path, row, text):
    corr = write_corrections(tmp_path / "c.csv", [("000003_female_Asian_58", "age", "40"), row])
    with pytest.raises(KfError) as err:
        read_train(hand, corrections=corr)
    msg = str(err.value)
    assert msg.startswith(f"{corr}: row 3: ")
    assert text in msg and "\n" not in msg


def test_a_corrections_file_without_the_value_column_is_refused(hand, tmp_path):
    corr = tmp_path / "c.csv"
    corr.write_text("path,field\n000001_male_White_29,gender\n")
    with pytest.raises(KfError, match="missing column"):
        read_corrections(corr, read_people(hand))
