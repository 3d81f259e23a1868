"""Mixing augmentations (timm Mixup/CutMix, split CutMix), soft-target losses, strong augmentation and pseudo-labels."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from kf.cli import main
from kfold import fold
from kfold.augment import Mixer, build_train_transform
from kfold.config import AUGMENT_DEFAULTS, load_config, parse_overrides
from kfold.data import load_data
from kfold.io import KfError, read_json
from kfold.losses import SoftF1Loss, build_soft_loss
from kfold.stagefiles import PROB_COLS
from kfold.train import train_runs

TINY = ["model=test_efficientnet", "pretrained=none", "image_size=[32,32]", "epochs=1", "batch_size=16",
        "tta=hflip", "eval_batch_size=64", "augment.affine=0"]
MIX = ["mixup_alpha=0.4", "cutmix_alpha=1.0", "cutmix_region=left_right", "mix_switch_prob=0.5"]
quiet = dict(echo=lambda s: None, progress=False)


def tiny_config(tmp_path: Path, name: str = "tiny", extra=()):
    path = tmp_path / f"{name}.yaml"
    path.write_text("lr: 0.003\nseed: 7\n")
    return load_config(path, parse_overrides(TINY + list(extra)))


def constant_batch(n: int = 6, h: int = 8, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i; its label is i."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).repeat(1, 3, h, w)
    return x, torch.arange(n)


# -- mixing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("region,axis", [("left_right", 3), ("top_bottom", 2)])
def test_split_cutmix_takes_one_full_band_from_the_partner_and_mixes_targets_by_area(region, axis):
    sides = set()
    for seed in range(12):
        np.random.seed(seed)
        x, y = constant_batch()
        n = len(x)
        mixer = Mixer(region=region, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=n)
        xm, t = mixer(x.clone(), y)
        np.testing.assert_allclose(t.sum(1).numpy(), 1, atol=1e-6)
        for i in range(n):
            j = n - 1 - i
            own = (xm[i] == i)
            partner = (xm[i] == j)
            assert bool((own | partner).all())  # every pixel comes from one of the two images
            # along the cut axis, each line is wholly one image's: a band, never a patch
            lines = own.all(dim=(0, 1) if axis == 3 else (0, 2))
            assert bool((lines == own.any(dim=(0, 1) if axis == 3 else (0, 2))).all())
            size = x.shape[axis]
            kept = int(lines.sum())
            lam = float(t[i, i])
            assert lam == pytest.approx(kept / size, abs=1e-6)
            if kept < size:
                assert float(t[i, j]) == pytest.approx(1 - lam, abs=1e-6)
                band = np.flatnonzero(~lines.numpy())
                assert band[0] == 0 or band[-1] == size - 1  # the partner's band touches an edge
                assert np.array_equal(band, np.arange(band[0], band[-1] + 1))  # contiguous
                sides.add("first" if band[0] == 0 else "last")
    assert sides == {"first", "last"}


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_timm_mixup_and_box_cutmix_targets_are_distributions_matching_the_pixels(mode):
    np.random.seed(3)
    x, y = constant_batch(n=8)
    mixer = Mixer(region="box", mixup_alpha=0.4, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=8)
    xm, t = mixer(x.clone(), y)
    assert t.shape == (8, 8) and bool((t >= 0).all())
    np.testing.assert_allclose(t.sum(1).numpy(), 1, atol=1e-6)
    # the mean pixel of a mixed image is its target-weighted label value (labels = fill values)
    unsmoothed = (t - 0.1 / 8) / 0.9
    np.testing.assert_allclose(xm.mean(dim=(1, 2, 3)).numpy(), (unsmoothed * torch.arange(8.)).sum(1).numpy(), atol=1e-4)


def test_an_odd_batch_is_left_unmixed_with_one_hot_targets():
    x, y = constant_batch(n=5)
    xm, t = Mixer(region="left_right", cutmix_alpha=1.0, mixup_alpha=0.0, label_smoothing=0.0, num_classes=5)(x.clone(), y)
    assert torch.equal(xm, x) and torch.equal(t, F.one_hot(y, 5).float())


def test_soft_target_losses_equal_the_hard_ones_on_one_hot_targets():
    torch.manual_seed(0)
    logits, y = torch.randn(10, 18), torch.randint(0, 18, (10,))
    hot = F.one_hot(y, 18).float()
    assert float(build_soft_loss("ce")(logits, hot)) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    w = torch.rand(18) + 0.5
    nll = F.cross_entropy(logits, y, reduction="none")
    assert float(build_soft_loss("ce", w)(logits, hot)) == pytest.approx(float((w[y] * nll).mean()), rel=1e-6)
    assert float(build_soft_loss("soft_f1")(logits, hot)) == pytest.approx(float(SoftF1Loss()(logits, y)), rel=1e-6)
    # a mixed target is the same mixture of the two losses (cross-entropy is linear in the target)
    y2 = y.flip(0)
    mixed = 0.3 * hot + 0.7 * F.one_hot(y2, 18).float()
    want = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y2)
    assert float(build_soft_loss("ce")(logits, mixed)) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="focal"):
        build_soft_loss("focal")


@pytest.mark.parametrize("extra,message", [
    (["cutmix_alpha=1", "loss=focal"], "loss: focal takes class indices"),
    (["cutmix_alpha=1", "cutmix_region=left_right", "mix_mode=pair"], "mix_mode: cutmix_region left_right mixes whole batches"),
    (["cutmix_region=diagonal"], "cutmix_region: 'diagonal' is not one of box, left_right, top_bottom"),
    (["mix_prob=1.5"], "mix_prob: expected a number in \\[0, 1\\], got 1.5"),
    (["pseudo_threshold=0"], "pseudo_threshold: expected a number in \\(0, 1\\], got 0"),
])
def test_bad_mixing_and_pseudo_settings_are_refused(tmp_path, extra, message):
    with pytest.raises(KfError, match=message):
        tiny_config(tmp_path, extra=extra + (["pseudo=x"] if "pseudo_threshold=0" in extra else []))


def test_every_strong_augmentation_runs_on_a_small_image_and_keeps_its_shape():
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    strong = [k for k in AUGMENT_DEFAULTS if k not in ("hflip", "affine", "rotate", "brightness_contrast",
                                                        "hue_saturation", "coarse_dropout")]
    assert len(strong) == 9
    for k in strong:
        aug = {**AUGMENT_DEFAULTS, **{a: 0.0 for a in AUGMENT_DEFAULTS if a != "rotate"}, k: 1.0}
        t = build_train_transform(aug, (32, 32), seed=0)
        assert len(t.transforms) == 1, k
        out = t(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img), k


def test_a_mixing_run_trains_with_soft_targets(tiny_data, tmp_path, monkeypatch):
    seen = []
    real = Mixer.__call__

    def spy(self, x, y):
        xm, t = real(self, x, y)
        seen.append(t)
        return xm, t

    monkeypatch.setattr(Mixer, "__call__", spy)
    cfg = tiny_config(tmp_path, extra=MIX + ["label_smoothing=0.1", "class_weights=balanced"])
    data = load_data(tiny_data, tmp_path / "oof", k=2, seed=0)
    train_runs([cfg], data, tmp_path / "oof", folds=[0], **quiet)
    assert seen and all(t.shape[1] == 18 for t in seen)
    np.testing.assert_allclose(torch.cat(seen).sum(1).numpy(), 1, atol=1e-5)
    assert any(float(t.max()) < 0.9 for t in seen)  # some rows really mixed
    log = pd.read_csv(tmp_path / "oof" / "tiny" / "fold0" / "log.csv")
    assert np.isfinite(log["train_loss"]).all()


# -- pseudo-labels -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tiny_data, tmp_path_factory):
    """A finished 2-fold run to take pseudo-labels from, and a threshold that selects some test rows, not all."""
    oof = tmp_path_factory.mktemp("pseudo") / "oof"
    cfg = tiny_config(oof.parent, name="src")
    data = load_data(tiny_data, oof, k=2, seed=0)
    train_runs([cfg], data, oof, **quiet)
    conf = [pd.read_csv(oof / "src" / f"fold{f}" / "test.csv")[PROB_COLS].to_numpy().max(1) for f in (0, 1)]
    thr = min(float(np.quantile(c, 0.5)) for c in conf)
    assert all((c < thr).any() for c in conf + [pd.read_csv(oof / "src" / "test.csv")[PROB_COLS].to_numpy().max(1)])
    return oof, data, thr


def fresh_oof(source_oof: Path, dest: Path) -> Path:
    """A copy of the source's oof folder (folds.csv, caches, the source run)."""
    shutil.copytree(source_oof, dest)
    return dest


