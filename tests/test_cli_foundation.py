"""The kf command line for the foundation: --help, make-data, folds, and how errors reach the user."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ensemble.methods import METHODS
from kf.cli import COMMANDS, main

ALL_COMMANDS = ["make-data", "folds", "train", "combine", "ensemble", "predict", "import", "export", "submit", "eda", "report"]


def kf_argv() -> list[str]:
    script = Path(sys.executable).parent / "kf"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from kf.cli import main; main(prog_name='kf')"]


def run_kf(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run(kf_argv() + list(args), capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), prog_name="kf")


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def first_person(root: Path) -> str:
    return pd.read_csv(root / "train" / "train.csv", dtype=str)["path"].iloc[0]


# --------------------------------------------------------------------------- usage errors, Ctrl-C

@pytest.mark.parametrize("args, message", [
    (["trian"], "error: No such command 'trian'. Did you mean 'train'? (see kf --help)"),
    (["xyz"], "error: No such command 'xyz'. (see kf --help)"),
    (["train", "--bogus"], "error: No such option '--bogus'. (see kf train --help)"),
    (["train"], "error: Missing option '--config'. (see kf train --help)"),
    (["ensemble", "--method", "nope"], "error: Invalid value for '--method': 'nope' is not one of "
                                       + ", ".join(f"'{m}'" for m in ("all", *METHODS)) + ". (see kf ensemble --help)"),
])
def test_usage_errors_are_one_error_line_with_status_2(args, message):
    r = invoke(*args)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [message]


def test_a_fold_outside_k_is_refused_before_folds_csv_is_written(data, tmp_path):
    cfg = Path(__file__).parents[1] / "configs" / "lite0.yaml"
    r = invoke("train", "--data", str(data), "--oof", str(tmp_path / "oof"), "--config", str(cfg), "--fold", "0,9")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: Invalid value for --fold: fold 9 does not exist with --k 5 (folds are 0..4) (see kf train --help)"]
    assert not (tmp_path / "oof").exists()


def test_ctrl_c_exits_130_with_one_line_on_how_to_resume(data, tmp_path, monkeypatch):
    import kfold.folds

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(kfold.folds, "ensure_folds", interrupted)
    r = invoke("folds", "--data", str(data), "--oof", str(tmp_path / "oof"))
    assert r.exit_code == 130 and "Aborted" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("interrupted: files are written atomically")


# --------------------------------------------------------------------------- help

def test_kf_help_lists_every_command():
    r = invoke("--help")
    assert r.exit_code == 0
    listed = re.findall(r"^  (\S+)\s{2,}\S", r.output.split("Commands:")[1], flags=re.M)
    assert listed == ALL_COMMANDS
    assert list(COMMANDS) == ALL_COMMANDS


def test_kf_help_imports_no_command_module():
    code = ("import sys\nfrom kf.cli import main\n"
            "try:\n    main(['--help'], prog_name='kf')\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in sys.modules"
            " if m.split('.')[0] in ('torch', 'timm', 'albumentations', 'ensemble', 'submit', 'reports', 'sklearn')"
            " or m in ('kfold.commands', 'kfold.train', 'kfold.models')]\n"
            "print('HEAVY', sorted(heavy))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stderr
    assert "make-data" in r.stdout and "report" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_the_installed_kf_script_prints_help():
    r = run_kf("--help")
    assert r.returncode == 0, r.stderr
    for name in ALL_COMMANDS:
        assert re.search(rf"^  {re.escape(name)}\s", r.stdout, flags=re.M), name


@pytest.mark.parametrize("cmd, options", [
    ("folds", ["--data", "--oof", "--k", "--folds-seed", "--age-cuts", "--corrections", "--force"]),
    ("make-data", ["--people", "--eval-people", "--size", "--seed", "--noise", "--quirks"]),
])
def test_command_help_shows_its_options_and_an_example(cmd, options):
    r = invoke(cmd, "--help")
    assert r.exit_code == 0
    for opt in options:
        assert opt in r.output
    assert f"kf {cmd}" in r.output.split("Example:")[1]


# --------------------------------------------------------------------------- make-data

def test_make_data_writes_a_folder_and_says_what_it_wrote(tmp_path):
    out = tmp_path / "d"
    r = invoke("make-data", str(out), "--people", "3", "--eval-people", "2", "--size", "16x16", "--seed", "4")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"wrote {out}: 3 people, 21 train images, 14 eval images, 0 people with injected label noise"
    people = pd.read_csv(out / "train" / "train.csv", dtype=str)
    for p in people["path"]:
        images = [f for f in (out / "train" / "images" / p).iterdir() if not f.name.startswith(".")]
        assert len(images) == 7
    info = pd.read_csv(out / "eval" / "info.csv", dtype=str)
    assert len(info) == 14
    assert info["ImageID"].str.fullmatch(r"[0-9a-f]{40}\.jpg").all()


def test_make_data_is_deterministic_by_seed(tmp_path):
    for name, seed in (("a", "9"), ("b", "9"), ("c", "10")):
        r = invoke("make-data", str(tmp_path / name), "--people", "4", "--eval-people", "2", "--size", "16x16", "--seed", seed)
        assert r.exit_code == 0, r.output
    for f in ("train/train.csv", "eval/info.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()


def test_make_data_into_a_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "old.txt").write_text("keep")
    r = invoke("make-data", str(tmp_path), "--people", "2", "--size", "16x16")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"error: {tmp_path}: folder exists and is not empty"]
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


@pytest.mark.parametrize("size", ["8x8", "abc", "16"])
def test_make_data_refuses_bad_sizes(tmp_path, size):
    r = invoke("make-data", str(tmp_path / "d"), "--people", "2", "--size", size)
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert not (tmp_path / "d" / "train" / "train.csv").exists()


def test_make_data_with_noise_writes_noise_csv(tmp_path):
    r = invoke("make-data", str(tmp_path / "d"), "--people", "20", "--eval-people", "1", "--size", "16x16", "--noise", "0.3")
    assert r.exit_code == 0, r.output
    noise = pd.read_csv(tmp_path / "d" / "noise.csv", dtype=str)
    assert f"{noise['path'].nunique()} people with injected label noise" in r.stdout


# --------------------------------------------------------------------------- folds

def test_folds_writes_then_reuses_then_refuses_other_settings_then_force_rewrites(data, tmp_path):
    oof = tmp_path / "oof"
    base = ["folds", "--data", str(data), "--oof", str(oof)]
    r = invoke(*base, "--k", "4")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(str(data))}: 20 people, 140 train images, 42 eval images; "
                        r"0 warning\(s\), \d+ junk file\(s\) skipped, 0 label correction\(s\) applied", lines[0])
    assert lines[1] == f"wrote {oof / 'folds.csv'}: K=4 seed=42"
    assert "max_dev_pp" in r.stdout
    written = (oof / "folds.csv").read_bytes()

    r = invoke(*base, "--k", "4")
    assert r.exit_code == 0 and r.stdout.splitlines()[1] == f"reused {oof / 'folds.csv'}: K=4 seed=42"

    r = invoke(*base, "--k", "3")
    assert r.exit_code == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"error: {oof / 'folds.csv'}: made with other settings")
    assert "--force" in r.stderr
    assert (oof / "folds.csv").read_bytes() == written

    r = invoke(*base, "--k", "3", "--force")
    assert r.exit_code == 0 and r.stdout.splitlines()[1] == f"wrote {oof / 'folds.csv'}: K=3 seed=42"
    assert sorted(pd.read_csv(oof / "folds.csv")["fold"].unique()) == [0, 1, 2]


def test_folds_applies_corrections_and_reports_the_count(data, tmp_path):
    corr = tmp_path / "c.csv"
    corr.write_text(f"path,field,value\n{first_person(data)},age,85\n")
    r = invoke("folds", "--data", str(data), "--oof", str(tmp_path / "oof"), "--corrections", str(corr), "--age-cuts", "30,58")
    assert r.exit_code == 0, r.output
    assert "1 label correction(s) applied" in r.stdout.splitlines()[0]
    folds = pd.read_csv(tmp_path / "oof" / "folds.csv", dtype={"person": str})
    assert set(folds.loc[folds.person == first_person(data), "label"] % 3) == {2}


def _bad_age(root):
    lines = (root / "train" / "train.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[3] = "twelve"
    lines[2] = ",".join(cells)
    (root / "train" / "train.csv").write_text("\n".join(lines) + "\n")
    return "train/train.csv", "row 3"


def _no_image(root):
    p = first_person(root)
    next(f for f in (root / "train" / "images" / p).iterdir() if f.stem == "normal").unlink()
    return f"train/images/{p}", "normal"


def _no_eval_image(root):
    info = pd.read_csv(root / "eval" / "info.csv", dtype=str)
    (root / "eval" / "images" / info["ImageID"].iloc[4]).unlink()
    return "eval/info.csv", "row 6"


def _no_column(root):
    df = pd.read_csv(root / "train" / "train.csv", dtype=str).drop(columns="gender")
    df.to_csv(root / "train" / "train.csv", index=False)
    return "train/train.csv", "gender"


@pytest.mark.parametrize("breaker", [_bad_age, _no_image, _no_eval_image, _no_column])
def test_folds_on_bad_data_exits_2_with_one_error_line_and_writes_nothing(data, tmp_path, breaker):
    named, text = breaker(data)
    oof = tmp_path / "oof"
    r = invoke("folds", "--data", str(data), "--oof", str(oof))
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {data / named}")
    assert text in lines[0] and "Traceback" not in r.output
    assert not (oof / "folds.csv").exists()


def test_folds_on_bad_data_in_a_real_process_prints_no_traceback(data, tmp_path):
    _bad_age(data)
    r = run_kf("folds", "--data", str(data), "--oof", str(tmp_path / "oof"))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: {data / 'train' / 'train.csv'}: row 3 (path {pd.read_csv(data / 'train' / 'train.csv', dtype=str).path[1]}): "
        "age 'twelve' is not a number"]
    assert not (tmp_path / "oof" / "folds.csv").exists()


def test_folds_with_a_missing_data_folder_names_it(tmp_path):
    r = invoke("folds", "--data", str(tmp_path / "nowhere"), "--oof", str(tmp_path / "oof"))
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'}: data folder not found (pass --data or set KF_DATA)"]
    assert not (tmp_path / "oof").exists()


def test_an_unknown_file_is_a_warning_on_stderr_and_folds_are_still_written(data, tmp_path):
    extra = data / "train" / "images" / first_person(data) / "notes.txt"
    extra.write_text("hi")
    r = run_kf("folds", "--data", str(data), "--oof", str(tmp_path / "oof"), "--k", "3")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"warning: {extra}: unexpected file, skipped"]
    assert "1 warning(s)" in r.stdout.splitlines()[0]
    assert (tmp_path / "oof" / "folds.csv").is_file()


def test_folds_takes_the_data_folder_from_kf_data(data, tmp_path, monkeypatch):
    monkeypatch.setenv("KF_DATA", str(data))
    r = invoke("folds", "--oof", str(tmp_path / "oof"), "--k", "3")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"{data}: 20 people")


@pytest.mark.parametrize("cuts", ["60,30", "30", "a,b"])
def test_folds_refuses_bad_age_cuts(data, tmp_path, cuts):
    r = invoke("folds", "--data", str(data), "--oof", str(tmp_path / "oof"), "--age-cuts", cuts)
    assert r.exit_code == 2
    assert "--age-cuts" in r.stderr
    assert not (tmp_path / "oof" / "folds.csv").exists()
