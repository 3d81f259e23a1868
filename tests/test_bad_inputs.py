"""A corpus of bad and odd inputs, generated here, each run through the real ``kf`` command line.

Every bad input must end in exactly one stderr line ``error: <file>: ...``
(with the row where there is one), exit status 2, no traceback, and every
file that existed before the command byte-identical after it (an earlier
``folds.csv``, runs, ensemble outputs and ``submission.csv``). Odd inputs
the real data has (alpha and grayscale images, BOM, CRLF, ``"Female "``,
junk, extra columns or files) must be accepted with the right labels.

The table of cases and outcomes is reproduced in docs/reliability.md.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from kf.cli import main
from kfold.folds import folds_fingerprint
from kfold.io import read_json, write_json

N_PEOPLE = 7  # a 7-person slice of the session's tiny data: 49 train images, decoded serially
PROBS = [f"prob_{c}" for c in range(18)]
CONFIG = """model: test_efficientnet
pretrained: none
image_size: [32, 32]
epochs: 1
batch_size: 16
eval_batch_size: 64
tta: none
"""
TRAIN = ["train", "--data", "{data}", "--oof", "{oof}", "--k", "2", "--config", "{cfg}", "--no-progress"]
FOLDS = ["folds", "--data", "{data}", "--oof", "{oof}", "--k", "2"]
ENSEMBLE = ["ensemble", "--data", "{data}", "--oof", "{oof}", "--method", "soft"]
SUBMIT = ["submit", "--data", "{data}", "--oof", "{oof}", "--from", "b", "--out", "{sub}", "--overwrite"]


# --------------------------------------------------------------------------- the workspace

@dataclass
class WS:
    """A private copy of the workspace: data, oof (folds, runs a and b, ensemble soft), config, submission."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def oof(self) -> Path:
        return self.root / "oof"

    @property
    def cfg(self) -> Path:
        return self.root / "tiny.yaml"

    @property
    def sub(self) -> Path:
        return self.root / "submission.csv"

    @property
    def train_csv(self) -> Path:
        return self.data / "train" / "train.csv"

    @property
    def info_csv(self) -> Path:
        return self.data / "eval" / "info.csv"

    def person(self, i: int) -> str:
        return pd.read_csv(self.train_csv, dtype=str)["path"].iloc[i]

    def folder(self, i: int) -> Path:
        return self.data / "train" / "images" / self.person(i)

    def image(self, i: int, stem: str) -> Path:
        """The file of image ``stem`` of person ``i``, whatever its extension."""
        return next(p for p in self.folder(i).iterdir() if p.stem == stem and not p.name.startswith("."))

    def jpeg(self, i: int) -> Path:
        """A .jpg/.jpeg file of person ``i``."""
        return next(p for p in sorted(self.folder(i).iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")
                    and not p.name.startswith("."))

    def eval_ids(self) -> list[str]:
        return pd.read_csv(self.info_csv, dtype=str)["ImageID"].tolist()

    def places(self) -> dict[str, str]:
        return {"root": str(self.root), "data": str(self.data), "oof": str(self.oof), "cfg": str(self.cfg),
                "sub": str(self.sub), "csv": str(self.train_csv), "info": str(self.info_csv)}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), prog_name="kf")


