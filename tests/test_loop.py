"""The epoch loop's parts on a tiny model: train_one_epoch, validate, step_scheduler, checkpoints and resume."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from kfold.augment import CachedImages
from kfold.checkpoint import FoldProgress, load_best, load_last, save_last, save_weights
from kfold.labels import N_CLASSES
from kfold.loop import Diverged, check_finite, step_scheduler, train_one_epoch, validate
from kfold.metrics import macro_f1
from kfold.tta import predict_array

N_IMAGES, SIDE, BATCH = 20, 12, 8  # 3 batches: 8, 8, 4
CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_model(seed: int = 0) -> nn.Module:
    """Conv, BatchNorm (running statistics), pooling, an 18-class linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, N_CLASSES))


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (N_IMAGES, SIDE, SIDE, 3), dtype=np.uint8),
            rng.integers(0, N_CLASSES, N_IMAGES).astype(np.int64))


def loader(images, seed: int = 0) -> DataLoader:
    cache, labels = images
    ds = CachedImages(cache, np.arange(N_IMAGES), labels)
    return DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))


def norm() -> dict:
    return {"mean": torch.tensor(MEAN).view(1, 3, 1, 1), "std": torch.tensor(STD).view(1, 3, 1, 1)}


def epoch(model, opt, images, seed: int, **kw):
    return train_one_epoch(model, loader(images, seed), opt, nn.CrossEntropyLoss(), device=CPU, progress=False,
                           **norm(), **kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_one_epoch_changes_the_weights_and_returns_the_mean_loss_per_image(images):
    model = tiny_model()
    before = state(model)
    losses: list[tuple[float, int]] = []
    ce = nn.CrossEntropyLoss()

    def loss_fn(out, y):
        loss = ce(out, y)
        losses.append((float(loss.detach()), len(y)))
        return loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = train_one_epoch(model, loader(images), opt, loss_fn, device=CPU, accum_steps=2, progress=False, **norm())
    assert [n for _, n in losses] == [8, 8, 4] and stats.images == N_IMAGES
    assert stats.loss == pytest.approx(sum(v * n for v, n in losses) / N_IMAGES, rel=1e-6)
    assert stats.seconds >= 0
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ("0.weight", "5.weight", "5.bias"))
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])  # training mode: BN statistics move
    # accum_steps 2 over 3 batches: a step after batch 2 and after the last batch
    assert {int(s["step"]) for s in opt.state.values()} == {2}


def test_a_non_finite_training_loss_raises_diverged_naming_the_step(images):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Diverged, match=r"^step 1/3: training loss is nan$"):
        train_one_epoch(model, loader(images), opt, lambda out, y: out.sum() * float("nan"), device=CPU,
                        progress=False, **norm())


def test_validate_returns_probabilities_and_leaves_weights_and_bn_statistics_alone(images):
    cache, labels = images
    model = tiny_model()
    epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), images, 0)  # BN statistics away from their init
    before = state(model)
    model.train()  # validate's predict must switch to eval mode itself
    predict = functools.partial(predict_array, model, cache, MEAN, STD, CPU)
    scored = []

    def score(p, y):
        scored.append(len(y))
        return macro_f1(y, p.argmax(1))

    val = validate(predict, labels, score)
    assert val.probs.shape == (N_IMAGES, N_CLASSES) and val.probs.dtype == np.float32
    np.testing.assert_allclose(val.probs.sum(1), 1.0, atol=1e-5)
    assert scored == [N_IMAGES] and val.score == macro_f1(labels, val.probs.argmax(1))
    assert val.accuracy == float((val.probs.argmax(1) == labels).mean())
    expected = -np.log(np.clip(val.probs[np.arange(N_IMAGES), labels], 1e-7, 1)).mean()
    assert val.loss == pytest.approx(float(expected), rel=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running_mean/var, num_batches_tracked


def test_validate_and_check_finite_refuse_non_finite_outputs():
    probs = np.full((4, N_CLASSES), 1 / N_CLASSES, np.float32)
    probs[2, 5] = np.nan
    with pytest.raises(Diverged, match=r"^validation: 1 of 4 images have non-finite outputs \(nan/inf logits\)$"):
        validate(lambda: probs, np.zeros(4, np.int64), lambda p, y: 0.0)
    probs[2, 5], probs[0, 0] = 1 / N_CLASSES, np.inf
    with pytest.raises(Diverged, match=r"^test prediction: 1 of 4 images"):
        check_finite(probs, "test prediction")


def test_step_scheduler_gives_plateau_the_score_and_timm_the_epoch():
    p = [nn.Parameter(torch.zeros(1))]
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD(p, lr=1.0), mode="max", factor=0.5, patience=0)
    for score in (0.5, 0.4):
        step_scheduler(plateau, 0, score)
    assert plateau.optimizer.param_groups[0]["lr"] == 0.5  # the second score is worse: halved once
    import timm.scheduler

    opt = torch.optim.SGD(p, lr=1.0)
    cosine, _ = timm.scheduler.create_scheduler_v2(opt, sched="cosine", num_epochs=4, min_lr=0.0, warmup_epochs=0)
    step_scheduler(cosine, 1, 0.3)  # epoch 1 done: the lr of epoch index 2 of 4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    step_scheduler(None, 0, 0.3)  # no scheduler: nothing to do