def test_pseudo_rows_join_training_only_and_leave_the_oof_rows_unchanged(source, tiny_data, tmp_path, monkeypatch):
    src_oof, _, thr = source
    oof = fresh_oof(src_oof, tmp_path / "oof")
    data = load_data(tiny_data, oof, k=2, seed=0)
    sizes, val = {}, {}
    real = fold.FoldTrainer._loader

    def loader(self, epoch):
        dl = real(self, epoch)
        sizes[self.fold] = (len(dl.dataset), len(self.tr_idx), self.ps_idx.copy(), self.ps_labels.copy())
        val[self.fold] = self.va_idx.copy()
        return dl

    monkeypatch.setattr(fold.FoldTrainer, "_loader", loader)
    cfg = tiny_config(tmp_path, name="ps", extra=[f"pseudo={oof / 'src'}", f"pseudo_threshold={thr}"])
    train_runs([cfg], data, oof, **quiet)
    meta = read_json(oof / "ps" / "run.json")
    assert meta["pseudo"]["mode"] == "per_fold"
    test_ids = data.test["ImageID"].to_numpy()
    for f in (0, 1):
        total, n_train, ps_idx, ps_labels = sizes[f]
        assert 0 < len(ps_idx) < len(test_ids)
        assert total == n_train + len(ps_idx) and meta["pseudo"]["count"][str(f)] == len(ps_idx)
        # fold f's labels are the source's fold-f model's confident predictions on the test set
        p = pd.read_csv(oof / "src" / f"fold{f}" / "test.csv")[PROB_COLS].to_numpy()
        np.testing.assert_array_equal(ps_idx, np.flatnonzero(p.max(1) >= thr))
        np.testing.assert_array_equal(ps_labels, p.argmax(1)[ps_idx])
        np.testing.assert_array_equal(val[f], np.flatnonzero(data.folds["fold"].to_numpy() == f))
    # OOF: the train images only, each predicted by its own fold, in folds.csv order, exactly as without pseudo-labels
    new, old = pd.read_csv(oof / "ps" / "oof.csv"), pd.read_csv(oof / "src" / "oof.csv")
    pd.testing.assert_frame_equal(new[["image", "person", "fold", "label"]], old[["image", "person", "fold", "label"]])
    assert not set(new["image"]) & {f"eval/images/{i}" for i in test_ids}
    assert len(pd.read_csv(oof / "ps" / "test.csv")) == len(test_ids)