def run_kf(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KF_CRASH_AT"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return subprocess.run([sys.executable, "-m", "kf", *args], capture_output=True, text=True, timeout=300, env=env)


def write_fake_run(oof: Path, name: str, seed: int, ids: list[str]) -> None:
    """A finished run in the written format (oof.csv, test.csv, run.json) with random softmax rows."""
    rng = np.random.default_rng(seed)
    keys = pd.read_csv(oof / "folds.csv", dtype={"image": str, "person": str})[["image", "person", "fold", "label"]]
    meta = read_json(oof / "folds.json")
    d = oof / name
    d.mkdir(parents=True)

    def softmax_rows(n, labels):
        p = rng.dirichlet(np.ones(18), n)
        p[np.arange(n), labels] += 1.0
        return p / p.sum(1, keepdims=True)

    pd.concat([keys, pd.DataFrame(softmax_rows(len(keys), keys["label"].to_numpy()), columns=PROBS)], axis=1) \
        .to_csv(d / "oof.csv", index=False, float_format="%.8g")
    test = pd.DataFrame(softmax_rows(len(ids), np.arange(len(ids)) * 5 % 18), columns=PROBS)
    test.insert(0, "ImageID", ids)
    test.to_csv(d / "test.csv", index=False, float_format="%.8g")
    write_json({"name": name, "kind": "run", "finished": True, "folds_fingerprint": meta["folds_fingerprint"],
                "k": meta["k"], "tta": "none"}, d / "run.json")


@pytest.fixture(scope="module")
def template(tiny_data, tmp_path_factory) -> WS:
    """Data (7 people listed), folds (K=2), runs a and b, ensemble/soft and submission.csv, all made by kf."""
    ws = WS(tmp_path_factory.mktemp("bad_inputs") / "ws")
    shutil.copytree(tiny_data, ws.data)
    lines = ws.train_csv.read_text(encoding="utf-8").splitlines()
    ws.train_csv.write_text("\n".join(lines[:N_PEOPLE + 1]) + "\n", encoding="utf-8")
    ws.cfg.write_text(CONFIG)
    r = invoke(*fill(FOLDS, ws.places()))
    assert r.exit_code == 0, r.output
    for i, name in enumerate(("a", "b")):
        write_fake_run(ws.oof, name, i, ws.eval_ids())
    for argv in (ENSEMBLE, ["submit", "--data", "{data}", "--oof", "{oof}", "--from", "ensemble/soft", "--out", "{sub}"]):
        r = invoke(*fill(argv, ws.places()))
        assert r.exit_code == 0, r.output
    return ws


@pytest.fixture
def ws(template, tmp_path) -> WS:
    return WS(Path(shutil.copytree(template.root, tmp_path / "ws")))


def fill(argv: list[str], places: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in places.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, except the empty ``.<name>.lock`` files of ``kfold.locks.stage_lock`` (kept by design)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))}


# --------------------------------------------------------------------------- edits that make bad inputs

def set_field(ws: WS, row: int, column: str, value: str) -> None:
    """Set ``column`` of person ``row`` (0 = file line 2) in train.csv."""
    lines = ws.train_csv.read_text(encoding="utf-8").splitlines()
    cols = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[cols.index(column)] = value
    lines[row + 1] = ",".join(cells)
    ws.train_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")


def truncated_jpeg(ws: WS) -> dict:
    f = ws.jpeg(0)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    return {"file": str(f)}


def zero_byte_image(ws: WS) -> dict:
    f = ws.image(1, "normal")
    f.write_bytes(b"")
    return {"file": str(f)}


def corrupt_eval_image(ws: WS) -> dict:
    f = ws.data / "eval" / "images" / ws.eval_ids()[4]
    f.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body" * 3)
    return {"file": str(f)}


def gif_instead_of_jpg(ws: WS) -> dict:
    f = ws.image(0, "mask1")
    Image.open(f).convert("P").save(f.with_name("mask1.gif"))
    f.unlink()
    return {"folder": str(ws.folder(0)), "person": ws.person(0)}


def no_normal(ws: WS) -> dict:
    ws.image(2, "normal").unlink()
    return {"folder": str(ws.folder(2)), "person": ws.person(2)}


def no_person_folder(ws: WS) -> dict:
    folder = ws.folder(3)
    shutil.rmtree(folder)
    return {"folder": str(folder), "person": ws.person(3)}


def drop_column(ws: WS, col: str) -> None:
    rows = [line.split(",") for line in ws.train_csv.read_text(encoding="utf-8").splitlines()]
    i = rows[0].index(col)
    ws.train_csv.write_text("\n".join(",".join(r[:i] + r[i + 1:]) for r in rows) + "\n", encoding="utf-8")


def duplicate_path(ws: WS) -> dict:
    lines = ws.train_csv.read_text(encoding="utf-8").splitlines()
    ws.train_csv.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    return {"person": ws.person(0)}


def not_utf8(ws: WS) -> None:
    set_field(ws, 0, "race", "Asi\u00e4n")
    ws.train_csv.write_bytes(ws.train_csv.read_text(encoding="utf-8").encode("latin-1"))  # a lone 0xe4 byte


def info_duplicate(ws: WS) -> dict:
    text = ws.info_csv.read_text(encoding="utf-8")
    first = text.splitlines()[1]
    ws.info_csv.write_text(text + first + "\n", encoding="utf-8")
    return {"id": first.split(",")[0], "row": str(len(text.splitlines()) + 1)}


