"""GPU check (run by hand on a CUDA machine; not part of ``make bench``): kf's training loop vs pure compute.

kf: one epoch of ``FoldTrainer.run`` on CUDA as ``kf train`` runs it there:
AMP (``amp: auto`` = bf16 where supported, else fp16 with a GradScaler),
channels_last, pinned-memory DataLoader with ``resolve_workers``' workers,
albumentations on the uint8 cache. Training images/s from its ``log.csv``.

Reference: the same model, optimizer and loss on the same device, over
batches already normalised on the GPU, in the same layout and autocast:
forward, ``backward``, ``step`` only, timed with ``torch.cuda.synchronize``.
Also the reference in float32 NCHW, to show what AMP + channels_last buy.

Images are random uint8 (content does not change speed) at ``--size``.

    python benches/bench_gpu.py                      # CUDA, 224x224, lite0, batch 64
    python benches/bench_gpu.py --device cpu --quick # exercises the code path anywhere
"""
from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
from common import Context, Row, Stat, fold_trainer, lite0_config, print_rows, ratios


def pure_epoch(cfg, batches, device, amp_dtype, channels_last: bool) -> float:
    """Seconds of forward + backward + step over ``batches`` (already on ``device``) for a fresh model."""
    import timm.optim
    import torch

    from kfold.losses import build_loss
    from kfold.models import create_model

    model = create_model(cfg.model, "none", drop_rate=cfg.drop_rate).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = timm.optim.create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = build_loss(cfg.loss, None, cfg.label_smoothing, cfg.focal_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t = time.perf_counter()
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t


def run(ctx: Context, device_name: str, size: int, batch_size: int) -> list[Row]:
    import pandas as pd
    import torch

    from kfold.augment import to_model_input
    from kfold.device import amp_dtype, resolve_workers

    device = torch.device(device_name)
    n_train = 2 * batch_size if ctx.quick else 32 * batch_size
    n_val, n_test = batch_size, batch_size
    cfg = lite0_config(pretrained="none", epochs=1, image_size=[size, size], batch_size=batch_size, tta="none")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_val + n_test, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 18, n_train + n_val)
    train, test = images[:n_train + n_val], images[n_train + n_val:]
    amp = amp_dtype(cfg, device)
    workers = resolve_workers(cfg, device)[1]

    probe = fold_trainer(cfg, train, labels, n_val, test, ctx.tmp / "gpu-probe", 0, device_name)
    m = torch.full((1, 3, 1, 1), 0.5, device=device)
    loader = probe._loader(0)
    on_device = [(loader.dataset.to_nchw(xb).to(device), yb.to(device)) for xb, yb in loader]
    fast = [(to_model_input(x, m, m, device, True), y) for x, y in on_device]
    plain = [(to_model_input(x, m, m, device, False), y) for x, y in on_device]
    pure_epoch(cfg, fast, device, amp, True)  # warm-up: cuDNN autotuning, allocator
    kf_t, fast_t, plain_t = [], [], []
    for r in range(ctx.repeats):
        run_dir = ctx.tmp / f"gpu-{r}"
        trainer = fold_trainer(cfg, train, labels, n_val, test, run_dir, workers, device_name)
        trainer.run()
        seen = n_train // batch_size * batch_size
        kf_t.append(seen / float(pd.read_csv(run_dir / "fold0" / "log.csv")["images_per_s"].iloc[0]))
        fast_t.append(pure_epoch(cfg, fast, device, amp, True))
        plain_t.append(pure_epoch(cfg, plain, device, None, False))
    seen = len(fast) * batch_size
    ips = lambda ts: [seen / t for t in ts]  # noqa: E731
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    what = f"{name}, lite0 {size}x{size}, batch {batch_size}, {seen} images, AMP {amp}"
    return [
        Row("GPU train loop", f"{what}: kf epoch (AMP + channels_last + pinned memory, {workers} workers) "
                              "vs pure compute (same AMP and layout)",
            Stat(ips(kf_t), "img/s", 0), Stat(ips(fast_t), "img/s", 0), "pure compute", Stat(ratios(kf_t, fast_t), "x", 2),
            "≤ 1.10× the time", lambda x: x <= 1.10),
        Row("GPU train loop", f"{what}: pure compute, AMP + channels_last vs float32 NCHW",
            Stat(ips(fast_t), "img/s", 0), Stat(ips(plain_t), "img/s", 0), "float32 NCHW", Stat(ratios(plain_t, fast_t), "x", 2),
            note="ratio = speed-up from AMP + channels_last"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 batches, 1 repeat, 32 px: a smoke test, not a measurement")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here (use --device cpu --quick to exercise the code)")
    ctx = Context(repeats=1 if args.quick else args.repeats, quick=args.quick)
    try:
        print_rows(run(ctx, args.device, 32 if args.quick else args.size, 8 if args.quick else args.batch_size))
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