def test_run_json_records_pseudo_settings_and_a_shared_source_warns(source, tiny_data, tmp_path):
    src_oof, _, _ = source
    oof = fresh_oof(src_oof, tmp_path / "oof")
    ens = oof / "ensemble" / "blend"  # an ensemble-like source: no per-fold test files
    ens.mkdir(parents=True)
    shutil.copy(oof / "src" / "test.csv", ens / "test.csv")
    p = pd.read_csv(ens / "test.csv")[PROB_COLS].to_numpy()
    thr = float(np.quantile(p.max(1), 0.5))
    (ens / "run.json").write_text('{"name": "blend", "kind": "ensemble", "finished": true}')
    cfg = tmp_path / "psx.yaml"
    cfg.write_text("\n".join(s.replace("=", ": ", 1) for s in TINY if "." not in s) + "\n")
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--oof", str(oof), "--k", "2", "--folds-seed", "0", "--fold", "0",
                                    "--config", str(cfg), "--pseudo", "ensemble/blend", "--pseudo-threshold", str(thr),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "warning: shared pseudo-labels" in res.output
    meta = read_json(oof / "psx" / "run.json")
    n = int((p.max(1) >= float(str(thr))).sum())
    assert 0 < n < len(p)
    assert meta["config"]["pseudo"] == "ensemble/blend" and meta["config"]["pseudo_threshold"] == pytest.approx(thr)
    assert meta["pseudo"] == {"source": str(ens.resolve()), "threshold": pytest.approx(thr), "mode": "shared",
                              "count": {"0": n, "1": n}, "test_images": len(p)}
    rows = pd.read_csv(oof / "psx" / "pseudo.csv")
    assert list(rows.columns) == ["fold", "ImageID", "label", "confidence"] and len(rows) == 2 * n
    assert (rows["confidence"] >= thr - 1e-6).all()
    # a missing source stops the call before a run folder is written
    bad = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--oof", str(oof), "--k", "2", "--folds-seed", "0", "--config", str(cfg),
                                    "--set", "name=other", "--pseudo", "ensemble/none"], prog_name="kf")
    assert bad.exit_code == 2 and bad.output.startswith("error: pseudo ensemble/none:")
    assert not (oof / "other").exists()


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind", ["mixup", "pseudo"])
def test_resume_of_a_mixing_or_pseudo_run_gives_the_same_oof_as_an_uninterrupted_run(source, tiny_data, tmp_path,
                                                                                        monkeypatch, kind):
    src_oof, _, thr = source
    extra = ["epochs=2", "augment.affine=0.5"] + (MIX if kind == "mixup" else [f"pseudo={src_oof / 'src'}",
                                                                            f"pseudo_threshold={thr}"])
    cfg = tiny_config(tmp_path, extra=extra)
    a, b = fresh_oof(src_oof, tmp_path / "a"), fresh_oof(src_oof, tmp_path / "b")
    train_runs([cfg], load_data(tiny_data, a, k=2, seed=0), a, folds=[0], **quiet)
    # stop right after epoch 1's checkpoint, before its log line is written
    real_write = fold.write_csv

    def write_then_stop(df, path, *args, **kwargs):
        if Path(path).name == "log.csv":
            raise Interrupted
        return real_write(df, path, *args, **kwargs)

    monkeypatch.setattr(fold, "write_csv", write_then_stop)
    with pytest.raises(Interrupted):
        train_runs([cfg], load_data(tiny_data, b, k=2, seed=0), b, folds=[0], **quiet)
    monkeypatch.undo()
    lines: list[str] = []
    train_runs([cfg], load_data(tiny_data, b, k=2, seed=0), b, folds=[0], echo=lines.append, progress=False)
    assert any("resuming after epoch 1" in s for s in lines)
    for name in ("oof.csv", "log.csv"):
        pa, pb = (pd.read_csv(d / "tiny" / "fold0" / name) for d in (a, b))
        cols = PROB_COLS if name == "oof.csv" else ["train_loss", "val_loss", "val_macro_f1"]
        np.testing.assert_array_equal(pa[cols].to_numpy(), pb[cols].to_numpy())  # same test, same machine: exact