def info_missing_image(ws: WS) -> dict:
    image_id = ws.eval_ids()[1]
    (ws.data / "eval" / "images" / image_id).unlink()
    return {"img": str(ws.data / "eval" / "images" / image_id)}


def config_typo(ws: WS) -> None:
    ws.cfg.write_text(CONFIG + "epoch: 3\n")


def mismatched_weights(ws: WS) -> dict:
    import timm
    import torch

    w = ws.root / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=18).state_dict(), w)
    return {"w": str(w)}


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for code in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_code_weights(ws: WS) -> dict:
    import timm
    import torch

    w = ws.root / "evil.pth"
    sd = timm.create_model("test_efficientnet", num_classes=18).state_dict()
    torch.save({"state_dict": sd, "note": RunsCode(ws.root / "PWNED")}, w)
    return {"w": str(w)}


def no_marker(ws: WS) -> None:
    assert not (ws.root / "PWNED").exists(), "the pickled object was run"


def edit_folds_csv(ws: WS) -> None:
    f = ws.oof / "folds.csv"
    df = pd.read_csv(f, dtype=str)
    df.loc[0, "fold"] = str(1 - int(df.loc[0, "fold"]))
    df.to_csv(f, index=False)


def old_finished_run(ws: WS) -> dict:
    """A finished run ``tiny`` that --force would delete, and a corrupt image that must stop it first."""
    d = ws.oof / "tiny"
    (d / "fold0").mkdir(parents=True)
    (d / "run.json").write_text('{"name": "tiny", "finished": true}\n')
    (d / "fold0" / "result.json").write_text('{"fold": 0, "macro_f1": 0.5}\n')
    (d / "fold0" / "best.pt").write_bytes(b"old weights")
    return truncated_jpeg(ws)


def edit_run_csv(run: str, name: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[WS], dict]:
    def edit(ws: WS) -> dict:
        path = ws.oof / run / name
        df = fn(pd.read_csv(path, dtype={"image": str, "person": str, "ImageID": str}))
        df.to_csv(path, index=False, float_format="%.8g")
        return {"file": str(path), "id": str(df.iloc[2, 0])}
    return edit


def _nan(df):
    df.loc[2, "prob_3"] = np.nan
    return df


def _not_one(df):
    df.loc[2, PROBS] = df.loc[2, PROBS] * 1.2
    return df


def _seventeen(df):
    return df.drop(columns="prob_17")


def other_folds_run(ws: WS) -> dict:
    """Run b re-made as if trained on other folds: other fold column, its own fingerprint."""
    path = ws.oof / "b" / "oof.csv"
    df = pd.read_csv(path, dtype={"image": str, "person": str})
    df["fold"] = 1 - df["fold"]
    df.to_csv(path, index=False, float_format="%.8g")
    rj = read_json(ws.oof / "b" / "run.json")
    write_json({**rj, "folds_fingerprint": folds_fingerprint(df)}, ws.oof / "b" / "run.json")
    return {"file": str(ws.oof / "b" / "run.json")}


def edited_fold_column(ws: WS) -> dict:
    path = ws.oof / "b" / "oof.csv"
    df = pd.read_csv(path, dtype={"image": str, "person": str})
    df.loc[3, "fold"] = 1 - df.loc[3, "fold"]
    df.to_csv(path, index=False, float_format="%.8g")
    return {"file": str(path), "was": str(1 - df.loc[3, "fold"]), "now": str(df.loc[3, "fold"])}


# --------------------------------------------------------------------------- the table

@dataclass
class Bad:
    id: str
    argv: list[str]
    edit: Callable[[WS], dict | None] | None
    message: str                 # regex for the whole stderr line; {name} = re.escape'd places and edit results
    code: int = 2
    via: str = "cli"             # cli: CliRunner in this process; proc: a real `python -m kf` process
    writes: str = ""             # regex every NEW file (relative to the workspace) must match; "" = none allowed
    check: Callable[[WS], None] | None = None


TRAIN_RUN_FILES = r"oof/tiny/(run\.json|config\.yaml)"  # a run folder with no fold started (rerun continues it)

