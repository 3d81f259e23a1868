"""Files as users have them (issue 21 and issue 17 item 6): one decoder, one reader per format,
writes that fail in one line, one writer at a time, no leftovers after a kill.

Each numbered case of the issue is a regression test asserting the right value:
1 every PIL mode, 16-bit grey scaled to 8 bits; 2 EXIF orientation; 3 one definition of an image;
4 whole-number floats in fold/label columns; 5 long file names; 6 write failures in one line;
7 concurrent ``kf ensemble`` calls; plus the removal of stale temporaries (checkpoints included).
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from ensemble.synth import write_synthetic_runs
from kf.cli import main
from kfold.images import DECODER_VERSION, image_info, is_image_name, load_image, to_rgb
from kfold.io import KfError, atomic_write, remove_stale_temporaries, temporary_path
from kfold.locks import stage_lock
from kfold.stagefiles import PROB_COLS

TINY = ["--set", "model=test_efficientnet", "--set", "pretrained=none", "--set", "image_size=[32,32]",
        "--set", "epochs=1", "--set", "batch_size=16", "--set", "tta=none", "--set", "eval_batch_size=64"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(res, *fragments: str) -> str:
    """The single stderr line of a refused command (exit 2, no traceback), checked for ``fragments``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def face(tiny_data) -> np.ndarray:
    """An upright (64, 48, 3) uint8 face from the generated data (48 wide, 64 high)."""
    src = sorted((tiny_data / "eval" / "images").iterdir())[0]
    return cv2.resize(load_image(src), (48, 64), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- 1. modes

def _grey(face):
    return np.asarray(Image.fromarray(face).convert("L"))


def test_16_bit_grey_png_is_scaled_to_8_bits_not_fed_as_white(tmp_path, face):
    grey = _grey(face)
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # what a 16-bit export holds
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    g8, g16 = load_image(tmp_path / "g8.png"), load_image(tmp_path / "g16.png")
    assert np.abs(g16.astype(int) - g8.astype(int)).max() <= 1
    assert g16.mean() < 250  # not the all-white image PIL's convert("RGB") makes of it


def _cmyk(face):
    cmy = 255 - face
    return Image.fromarray(np.dstack([cmy, np.zeros(face.shape[:2], np.uint8)]), "CMYK")


def _palette(face):
    pal = np.array([[0, 0, 0], [200, 30, 40], [20, 220, 60], [250, 250, 250]], np.uint8)
    idx = (face[:, :, 0] // 64).astype(np.uint8)
    return idx, pal


def _p(face, alpha):
    idx, pal = _palette(face)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.ravel().tolist())
    return im.convert("PA") if alpha else im


MODES = {  # mode -> (build the image, expected RGB)
    "1": (lambda f: Image.fromarray(_grey(f) > 127).convert("1"),
          lambda f: np.repeat(np.where(_grey(f) > 127, 255, 0).astype(np.uint8)[:, :, None], 3, 2)),
    "L": (lambda f: Image.fromarray(_grey(f)), lambda f: np.repeat(_grey(f)[:, :, None], 3, 2)),
    "LA": (lambda f: Image.fromarray(np.dstack([_grey(f), _grey(f) // 2]), "LA"),
           lambda f: np.repeat(_grey(f)[:, :, None], 3, 2)),
    "P": (lambda f: _p(f, False), lambda f: _palette(f)[1][_palette(f)[0]]),
    "PA": (lambda f: _p(f, True), lambda f: _palette(f)[1][_palette(f)[0]]),
    "RGB": (lambda f: Image.fromarray(f), lambda f: f),
    "RGBA": (lambda f: Image.fromarray(np.dstack([f, 255 - f[:, :, :1]]), "RGBA"), lambda f: f),
    "CMYK": (_cmyk, lambda f: f),
    "I;16": (lambda f: Image.fromarray(_grey(f).astype(np.uint16) * 257), lambda f: np.repeat(_grey(f)[:, :, None], 3, 2)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_pil_opens_decodes_to_the_right_8_bit_rgb(tmp_path, face, mode):
    build, want = MODES[mode]
    im = build(face)
    assert im.mode == mode
    if mode == "PA":  # no format PIL writes keeps PA (a PNG palette with alpha opens as P + transparency)
        got = to_rgb(im, "x")
        assert got.shape == (64, 48, 3) and np.abs(got.astype(int) - want(face).astype(int)).max() <= 1
        im, mode = im.convert("P"), "P"
        im.info["transparency"] = 0
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path, **({"transparency": 0} if "transparency" in im.info else {}))
    assert Image.open(path).mode == mode
    got = load_image(path)
    assert got.shape == (64, 48, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want(face).astype(int)).max() <= 1


def test_16_bit_rgb_png_is_read_within_one_level_of_its_8_bit_values(tmp_path, face):
    rgb16 = face.astype(np.uint16) * 257 + 100  # not a plain 8-bit value times 257
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[:, :, ::-1])  # OpenCV writes 16-bit PNG, BGR
    got = load_image(tmp_path / "rgb16.png")
    assert np.abs(got.astype(int) - np.rint(rgb16 / 257).astype(int)).max() <= 1


@pytest.mark.parametrize("mode,array", [("F", np.float32), ("I", np.int32)])
def test_modes_without_an_agreed_range_are_refused_in_one_line_naming_file_and_mode(tmp_path, face, mode, array):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(_grey(face).astype(array) * 3).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(KfError, match=rf"^{path}: mode {mode} \((32-bit float|32-bit integer)\) has no agreed range"):
        load_image(path)
    w, h, got_mode, problem = image_info(path)  # kf eda's view of the same file
    assert (w, h, got_mode) == (48, 64, mode) and "has no agreed range" in problem


# --------------------------------------------------------------------------- 2. EXIF orientation

def _sideways_with_orientation_6(upright: np.ndarray, path: Path, **save) -> None:
    """Stored 90 degrees counter-clockwise with Orientation 6 (rotate 90 clockwise to view), as phones do."""
    im = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, exif=exif, **save)


def test_exif_orientation_6_jpeg_is_decoded_upright_everywhere(tmp_path, face):
    Image.fromarray(face).save(tmp_path / "upright.jpg", quality=95)
    _sideways_with_orientation_6(face, tmp_path / "phone.jpg", quality=95)
    assert Image.open(tmp_path / "phone.jpg").size == (64, 48)  # stored sideways
    got, want = load_image(tmp_path / "phone.jpg"), load_image(tmp_path / "upright.jpg")
    assert got.shape == (64, 48, 3)
    assert np.abs(got.astype(float) - want.astype(float)).mean() < 2
    assert image_info(tmp_path / "phone.jpg")[:2] == (48, 64)  # kf eda's size: the upright one

    from kfold.cache import build_cache

    arr = build_cache([tmp_path / "phone.jpg", tmp_path / "upright.jpg"], (64, 48), tmp_path / "cache", n_jobs=1)
    np.testing.assert_array_equal(arr[0], got)  # training reads the same pixels


def test_the_cache_name_changes_with_the_decoder_version(tmp_path, face, monkeypatch):
    from kfold import cache as C

    Image.fromarray(face).save(tmp_path / "a.png")
    before = C.cache_key([tmp_path / "a.png"], (32, 32))
    monkeypatch.setattr(C, "DECODER_VERSION", DECODER_VERSION + 1)
    assert C.cache_key([tmp_path / "a.png"], (32, 32)) != before  # a cache decoded sideways is never reused


def test_kf_eda_reports_upright_sizes_and_notes_16_bit_and_refused_modes(tmp_path, tiny_data, face):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    person = sorted((data / "train" / "images").iterdir())[0]
    for f in person.glob("mask1.*"):
        f.unlink()
    _sideways_with_orientation_6(face, person / "mask1.jpg")
    for f in person.glob("mask2.*"):
        f.unlink()
    Image.fromarray(_grey(face).astype(np.uint16) * 257).save(person / "mask2.png")
    res = invoke("eda", "--data", data, "--out", tmp_path / "eda")
    assert res.exit_code == 0, res.output
    sizes = pd.read_csv(tmp_path / "eda" / "image_sizes.csv")
    assert ((sizes.width == 48) & (sizes.height == 64) & (sizes["mode"] == "RGB")).any()
    assert not ((sizes.width == 64) & (sizes.height == 48)).any()
    assert "1 16-bit grey image(s) (mode I;16): kf scales them to 8 bits" in res.output


# --------------------------------------------------------------------------- 3. one definition of an image + predict

@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny run trained through the CLI (test_efficientnet 32x32, 1 epoch, K=2)."""
    tmp = tmp_path_factory.mktemp("userfiles")
    (tmp / "tiny.yaml").write_text("seed: 7\n")
    oof = tmp / "oof"
    res = invoke("train", "--data", tiny_data, "--oof", oof, "--k", "2", "--config", tmp / "tiny.yaml", "--no-progress", *TINY)
    assert res.exit_code == 0, res.output
    return oof


def test_kf_predict_takes_every_image_kf_train_takes_and_names_what_it_skips(tmp_path, trained, face):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for ext in (".jpg", ".PNG", ".webp", ".bmp", ".tiff"):
        Image.fromarray(face).save(imgs / f"face{ext}", **({"lossless": True} if ext == ".webp" else {}))
    (imgs / "notes.txt").write_text("not an image")
    (imgs / ".DS_Store").write_bytes(b"junk")
    res = invoke("predict", "tiny", "--oof", trained, "--images", imgs, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "p.csv")
    assert sorted(got["ImageID"]) == sorted(f"face{e}" for e in (".jpg", ".PNG", ".webp", ".bmp", ".tiff"))
    assert "skipped 1 entry that is not an image kf reads" in res.stderr and "notes.txt" in res.stderr
    assert all(is_image_name(n) for n in got["ImageID"]) and not is_image_name(".DS_Store")


def test_kf_predict_gives_a_16_bit_or_sideways_face_the_probabilities_of_the_plain_face(tmp_path, trained, face):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    grey = _grey(face)
    Image.fromarray(grey).save(imgs / "a_grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(imgs / "b_grey16.png")
    Image.fromarray(np.full_like(grey, 255)).save(imgs / "c_white.png")
    Image.fromarray(face).save(imgs / "d_upright.png")
    _sideways_with_orientation_6(face, imgs / "e_sideways.png")  # PNG eXIf chunk: lossless, so exactly equal
    res = invoke("predict", "tiny", "--oof", trained, "--images", imgs, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    p = pd.read_csv(tmp_path / "p.csv").set_index("ImageID")[PROB_COLS]
    np.testing.assert_allclose(p.loc["b_grey16.png"], p.loc["a_grey8.png"], atol=1e-6)
    assert not np.allclose(p.loc["b_grey16.png"], p.loc["c_white.png"], atol=1e-6)  # the issue: exactly the white one
    np.testing.assert_allclose(p.loc["e_sideways.png"], p.loc["d_upright.png"], atol=1e-6)


def test_an_eval_imageid_that_is_not_an_image_kf_reads_is_refused_by_the_reader(tmp_path, tiny_data):
    import shutil

    from kfold.data import read_eval

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    info = pd.read_csv(data / "eval" / "info.csv", dtype=str)
    first = info.loc[0, "ImageID"]
    os.rename(data / "eval" / "images" / first, data / "eval" / "images" / (first + ".heic"))
    info.loc[0, "ImageID"] = first + ".heic"
    info.to_csv(data / "eval" / "info.csv", index=False)
    with pytest.raises(KfError, match=r"info\.csv: row 2: ImageID '.*\.heic' is not an image kf reads \(an image must be "):
        read_eval(data)


# --------------------------------------------------------------------------- 4. whole-number floats

@pytest.fixture
def synth(tmp_path):
    oof = tmp_path / "oof"
    write_synthetic_runs(oof, n_people=20, n_runs=2, k=3, n_test=14, seed=5)
    return oof


def _as_floats(path: Path, col: str, value=None, row: int | None = None) -> None:
    df = pd.read_csv(path, dtype={"person": str})
    df[col] = df[col].astype(float)
    if row is not None:
        df.loc[row, col] = value
    df.to_csv(path, index=False)


def test_a_fold_column_written_as_floats_reads_as_integers_in_every_reader(synth, tmp_path):
    from kfold.folds import load_folds
    from kfold.runset import load_runs
    from reports.evaluate import read_oof

    want = load_runs(synth, ["run0", "run1"])
    res = invoke("ensemble", "--oof", synth, "--method", "soft")
    assert res.exit_code == 0, res.output
    before = pd.read_csv(synth / "ensemble" / "soft" / "oof.csv")
    for f in ("folds.csv", "run0/oof.csv", "run1/oof.csv"):
        _as_floats(synth / f, "fold")
        _as_floats(synth / f, "label")
    assert pd.read_csv(synth / "run0" / "oof.csv", dtype=str)["fold"].str.fullmatch(r"\d\.0").all()  # 1.0, as pandas writes
    got = load_runs(synth, ["run0", "run1"])
    assert got.folds.dtype == np.int64 and (got.folds == want.folds).all() and (got.y == want.y).all()
    assert load_folds(synth)["fold"].tolist() == want.keys["fold"].tolist()
    keys, _ = read_oof(synth / "run0" / "oof.csv")
    assert keys["fold"].dtype == np.int64 and keys["fold"].tolist() == want.keys["fold"].tolist()
    res = invoke("ensemble", "--oof", synth, "--method", "soft")
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_csv(synth / "ensemble" / "soft" / "oof.csv"), before)
    res = invoke("report", "--oof", synth, "--top", "0", "run0")
    assert res.exit_code == 0, res.output


def test_a_real_fractional_fold_is_refused_by_every_reader_with_the_same_line(synth):
    from reports.evaluate import read_oof

    _as_floats(synth / "run0" / "oof.csv", "fold", 1.5, row=3)
    want = f"{synth / 'run0' / 'oof.csv'}: row 5: fold 1.5 is not a fold number (a whole number >= 0)"
    one_error_line(invoke("ensemble", "--oof", synth, "--method", "soft"), want)
    one_error_line(invoke("report", "--oof", synth, "--top", "0", "run0"), want)
    with pytest.raises(KfError, match=want.replace("(", r"\(").replace(")", r"\)")):
        read_oof(synth / "run0" / "oof.csv")


# --------------------------------------------------------------------------- 5. long names

def test_a_249_byte_output_name_is_written(tmp_path, tiny_data):
    oof = tmp_path / "oof"
    ids = pd.read_csv(tiny_data / "eval" / "info.csv", dtype=str)["ImageID"]
    (oof / "r").mkdir(parents=True)
    probs = np.full((len(ids), 18), 1 / 18)
    probs[:, 4] += 0.5
    probs /= probs.sum(1, keepdims=True)
    pd.concat([pd.DataFrame({"ImageID": ids}), pd.DataFrame(probs, columns=PROB_COLS)], axis=1).to_csv(oof / "r" / "test.csv", index=False)
    out = tmp_path / ("s" * 245 + ".csv")
    assert len(out.name.encode()) == 249
    res = invoke("submit", "--data", tiny_data, "--oof", oof, "--from", "r", "--out", out)
    assert res.exit_code == 0, res.output
    assert pd.read_csv(out)["ans"].eq(4).all()
    assert len(temporary_path(out).name.encode()) <= 255
    uni = tmp_path / ("é" * 125 + ".csv")  # 254 bytes, cut on a character boundary
    with atomic_write(uni) as fh:
        fh.write("x")
    assert uni.read_text() == "x" and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --------------------------------------------------------------------------- 6. write failures

def _refuse_temporaries(monkeypatch, err: int):
    """The file system refuses to create kf's temporary files (as a read-only or full disk would)."""
    real = os.open

    def fake(path, flags, *a, **k):
        if str(path).endswith(".tmp") and flags & os.O_CREAT:
            raise OSError(err, os.strerror(err), str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake)


@pytest.fixture
def synth_done(synth):
    """Synthetic runs with a soft ensemble already written (so 'old files' exist)."""
    res = invoke("ensemble", "--oof", synth, "--method", "soft")
    assert res.exit_code == 0, res.output
    return synth


WRITERS = {  # command -> (argv, the file named in the error)
    "submit": (lambda o, d, t: ["submit", "--data", d, "--oof", o, "--from", "run0", "--out", t / "sub.csv"], "sub.csv"),
    "eda": (lambda o, d, t: ["eda", "--data", d, "--out", t / "eda"], "eda/"),
    "folds": (lambda o, d, t: ["folds", "--data", d, "--oof", t / "oof2", "--k", "2"], "oof2/folds.csv"),
    "report": (lambda o, d, t: ["report", "--oof", o, "--top", "0", "run0"], "report/"),
    "ensemble": (lambda o, d, t: ["ensemble", "--oof", o, "--method", "soft"], "ensemble/"),
}


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
@pytest.mark.parametrize("cmd", list(WRITERS))
def test_a_refused_write_is_one_error_line_exit_2_and_keeps_the_old_files(tmp_path, tiny_data, synth_done, monkeypatch,
                                                                          cmd, err):
    argv, named = WRITERS[cmd]
    if cmd == "submit":  # the synthetic test.csv holds other ImageIDs than tiny_data: make a matching run
        ids = pd.read_csv(tiny_data / "eval" / "info.csv", dtype=str)["ImageID"]
        p = np.full((len(ids), 18), 1 / 18)
        pd.concat([pd.DataFrame({"ImageID": ids}), pd.DataFrame(p, columns=PROB_COLS)], axis=1).to_csv(
            synth_done / "run0" / "test.csv", index=False)
    before = {p: p.read_bytes() for p in synth_done.rglob("*") if p.is_file()}
    _refuse_temporaries(monkeypatch, err)
    res = invoke(*argv(synth_done, tiny_data, tmp_path))
    line = one_error_line(res, f"cannot write: {os.strerror(err)}")
    assert named.rstrip("/") in line
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in synth_done.rglob("*") if p.is_file() and not p.name.endswith(".lock")} == \
        {p: b for p, b in before.items() if not p.name.endswith(".lock")}
    assert [p for p in tmp_path.rglob("*.tmp")] == []


def test_a_failed_fsync_or_rename_is_one_line_and_no_temporary(tmp_path, monkeypatch):
    from kfold import io as kio

    out = tmp_path / "x.csv"
    out.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(kio.os, "fsync", full)
    with pytest.raises(KfError, match=rf"^{out}: cannot write: No space left on device \(errno {errno.ENOSPC}\)$"):
        kio.write_csv(pd.DataFrame({"a": [1]}), out)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_kf_predict_and_kf_train_check_they_can_write_before_computing(tmp_path, tiny_data, trained, monkeypatch):
    import ensemble.predict
    import kfold.data

    def never(*a, **k):
        raise AssertionError("computed before checking the output")

    monkeypatch.setattr(ensemble.predict, "predict_dir", never)
    monkeypatch.setattr(kfold.data, "load_data", never)
    _refuse_temporaries(monkeypatch, errno.EROFS)
    res = invoke("predict", "tiny", "--oof", trained, "--images", tiny_data / "eval" / "images", "--out", tmp_path / "p.csv")
    one_error_line(res, f"{tmp_path / 'p.csv'}: cannot write: Read-only file system")
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    res = invoke("train", "--data", tiny_data, "--oof", tmp_path / "oof", "--config", tmp_path / "c.yaml", *TINY)
    one_error_line(res, f"{tmp_path / 'oof'}: cannot write: Read-only file system")
    assert not (tmp_path / "oof").exists()


# --------------------------------------------------------------------------- 7. concurrent kf ensemble

def test_two_concurrent_ensemble_calls_behave_as_if_serialised_and_best_holds_one_candidate(synth, monkeypatch):
    """A hook between best's check and its writes: without the lock the second call checks while the first waits."""
    import ensemble.pipeline as P
    from kfold.io import read_json
    from kfold.stagefiles import read_oof_csv

    real = P.previous_best
    events: list[str] = []
    second_checked = threading.Event()

    def hooked(oof_dir, fp):
        me = threading.current_thread().name
        out = real(oof_dir, fp)
        events.append(f"{me} check")
        if me == "A":
            second_checked.wait(timeout=3)  # without the lock B checks now; with it, B waits for A's writes
        else:
            second_checked.set()
        return out

    real_write = P.write_probs_csv

    def record_write(path, *a, **k):
        if Path(path).parent.name == "best":
            events.append(f"{threading.current_thread().name} write")
        return real_write(path, *a, **k)

    monkeypatch.setattr(P, "previous_best", hooked)
    monkeypatch.setattr(P, "write_probs_csv", record_write)
    results, errors = {}, []

    def call(name, runs):
        try:
            results[name] = P.run_ensemble(synth, "soft", runs=runs, name=f"blend_{name}")
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    a = threading.Thread(target=call, args=("A", ["run0", "run1"]), name="A")
    b = threading.Thread(target=call, args=("B", ["run0"]), name="B")
    a.start()
    while "A check" not in events and a.is_alive():
        a.join(0.01)
    b.start()
    a.join()
    b.join()
    assert errors == []
    checks = [e for e in events if e.endswith("check")]
    assert checks == ["A check", "B check"]
    first_b = events.index("B check")
    assert "A write" in events[:first_b] and all(e.startswith("A") for e in events[:first_b])  # A wrote best/ before B looked
    best = read_json(synth / "ensemble" / "best" / "run.json")
    top = max(r.best["selection_score"] for r in results.values())
    assert best["selection_score"] == pytest.approx(top)  # never lower than a finished call reported
    chosen = best["chosen"]
    src = synth / chosen if chosen.startswith("run") else synth / "ensemble" / chosen
    _, want = read_oof_csv(src / "oof.csv")
    _, got = read_oof_csv(synth / "ensemble" / "best" / "oof.csv")
    np.testing.assert_allclose(got, want, atol=1e-7)  # oof.csv of the same candidate as run.json


def test_a_second_kf_train_on_the_same_run_waits_for_the_lock(tmp_path):
    held, released, order = threading.Event(), threading.Event(), []

    def first():
        with stage_lock(tmp_path / "run"):
            order.append("first in")
            held.set()
            released.wait(timeout=5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait(timeout=5)
    said = []

    def second():
        with stage_lock(tmp_path / "run", said.append):
            order.append("second in")

    u = threading.Thread(target=second)
    u.start()
    u.join(0.5)
    released.set()
    t.join()
    u.join()
    assert order == ["first in", "first out", "second in"]
    assert said and "is being written by another kf call" in said[0]


# --------------------------------------------------------------------------- stale temporaries (issue 17 item 6)

def test_stale_temporaries_of_dead_writers_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    mine = temporary_path(tmp_path / "last.pt")
    host = mine.name.split(".")[-2].split("-")[0]
    stale = tmp_path / f".last.pt.{host}-{dead}-abc123.tmp"
    live = tmp_path / f".last.pt.{host}-{os.getppid()}-abc123.tmp"
    other_host = tmp_path / f".last.pt.{'0' * 6 if host != '0' * 6 else '1' * 6}-{dead}-abc123.tmp"
    for p in (stale, live, other_host):
        p.write_bytes(b"a whole checkpoint")
    with atomic_write(tmp_path / "result.json") as fh:
        fh.write("{}")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert remove_stale_temporaries(tmp_path) == []
