"""2. Training loop overhead: kf's training epoch vs the bare forward + backward + step.

kf: ``FoldTrainer.run`` of configs/lite0.yaml (96x96, batch 32; random init,
so the weights' denormals play no part) for one epoch over a small subset of
the cached images; the epoch's training time is read back from its
``log.csv`` (``images_per_s``: the loop over the DataLoader, with
augmentation, normalisation, loss bookkeeping; validation, checkpoints and
the final TTA predictions are not in it).

Reference: the same model, optimizer and loss, freshly built as well, run
over the very batches kf's loader produced for that epoch, already
normalised in memory and in kf's memory layout (channels_last): only
forward, ``loss.backward(); opt.step()``.

Also: the same kf epoch with 1 DataLoader worker beside torch's threads
(``resolve_workers`` uses 0 on CPU), and with ``channels_last: off``.
"""
from __future__ import annotations

import time

from common import Context, Row, Stat, fold_trainer, lite0_config, ratios, standalone


def pure_epoch(cfg, batches, channels_last: bool) -> float:
    """Seconds of forward + backward + optimizer step over ``batches`` for a freshly built model."""
    import timm.optim
    import torch

    from kfold.losses import build_loss
    from kfold.models import create_model

    model = create_model(cfg.model, cfg.pretrained, drop_rate=cfg.drop_rate)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = timm.optim.create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = build_loss(cfg.loss, None, cfg.label_smoothing, cfg.focal_gamma)
    t = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def kf_epoch(ctx: Context, cfg, images, labels, n_val, test_images, workers: int, tag: str) -> tuple[float, float]:
    """``(training seconds of the epoch, seconds of the whole FoldTrainer.run)``."""
    import pandas as pd

    run_dir = ctx.tmp / f"loop-{tag}"
    trainer = fold_trainer(cfg, images, labels, n_val, test_images, run_dir, workers)
    t = time.perf_counter()
    trainer.run()
    total = time.perf_counter() - t
    log = pd.read_csv(run_dir / "fold0" / "log.csv")
    n_train = len(images) - n_val
    seen = n_train // cfg.batch_size * cfg.batch_size
    return seen / float(log["images_per_s"].iloc[0]), total


def run(ctx: Context) -> list[Row]:
    import torch

    from kfold.augment import to_model_input

    n_train = 64 if ctx.quick else 192
    n_val, n_test = 64, 32
    cfg = lite0_config(pretrained="none", epochs=1)
    images, labels, src = ctx.images96(n_train + n_val + n_test)
    train_images, train_labels, test_images = images[:n_train + n_val], labels[:n_train + n_val], images[n_train + n_val:]

    # the batches kf's loader yields in epoch 0, normalised, kept in memory for the reference
    probe = fold_trainer(cfg, train_images, train_labels, n_val, test_images, ctx.tmp / "loop-probe", 0)
    m = torch.full((1, 3, 1, 1), 0.5)
    cl = probe.channels_last  # the reference uses kf's memory layout (channels_last: auto = on)
    loader = probe._loader(0)
    batches = [(to_model_input(loader.dataset.to_nchw(xb), m, m, torch.device("cpu"), cl), yb) for xb, yb in loader]
    pure_epoch(cfg, batches, cl)  # warm-up: first allocations, oneDNN primitives
    nchw = lite0_config(pretrained="none", epochs=1, channels_last="off")
    kf0, kf1, kf_nchw, pure, whole = [], [], [], [], []
    for r in range(ctx.repeats):
        t, total = kf_epoch(ctx, cfg, train_images, train_labels, n_val, test_images, 0, f"w0-{r}")
        kf0.append(t)
        whole.append(total)
        pure.append(pure_epoch(cfg, batches, cl))
        kf1.append(kf_epoch(ctx, cfg, train_images, train_labels, n_val, test_images, 1, f"w1-{r}")[0])
        kf_nchw.append(kf_epoch(ctx, nchw, train_images, train_labels, n_val, test_images, 0, f"nchw-{r}")[0])
    seen = n_train // cfg.batch_size * cfg.batch_size
    what = f"lite0 96x96, batch 32, {seen} {src} images, {torch.get_num_threads()} torch threads"
    ips = lambda ts: [seen / t for t in ts]  # noqa: E731
    return [
        Row("2 train loop", f"{what}: kf epoch (0 workers) vs bare forward+backward+step",
            Stat(ips(kf0), "img/s", 1), Stat(ips(pure), "img/s", 1), "bare loop", Stat(ratios(kf0, pure), "x", 3),
            "≤ 1.10× the time", lambda x: x <= 1.10,
            note=f"whole FoldTrainer.run (+{n_val} validation images, 2 checkpoints, hflip-TTA predictions of "
                 f"{n_val}+{n_test} images): {Stat(whole, 's', 1).fmt()}"),
        Row("2 train loop", f"{what}: kf epoch with 1 DataLoader worker vs 0 workers",
            Stat(ips(kf1), "img/s", 1), Stat(ips(kf0), "img/s", 1), "0 workers", Stat(ratios(kf1, kf0), "x", 3),
            "0 workers is faster (ratio > 1)", lambda x: x > 1.0,
            note="ratio = time with 1 worker / time with 0 workers"),
        Row("2 train loop", f"{what}: kf epoch, channels_last auto (now on) vs off (NCHW, the former CPU default)",
            Stat(ips(kf0), "img/s", 1), Stat(ips(kf_nchw), "img/s", 1), "channels_last off",
            Stat(ratios(kf_nchw, kf0), "x", 2), note="ratio = speed-up from channels_last"),
    ]


if __name__ == "__main__":
    standalone(run)