BAD = [
    # -- images, found when kf train decodes them into the cache
    Bad("truncated-jpeg", TRAIN, truncated_jpeg,
        r"error: {file}: cannot decode image \((image file is truncated.*|Truncated File Read)\)", writes=TRAIN_RUN_FILES),
    Bad("zero-byte-image", TRAIN, zero_byte_image,
        r"error: {file}: cannot decode image \(cannot identify image file '{file}'\)", writes=TRAIN_RUN_FILES),
    Bad("corrupt-eval-image", TRAIN, corrupt_eval_image,
        r"error: {file}: cannot decode image \(.+\)", writes=TRAIN_RUN_FILES + r"|oof/cache/32x32_49_\w+\.npy"),
    Bad("corrupt-image-with-force-keeps-the-old-run", TRAIN + ["--force"], old_finished_run,
        r"error: {file}: cannot decode image \((image file is truncated.*|Truncated File Read)\)"),
    # -- the image folders
    Bad("gif-instead-of-jpg", TRAIN, gif_instead_of_jpg,
        r"error: {folder}: missing image\(s\) mask1 for person '{person}' "
        r"\(mask1\.gif skipped: an image must be \.jpg, \.jpeg, \.png, \.bmp, \.webp, \.tif or \.tiff\)"),
    Bad("person-folder-without-normal", TRAIN, no_normal,
        r"error: {folder}: missing image\(s\) normal for person '{person}'"),
    Bad("person-folder-absent", TRAIN, no_person_folder,
        r"error: {csv}: person '{person}': folder {folder} not found"),
    # -- train.csv
    Bad("train-csv-missing-column", TRAIN, lambda ws: drop_column(ws, "age"),
        r"error: {csv}: missing column\(s\) age \(found: id, gender, race, path\)"),
    Bad("train-csv-duplicate-path", TRAIN, duplicate_path,
        rf"error: {{csv}}: row {N_PEOPLE + 2}: duplicate path '{{person}}' \(each person folder must appear once\)"),
    Bad("train-csv-empty-age", TRAIN, lambda ws: set_field(ws, 1, "age", "") or {"p": ws.person(1)},
        r"error: {csv}: row 3 \(path {p}\): age '' is not a number"),
    Bad("train-csv-age-abc", TRAIN, lambda ws: set_field(ws, 2, "age", "abc") or {"p": ws.person(2)},
        r"error: {csv}: row 4 \(path {p}\): age 'abc' is not a number"),
    Bad("train-csv-unknown-gender", TRAIN, lambda ws: set_field(ws, 0, "gender", "F") or {"p": ws.person(0)},
        r"error: {csv}: row 2 \(path {p}\): unknown gender 'f', expected male or female"),
    Bad("train-csv-not-utf8", TRAIN, not_utf8, r"error: {csv}: cannot parse CSV: .+"),
    # -- info.csv
    Bad("info-csv-duplicate-imageid", TRAIN, info_duplicate, r"error: {info}: row {row}: duplicate ImageID '{id}'"),
    Bad("info-csv-missing-image", TRAIN, info_missing_image, r"error: {info}: row 3: image {img} not found"),
    # -- configs and weights
    Bad("config-typo-key", TRAIN, config_typo, r"error: {cfg}: unknown key 'epoch'; valid keys: name, model, .*, seed(, \w+)*"),
    Bad("config-typo-key-real-process", TRAIN, config_typo,
        r"error: {cfg}: unknown key 'epoch'; valid keys: name, model, .*, seed(, \w+)*", via="proc"),
    Bad("unknown-backbone", TRAIN + ["--set", "model=efficientnet_b99"], None,
        r"error: --set model: 'efficientnet_b99': not a timm model name \(close: efficientnet_b0, .*\)"),
    Bad("unknown-optimizer", TRAIN + ["--set", "optimizer=adamx"], None,
        r"error: --set optimizer: 'adamx' is not a timm optimizer .*"),
    Bad("weights-of-another-shape", TRAIN + ["--set", "pretrained=file:{w}"], mismatched_weights,
        r"error: {w}: tensor bn1\.weight has shape \(32,\), the model expects \(24,\)", writes=r"resnet\.pth"),
    Bad("weights-with-pickled-code", TRAIN + ["--set", "pretrained=file:{w}"], pickled_code_weights,
        r"error: {w}: not a loadable torch weights file \(UnpicklingError; kf loads only tensors, with weights_only=True\)",
        writes=r"evil\.pth", check=no_marker),
    Bad("weights-file-missing", TRAIN + ["--set", "pretrained=file:{root}/none.pth"], None,
        r"error: {root}/none\.pth: weights file not found"),
    # -- folds
    Bad("train-with-other-k-than-folds-csv", [a if a != "2" else "3" for a in TRAIN], None,
        r"error: {oof}/folds\.csv: made with other settings \(K=2, seed=42, holdout=0, 49 images\) than asked "
        r"\(K=3, seed=42, holdout=0, 49 images, or other labels/corrections\); .*"),
    Bad("folds-csv-hand-edited", FOLDS, edit_folds_csv,
        r"error: {oof}/folds\.csv: content does not match folds_fingerprint in {oof}/folds\.json \(edited or damaged\); "
        r"rerun kf folds --force"),
    # -- kf ensemble
    Bad("ensemble-run-from-other-folds", ENSEMBLE, other_folds_run,
        r"error: {file}: folds_fingerprint '\w+' differs from '\w+' in {oof}/folds\.json; "
        r"the run was trained on other folds and cannot be ensembled with them"),
    Bad("ensemble-oof-with-edited-folds", ENSEMBLE, edited_fold_column,
        r"error: {file}: row 5: fold {now} differs from {was} in {oof}/folds\.csv "
        r"\(runs must list the same images, in folds\.csv order\)"),
    Bad("ensemble-test-csv-nan", ENSEMBLE, edit_run_csv("b", "test.csv", _nan),
        r"error: {file}: row 4 \(ImageID '{id}'\): prob_3 is nan, expected a finite probability"),
    Bad("ensemble-test-csv-row-not-summing-to-1", ENSEMBLE, edit_run_csv("b", "test.csv", _not_one),
        r"error: {file}: row 4 \(ImageID '{id}'\): probabilities sum to 1\.2, expected 1 within 0\.001 "
        r"\(softmax outputs, not logits\)"),
    Bad("ensemble-test-csv-17-classes", ENSEMBLE, edit_run_csv("b", "test.csv", _seventeen),
        r"error: {file}: 17 prob columns \(prob_0, prob_1, prob_2, \.\.\.\), expected 18 \(prob_0\.\.prob_17\), one per class"),
    Bad("ensemble-stacking-with-2-folds", ENSEMBLE[:-1] + ["stacking"], None,
        r"error: {oof}/folds\.json: --method stacking needs K >= 3 folds \(its nested estimate cross-fits inside "
        r"K-1 folds\), these runs have K=2"),
    # -- kf submit (--overwrite: only validation protects the existing submission.csv)
    Bad("submit-test-csv-nan", SUBMIT, edit_run_csv("b", "test.csv", _nan),
        r"error: {file}: row 4 \(ImageID '{id}'\): prob_3 is nan; probabilities must be finite"),
    Bad("submit-test-csv-nan-real-process", SUBMIT, edit_run_csv("b", "test.csv", _nan),
        r"error: {file}: row 4 \(ImageID '{id}'\): prob_3 is nan; probabilities must be finite", via="proc"),
    Bad("submit-test-csv-row-not-summing-to-1", SUBMIT, edit_run_csv("b", "test.csv", _not_one),
        r"error: {file}: row 4 \(ImageID '{id}'\): probabilities sum to 1\.2, expected 1 \(within 0\.001\); "
        r"expected softmax probabilities, not logits"),
    Bad("submit-test-csv-17-classes", SUBMIT, edit_run_csv("b", "test.csv", _seventeen),
        r"error: {file}: expected 18 probability columns prob_0\.\.prob_17, found 17 \(missing or unexpected: prob_17\)"),
    Bad("submit-out-is-a-directory", [a if a != "{sub}" else "{oof}" for a in SUBMIT], None,
        r"error: {oof}: is a directory, expected a file path"),
    Bad("submit-info-csv-duplicate-imageid", SUBMIT, info_duplicate,
        r"error: {info}: row {row}: duplicate ImageID '{id}' \(first at row 2\)"),
]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_a_bad_input_is_one_error_line_exit_2_no_traceback_and_nothing_already_written_changes(ws, case):
    extra = (case.edit(ws) if case.edit else None) or {}
    places = {**ws.places(), **extra}
    before = snapshot(ws.root)
    argv = fill(case.argv, places)
    if case.via == "proc":
        r = run_kf(*argv)
        code, stderr, output = r.returncode, r.stderr, r.stdout + r.stderr
    else:
        r = invoke(*argv)
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        code, stderr, output = r.exit_code, r.stderr, r.output
    assert code == case.code, output
    assert "Traceback" not in output
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    pattern = case.message
    for k, v in places.items():
        pattern = pattern.replace("{" + k + "}", re.escape(v))
    assert re.fullmatch(pattern, lines[0]), (lines[0], pattern)
    after = snapshot(ws.root)
    changed = [p for p in before if after.get(p) != before[p]]
    assert changed == [], f"changed or deleted by a refused command: {changed}"
    new = [p for p in after if p not in before]
    assert all(case.writes and re.fullmatch(case.writes, p) for p in new), f"new files: {new}"
    if case.check:
        case.check(ws)


