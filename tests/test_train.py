"""kf train on tiny generated data: OOF integrity, test order, resume, configs, weight loading, TTA."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from kf.cli import main
from kfold import device, fold
from kfold.config import load_config, parse_overrides
from kfold.data import load_data
from kfold.io import KfError
from kfold.options import flag_errors
from kfold.stagefiles import PROB_COLS
from kfold.train import train_runs

TINY = ["model=test_efficientnet", "pretrained=none", "image_size=[32,32]", "epochs=1", "batch_size=16",
        "tta=hflip", "eval_batch_size=64", "augment.affine=0"]


def tiny_config(tmp_path: Path, name: str = "tiny", extra=()):
    path = tmp_path / f"{name}.yaml"
    path.write_text("lr: 0.003\nseed: 7\n")
    return load_config(path, parse_overrides(TINY + list(extra)))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """One tiny run on 3 folds; records which rows each fold trained on."""
    tmp = tmp_path_factory.mktemp("trained")
    seen: dict[int, np.ndarray] = {}
    cfg = tiny_config(tmp)
    data = load_data(tiny_data, tmp / "oof", k=3, seed=0)
    real_loader = fold.FoldTrainer._loader

    def loader(self, epoch):
        seen[self.fold] = self.tr_idx.copy()
        return real_loader(self, epoch)

    fold.FoldTrainer._loader = loader
    try:
        metas = train_runs([cfg], data, tmp / "oof", echo=lambda s: None, progress=False)
    finally:
        fold.FoldTrainer._loader = real_loader
    return tmp / "oof", data, metas[0], seen


@pytest.mark.trains
def test_oof_has_one_row_per_train_image_predicted_by_the_fold_that_never_saw_its_person(trained):
    oof_dir, data, meta, seen = trained
    oof = pd.read_csv(oof_dir / "tiny" / "oof.csv", dtype={"person": str})
    folds = data.folds
    assert meta["finished"] is True
    assert list(oof["image"]) == list(folds["image"])  # every image once, folds.csv order
    assert (oof["fold"].to_numpy() == folds["fold"].to_numpy()).all()
    for f, tr_idx in seen.items():
        trained_people = set(folds["person"].iloc[tr_idx])
        predicted_people = set(oof.loc[oof["fold"] == f, "person"])
        assert predicted_people and not trained_people & predicted_people
    p = oof[PROB_COLS].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)


@pytest.mark.trains
def test_test_csv_is_in_info_order_sums_to_one_and_is_the_mean_of_fold_models(trained, tiny_data):
    oof_dir, data, meta, _ = trained
    test = pd.read_csv(oof_dir / "tiny" / "test.csv")
    info = pd.read_csv(Path(tiny_data) / "eval" / "info.csv")
    assert list(test["ImageID"]) == list(info["ImageID"])
    np.testing.assert_allclose(test[PROB_COLS].to_numpy().sum(1), 1, atol=1e-5)
    per_fold = [pd.read_csv(oof_dir / "tiny" / f"fold{f}" / "test.csv")[PROB_COLS].to_numpy() for f in range(3)]
    np.testing.assert_allclose(test[PROB_COLS].to_numpy(), np.mean(per_fold, axis=0), atol=1e-6)


@pytest.mark.trains
def test_run_records_resolved_config_folds_fingerprint_and_versions(trained):
    oof_dir, data, meta, _ = trained
    cfg = yaml.safe_load((oof_dir / "tiny" / "config.yaml").read_text())
    assert cfg["model"] == "test_efficientnet" and cfg["image_size"] == [32, 32]
    assert meta["folds_fingerprint"] == data.folds_meta["folds_fingerprint"]
    assert {"torch", "timm", "albumentations"} <= set(meta["versions"])
    log = pd.read_csv(oof_dir / "tiny" / "fold0" / "log.csv")
    assert list(log.columns[:5]) == ["epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy"]
    assert torch.load(oof_dir / "tiny" / "fold0" / "best.pt", weights_only=True)


@pytest.mark.trains
def test_finished_folds_are_skipped_on_rerun(trained):
    oof_dir, data, _, _ = trained
    before = (oof_dir / "tiny" / "fold1" / "result.json").stat().st_mtime_ns
    cfg = tiny_config(oof_dir.parent)
    lines = []
    train_runs([cfg], data, oof_dir, echo=lines.append, progress=False)
    assert (oof_dir / "tiny" / "fold1" / "result.json").stat().st_mtime_ns == before
    assert sum("skipped" in s for s in lines) == 3


@pytest.mark.trains
def test_rerun_with_other_settings_is_refused(trained):
    oof_dir, data, _, _ = trained
    cfg = tiny_config(oof_dir.parent, extra=["epochs=2"])
    with pytest.raises(KfError, match="epochs: 1 -> 2"):
        train_runs([cfg], data, oof_dir, echo=lambda s: None, progress=False)


@pytest.mark.trains
def test_force_on_a_fold_selection_retrains_those_folds_and_keeps_the_others(trained, tiny_data, tmp_path):
    """--fold 0 --force with the same settings: fold 0 retrains; folds 1 and 2 stay byte for byte."""
    import shutil

    oof_dir = tmp_path / "oof"
    shutil.copytree(trained[0], oof_dir, ignore=shutil.ignore_patterns("cache"))
    data = load_data(tiny_data, oof_dir, k=3, seed=0)
    kept = {p: p.read_bytes() for f in (1, 2) for p in sorted((oof_dir / "tiny" / f"fold{f}").iterdir())}
    old0 = (oof_dir / "tiny" / "fold0" / "result.json").stat().st_mtime_ns
    lines = []
    meta = train_runs([tiny_config(tmp_path)], data, oof_dir, folds=[0], force=True, echo=lines.append, progress=False)[0]
    assert {p: p.read_bytes() for p in kept} == kept
    assert (oof_dir / "tiny" / "fold0" / "result.json").stat().st_mtime_ns != old0
    assert not any("skipped" in s for s in lines) and meta["finished"] and sorted(meta["folds"]) == ["0", "1", "2"]
    assert len(pd.read_csv(oof_dir / "tiny" / "oof.csv")) == len(data.folds)
    # other settings: the whole folder goes, and the call says which finished folds go with it
    lines = []
    meta = train_runs([tiny_config(tmp_path, extra=["epochs=2"])], data, oof_dir, folds=[0], force=True,
                      echo=lines.append, progress=False)[0]
    assert any("epochs: 1 -> 2" in s and "finished folds [1, 2] included" in s for s in lines), lines
    assert not meta["finished"] and sorted(meta["folds"]) == ["0"]
    assert not (oof_dir / "tiny" / "fold1").exists()


class Interrupted(Exception):
    pass


@pytest.mark.trains
def test_resume_after_interruption_gives_the_same_oof_as_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, extra=["epochs=2", "augment.affine=0.5", "drop_rate=0.2"])
    check_resume(cfg, tiny_data, tmp_path, monkeypatch)


def check_resume(cfg, tiny_data, tmp_path, monkeypatch) -> pd.DataFrame:
    """Fold 0 of ``cfg`` (2 epochs) straight, and killed in epoch 2 then resumed: the OOF must agree; returns it."""
    straight = load_data(tiny_data, tmp_path / "a", k=2, seed=0)
    train_runs([cfg], straight, tmp_path / "a", folds=[0], echo=lambda s: None, progress=False)

    interrupted = load_data(tiny_data, tmp_path / "b", k=2, seed=0)
    real_loader = fold.FoldTrainer._loader

    def dying_loader(self, epoch):
        if epoch == 1:
            raise Interrupted
        return real_loader(self, epoch)

    monkeypatch.setattr(fold.FoldTrainer, "_loader", dying_loader)
    with pytest.raises(Interrupted):
        train_runs([cfg], interrupted, tmp_path / "b", folds=[0], echo=lambda s: None, progress=False)
    assert (tmp_path / "b" / "tiny" / "fold0" / "last.pt").exists()
    assert not (tmp_path / "b" / "tiny" / "fold0" / "result.json").exists()
    monkeypatch.setattr(fold.FoldTrainer, "_loader", real_loader)
    lines = []
    train_runs([cfg], interrupted, tmp_path / "b", folds=[0], echo=lines.append, progress=False)
    assert any("resuming after epoch 1" in s for s in lines)
    a = pd.read_csv(tmp_path / "a" / "tiny" / "fold0" / "oof.csv")[PROB_COLS].to_numpy()
    b = pd.read_csv(tmp_path / "b" / "tiny" / "fold0" / "oof.csv")[PROB_COLS].to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not (tmp_path / "b" / "tiny" / "fold0" / "last.pt").exists()
    return pd.read_csv(tmp_path / "a" / "tiny" / "fold0" / "oof.csv")


def test_unknown_config_key_is_refused_with_the_valid_keys(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("model: test_efficientnet\nepoch: 3\n")
    with pytest.raises(KfError, match=r"typo.yaml: unknown key 'epoch'; valid keys: name, model"):
        load_config(p)
    with pytest.raises(KfError, match="unknown key 'lr_max'"):
        tiny_config(tmp_path, extra=["lr_max=1"])


def test_set_overrides_are_parsed_as_yaml(tmp_path):
    cfg = tiny_config(tmp_path, extra=["image_size=[40,56]", "augment.hflip=0", "class_weights=balanced"])
    assert cfg.image_size == [40, 56] and cfg.augment["hflip"] == 0.0 and cfg.class_weights == "balanced"
    with pytest.raises(KfError, match=r"^overrides epochs: expected an integer >= 1, got 0$"):
        tiny_config(tmp_path, extra=["epochs=0"])
    with pytest.raises(KfError, match=r"^--set epochs: expected an integer >= 1, got 0$"), flag_errors(overrides="--set"):
        tiny_config(tmp_path, extra=["epochs=0"])


@pytest.mark.trains
def test_cli_train_prints_the_oof_macro_f1_table(tiny_data, tmp_path):
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(yaml.safe_dump({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY if "." not in s)}))
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--oof", str(tmp_path / "oof"), "--k", "2",
                                    "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "OOF macro F1" in res.output and (tmp_path / "oof" / "cli" / "oof.csv").exists()
    assert f"on cpu, {device.forced_threads() or os.cpu_count()} threads" in res.output  # threads: auto, or KF_THREADS
    bad = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--oof", str(tmp_path / "oof"), "--k", "2",
                                    "--config", str(cfg), "--fold", "5"], prog_name="kf")
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "error: Invalid value for --fold: fold 5 does not exist with --k 2 (folds are 0..1) (see kf train --help)"]


def test_kf_threads_replaces_threads_auto_and_a_bad_value_is_one_error_line(tiny_data, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    auto, pinned = tiny_config(tmp_path), tiny_config(tmp_path, "pinned", extra=["threads=2"])
    monkeypatch.delenv("KF_THREADS", raising=False)
    assert device.resolve_workers(auto, cpu, cores=3) == (3, 0)
    monkeypatch.setenv("KF_THREADS", "1")
    assert device.resolve_workers(auto, cpu, cores=3) == (1, 0)
    assert device.resolve_workers(pinned, cpu, cores=3) == (2, 0)  # an explicit setting wins
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("KF_THREADS", bad)
        with pytest.raises(KfError, match=rf"^KF_THREADS='{bad}': expected a positive integer"):
            device.resolve_workers(auto, cpu)
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--oof", str(tmp_path / "oof"), "--k", "2",
                                    "--config", str(tmp_path / "tiny.yaml"), "--fold", "0", "--no-progress",
                                    *[a for s in TINY for a in ("--set", s)]])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: KF_THREADS='two': expected a positive integer (torch threads replacing threads: auto)"]
    assert not list((tmp_path / "oof" / "tiny").glob("fold0/*"))


@pytest.mark.trains
def test_repredicting_from_checkpoints_with_the_same_tta_reproduces_oof_and_test(trained, tiny_data, tmp_path):
    from kfold.inference import repredict_run

    oof_dir, _, _, _ = trained
    meta = repredict_run(oof_dir / "tiny", tiny_data, "hflip", tmp_path / "tiny@hflip", echo=lambda s: None)
    assert meta["source_run"] == "tiny" and meta["finished"]
    for name in ("oof.csv", "test.csv"):
        a = pd.read_csv(oof_dir / "tiny" / name)
        b = pd.read_csv(tmp_path / "tiny@hflip" / name)
        assert list(a.columns) == list(b.columns) and list(a.iloc[:, 0]) == list(b.iloc[:, 0])
        np.testing.assert_allclose(a[PROB_COLS].to_numpy(), b[PROB_COLS].to_numpy(), atol=1e-6)


@pytest.mark.trains
def test_kf_ensemble_tta_repredicts_members_and_blends_the_new_predictions(trained, tiny_data):
    oof_dir, _, _, _ = trained
    res = CliRunner().invoke(main, ["ensemble", "--data", str(tiny_data), "--oof", str(oof_dir), "--method", "soft",
                                    "--runs", "tiny", "--tta", "d4"])
    assert res.exit_code == 0, res.output
    assert "re-predicting OOF and test with TTA d4" in res.output
    d4 = pd.read_csv(oof_dir / "tiny@d4" / "oof.csv")[PROB_COLS].to_numpy()
    hflip = pd.read_csv(oof_dir / "tiny" / "oof.csv")[PROB_COLS].to_numpy()
    assert np.abs(d4 - hflip).max() > 1e-4
    blended = pd.read_csv(oof_dir / "ensemble" / "soft" / "oof.csv")[PROB_COLS].to_numpy()
    np.testing.assert_allclose(blended, d4, atol=1e-5)
    again = CliRunner().invoke(main, ["ensemble", "--data", str(tiny_data), "--oof", str(oof_dir), "--method", "soft",
                                      "--runs", "tiny", "--tta", "d4"])
    assert again.exit_code == 0 and "re-predicting" not in again.output  # reused


@pytest.mark.trains
def test_kf_predict_applies_the_fold_models_to_a_folder_of_images(trained, tiny_data, tmp_path):
    oof_dir, _, _, _ = trained
    check_predict_reproduces_test_csv(oof_dir, "tiny", tiny_data / "eval" / "images", tmp_path / "probs.csv")


def check_predict_reproduces_test_csv(oof_dir, run: str, images, out) -> None:
    """``kf predict RUN`` on the eval images gives the run's test.csv (same machine: within 1e-5)."""
    res = CliRunner().invoke(main, ["predict", run, "--oof", str(oof_dir), "--images", str(images), "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out).set_index("ImageID")
    test = pd.read_csv(oof_dir / run / "test.csv").set_index("ImageID")
    np.testing.assert_allclose(got.loc[test.index, PROB_COLS].to_numpy(), test[PROB_COLS].to_numpy(), atol=1e-5)


@pytest.mark.trains
@pytest.mark.parametrize("extra", [
    ["ema=true", "ema_decay=0.9"],
    ["freeze_backbone=true"],
    ["loss=focal", "class_weights=balanced", "label_smoothing=0.1"],
    ["loss=soft_f1", "scheduler=step", "decay_epochs=1"],
    ["scheduler=plateau", "early_stopping=1", "epochs=3", "accum_steps=2", "optimizer=sgd"],
    ["scheduler=none", "tta=d4", "image_size=[32,40]", "warmup_epochs=1", "epochs=2"],
], ids=["ema", "frozen-backbone", "focal-balanced", "soft-f1-step", "plateau-early-stop-accum-sgd", "d4-non-square"])
def test_config_variants_train_one_fold_and_write_valid_probabilities(tiny_data, tmp_path, extra):
    cfg = tiny_config(tmp_path, extra=extra)
    data = load_data(tiny_data, tmp_path / "oof", k=2, seed=0)
    lines: list[str] = []
    train_runs([cfg], data, tmp_path / "oof", folds=[0], echo=lines.append, progress=False)
    oof = pd.read_csv(tmp_path / "oof" / "tiny" / "fold0" / "oof.csv")
    p = oof[PROB_COLS].to_numpy()
    assert len(oof) == int((data.folds["fold"] == 0).sum())
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    log = pd.read_csv(tmp_path / "oof" / "tiny" / "fold0" / "log.csv")
    assert 1 <= len(log) <= cfg.epochs
    if "early_stopping=1" in extra and len(log) < cfg.epochs:
        assert any("early stop" in s for s in lines)


@pytest.mark.trains
def test_frozen_backbone_changes_only_the_head(tiny_data, tmp_path):
    from kfold.models import create_model

    cfg = tiny_config(tmp_path, extra=["freeze_backbone=true"])
    torch.manual_seed(0)
    data = load_data(tiny_data, tmp_path / "oof", k=2, seed=0)
    train_runs([cfg], data, tmp_path / "oof", folds=[0], echo=lambda s: None, progress=False)
    trained = torch.load(tmp_path / "oof" / "tiny" / "fold0" / "best.pt", weights_only=True)
    device.seed_everything(device.epoch_seed(cfg.seed, 0, -1))
    initial = create_model(cfg.model, "none", drop_rate=cfg.drop_rate).state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