def test_fold_progress_counts_best_epochs_and_early_stopping():
    pr = FoldProgress()
    assert pr.next_epoch == 0 and not pr.stopped(2)
    assert pr.record(0, 0.5) and (pr.best, pr.best_epoch, pr.bad_epochs) == (0.5, 1, 0)
    assert not pr.record(1, 0.5) and not pr.stopped(2)  # equal is not better
    assert not pr.record(2, 0.4) and pr.stopped(2) and not pr.stopped(0)  # patience 0: never stops
    assert pr.next_epoch == 3 and pr.best_epoch == 1


def parts(seed: int):
    """A fresh model, AdamW, a timm cosine scheduler and a disabled GradScaler, as a fold builds them."""
    import timm.scheduler

    model = tiny_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched, _ = timm.scheduler.create_scheduler_v2(opt, sched="cosine", num_epochs=3, min_lr=1e-4)
    return model, opt, sched, torch.amp.GradScaler("cuda", enabled=False)


def test_checkpoint_round_trip_restores_everything_and_resume_continues_at_the_next_epoch(images, tmp_path):
    # uninterrupted: epochs 0 and 1
    model, opt, sched, scaler = parts(0)
    for e in (0, 1):
        epoch(model, opt, images, seed=e, scaler=scaler)
        step_scheduler(sched, e, 0.1 * e)
    straight = state(model)

    # epoch 0, then last.pt and best.pt
    model, opt, sched, scaler = parts(0)
    epoch(model, opt, images, seed=0, scaler=scaler)
    step_scheduler(sched, 0, 0.0)
    progress = FoldProgress([{"epoch": 1, "val_macro_f1": 0.25}])
    assert progress.record(0, 0.25)
    save_last(tmp_path / "last.pt", progress, model, opt, sched, scaler)
    save_weights(model.state_dict(), tmp_path / "best.pt")

    # a fresh process's objects (other initial weights), restored from last.pt
    model2, opt2, sched2, scaler2 = parts(1)
    got = load_last(tmp_path / "last.pt", model2, opt2, sched2, scaler2)
    assert got == progress and got.next_epoch == 1
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
    assert sched2.state_dict() == sched.state_dict() and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for p, p2 in zip(model.parameters(), model2.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[p2][key])
    for e in range(got.next_epoch, 2):  # resume: epoch 1 only
        epoch(model2, opt2, images, seed=e, scaler=scaler2)
        step_scheduler(sched2, e, 0.1 * e)
    resumed = model2.state_dict()
    for k, v in straight.items():  # same process, same threads: the same numbers, to float rounding at most
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6)

    best = tiny_model(2)
    load_best(tmp_path / "best.pt", best)
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in model.state_dict().items())


def test_each_loop_setting_is_a_run_setting_and_a_keyword_of_train_one_epoch():
    """FoldTrainer passes loop_settings(cfg) to train_one_epoch: each name must be both (else a TypeError mid-fold)."""
    import inspect

    from kfold.config import TrainConfig
    from kfold.loop import CONFIG_KEYWORDS, loop_settings

    params = inspect.signature(train_one_epoch).parameters
    for k in CONFIG_KEYWORDS:
        assert params[k].kind is inspect.Parameter.KEYWORD_ONLY, k
    assert loop_settings(TrainConfig(accum_steps=4))["accum_steps"] == 4