def test_the_corpus_has_at_least_25_bad_inputs_with_distinct_ids():
    assert len(BAD) >= 25
    assert len({c.id for c in BAD}) == len(BAD)


def test_a_truncated_jpeg_among_182_images_decoded_in_parallel_is_one_error_line(ws, tiny_data):
    """The cache decodes more than 128 images with parallel joblib workers; the error still names the file."""
    shutil.copy(tiny_data / "train" / "train.csv", ws.train_csv)  # all 20 people: 140 + 42 images
    f = ws.jpeg(5)
    f.write_bytes(f.read_bytes()[:200])
    r = run_kf(*fill(TRAIN, {**ws.places(), "oof": str(ws.root / "oof_all")}))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert re.fullmatch(rf"error: {re.escape(str(f))}: cannot decode image \((image file is truncated.*|Truncated File Read)\)", r.stderr.strip())
    assert not list((ws.root / "oof_all" / "cache").glob("*.npy"))


@pytest.mark.trains
def test_a_run_stopped_by_a_bad_image_continues_after_the_fix_without_force(ws):
    """The refused call left oof/tiny/ with run.json and no trained fold; fixing the input and rerunning works."""
    f = ws.jpeg(0)
    good = f.read_bytes()
    f.write_bytes(good[:100])
    assert invoke(*fill(TRAIN, ws.places()), "--fold", "0").exit_code == 2
    f.write_bytes(good)
    r = invoke(*fill(TRAIN, ws.places()), "--fold", "0", "--set", "lr=0.002")  # another setting: nothing to protect
    assert r.exit_code == 0, r.output
    assert (ws.oof / "tiny" / "fold0" / "result.json").is_file()
    assert read_json(ws.oof / "tiny" / "run.json")["config"]["lr"] == 0.002


# --------------------------------------------------------------------------- odd inputs that are accepted

def alpha_png(ws: WS) -> None:
    f = ws.image(0, "mask1")
    Image.open(f).convert("RGBA").save(f.with_name("mask1.png"))
    if f.name != "mask1.png":
        f.unlink()


def grayscale_jpeg(ws: WS) -> None:
    f = ws.image(1, "normal")
    Image.open(f).convert("L").save(f.with_name("normal.jpg"))
    if f.name != "normal.jpg":
        f.unlink()


def bom(ws: WS) -> None:
    ws.train_csv.write_bytes(b"\xef\xbb\xbf" + ws.train_csv.read_bytes())


def crlf(ws: WS) -> None:
    ws.train_csv.write_bytes(ws.train_csv.read_bytes().replace(b"\n", b"\r\n"))


def gender_with_spaces(ws: WS) -> None:
    genders = pd.read_csv(ws.train_csv, dtype=str)["gender"].tolist()
    for i, g in enumerate(genders):
        set_field(ws, i, "gender", "Female " if g == "female" else " MALE")


def extra_column(ws: WS) -> None:
    df = pd.read_csv(ws.train_csv, dtype=str, keep_default_na=False)
    df.insert(2, "note", "seen twice")
    df["mask_color"] = "blue"
    df.to_csv(ws.train_csv, index=False)


def junk(ws: WS) -> None:
    (ws.folder(0) / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    (ws.folder(1) / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def info_bom_crlf(ws: WS) -> None:
    ws.info_csv.write_bytes(b"\xef\xbb\xbf" + ws.info_csv.read_bytes().replace(b"\n", b"\r\n"))


ACCEPTED = {
    # id: (edit, same folds.csv bytes as the untouched data, extra junk files counted)
    "png-with-alpha": (alpha_png, False, 0),
    "grayscale-jpeg": (grayscale_jpeg, False, 0),
    "train-csv-bom": (bom, True, 0),
    "train-csv-crlf": (crlf, True, 0),
    "train-csv-bom-and-crlf": (lambda ws: (bom(ws), crlf(ws)), True, 0),
    "gender-Female-with-spaces-and-MALE": (gender_with_spaces, True, 0),
    "train-csv-extra-columns-ignored": (extra_column, True, 0),
    "mac-junk-skipped": (junk, True, 2),
    "info-csv-bom-and-crlf": (info_bom_crlf, True, 0),
}


def junk_count(ws: WS) -> int:
    return sum(p.name.startswith(".") for i in range(N_PEOPLE) for p in ws.folder(i).iterdir())


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_an_odd_but_valid_input_is_accepted_with_the_same_labels(ws, case):
    edit, same_bytes, added_junk = ACCEPTED[case]
    base_junk = junk_count(ws)
    edit(ws)
    new = ws.root / "oof_new"
    r = invoke(*fill(FOLDS, {**ws.places(), "oof": str(new)}))
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    assert f"{N_PEOPLE} people, {7 * N_PEOPLE} train images" in r.stdout
    assert f"0 warning(s), {base_junk + added_junk} junk file(s) skipped" in r.stdout
    assert junk_count(ws) == base_junk + added_junk
    want = pd.read_csv(ws.oof / "folds.csv", dtype=str)
    got = pd.read_csv(new / "folds.csv", dtype=str)
    if same_bytes:
        assert (new / "folds.csv").read_bytes() == (ws.oof / "folds.csv").read_bytes()
    else:  # the file name changed (mask1.png, normal.jpg); people, labels and folds did not
        pd.testing.assert_frame_equal(got[["person", "label", "fold"]], want[["person", "label", "fold"]])
        changed = got["image"] != want["image"]
        assert changed.sum() <= 1


def test_an_unknown_extra_file_is_one_warning_line_and_the_run_continues(ws):
    extra = ws.folder(0) / "notes.txt"
    extra.write_text("taken on a Tuesday")
    r = run_kf(*fill(FOLDS, {**ws.places(), "oof": str(ws.root / "oof_new")}))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"warning: {extra}: unexpected file, skipped"]
    assert "1 warning(s)" in r.stdout.splitlines()[0]
    assert (ws.root / "oof_new" / "folds.csv").read_bytes() == (ws.oof / "folds.csv").read_bytes()


@pytest.mark.trains
def test_alpha_and_grayscale_images_decode_as_rgb_and_train(ws):
    alpha_png(ws)
    grayscale_jpeg(ws)
    assert Image.open(ws.image(0, "mask1")).mode == "RGBA" and Image.open(ws.image(1, "normal")).mode == "L"
    r = invoke(*fill(TRAIN, {**ws.places(), "oof": str(ws.root / "oof_new")}), "--fold", "0")
    assert r.exit_code == 0, r.output
    cache = next((ws.root / "oof_new" / "cache").glob("32x32_49_*.npy"))
    arr = np.load(cache, mmap_mode="r")
    folds = pd.read_csv(ws.root / "oof_new" / "folds.csv", dtype=str)
    i = folds.index[folds["image"].str.endswith(f"{ws.person(1)}/normal.jpg")][0]
    gray = arr[i].astype(int)
    assert arr.shape == (49, 32, 32, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()  # L -> RGB: equal channels
    oof0 = pd.read_csv(ws.root / "oof_new" / "tiny" / "fold0" / "oof.csv", dtype={"person": str})
    assert np.allclose(oof0[PROBS].sum(axis=1), 1, atol=1e-4)


def test_method_all_with_2_folds_skips_stacking_with_a_warning_and_writes_the_rest(ws, caplog):
    with caplog.at_level("WARNING", logger="ensemble.pipeline"):
        r = invoke(*fill(ENSEMBLE[:-1], ws.places()), "all")
    assert r.exit_code == 0, r.output
    assert [m.getMessage() for m in caplog.records] == ["stacking skipped: it needs K >= 3 folds, these runs have K=2"]
    assert (ws.oof / "ensemble" / "caruana" / "test.csv").is_file()
    assert not (ws.oof / "ensemble" / "stacking").exists()
