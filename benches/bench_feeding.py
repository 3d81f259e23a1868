"""1. Data feeding: images/s of decode + augment + collate, kf's cache vs the baseline way.

kf: the uint8 cache (``kfold.cache.build_cache``) is built once; each epoch is
then ``FoldTrainer._loader`` (albumentations of configs/lite0.yaml on the
cached 96x96 arrays, DataLoader collate, kf train's auto workers) plus the
batch normalisation ``to_model_input`` in channels_last: what the training
loop receives. A second kf row stops at NCHW batches, like the baseline.

Baseline: PIL open + ``convert("RGB")`` + torchvision ``Resize((96, 96))``,
``ToTensor``, ``Normalize`` per image, every epoch, through a DataLoader
(batch 32, shuffled), with 0 and with 2 workers; the faster of the two is the
reference. The baseline does no augmentation, so it does less work than kf;
an extra row gives it kf's augmentation (torchvision flip, affine,
brightness/contrast) with 2 workers.

Data: the real set's 3,780 train images (200x200 JPEGs) when present, and
~300 generated 384x512 JPEGs (the competition's original size).
"""
from __future__ import annotations

import os
import shutil
import time

from common import Context, Row, Stat, fold_trainer, lite0_config, ratios, standalone

SIZE = (96, 96)
# Epochs over which one cache build is shared: 5 folds x 3 epochs x 2 backbones (kf's main job).
AMORTISE_EPOCHS = 30


class PilImages:
    """The baseline dataset: decode and transform the file on every access."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = [str(p) for p in paths], labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            x = self.transform(im.convert("RGB"))
        return x, int(self.labels[i])


def baseline_epoch(ds, workers: int, seed: int) -> float:
    """Seconds for one pass of the baseline DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter()
    for xb, yb in loader:
        pass
    return time.perf_counter() - t


def kf_epoch(trainer, epoch: int, mean, std) -> float:
    """Seconds for one pass of kf's training loader, to normalised float batches in the trainer's layout."""
    import torch

    from kfold.augment import to_model_input

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    loader = trainer._loader(epoch)
    t = time.perf_counter()
    for xb, yb in loader:
        to_model_input(loader.dataset.to_nchw(xb), m, s, trainer.device, trainer.channels_last)
    return time.perf_counter() - t


def measure(ctx: Context, name: str, root, n_epochs: int) -> list[Row]:
    import torch
    import torchvision.transforms as T

    from kfold.cache import build_cache
    from kfold.data import read_train
    from kfold.device import resolve_workers

    df, _ = read_train(root)
    paths, labels = [root / p for p in df["image"]], df["label"].to_numpy()
    n = len(paths)
    cfg = lite0_config()
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # lite0's pretrained normalisation
    workers = resolve_workers(cfg, torch.device("cpu"))[1]

    builds = []
    for r in range(1 if ctx.quick else 2):
        d = ctx.tmp / f"cache-{name}-{r}"
        t = time.perf_counter()
        cache = build_cache(paths, SIZE, d)
        builds.append(time.perf_counter() - t)
    if name == "real":
        ctx.shared["real96"] = (cache, labels)

    trainer = fold_trainer(cfg, cache, labels, 0, cache[:0], ctx.tmp / f"feed-{name}", workers)
    nchw = fold_trainer(lite0_config(channels_last="off"), cache, labels, 0, cache[:0], ctx.tmp / f"feed-{name}-nchw", workers)
    tf = T.Compose([T.Resize(SIZE), T.ToTensor(), T.Normalize(mean, std)])
    ds = PilImages(paths, labels, tf)
    # the same augmentation as kf's (configs/lite0.yaml), in torchvision: an informative extra, not the goal's reference
    tf_aug = T.Compose([T.Resize(SIZE), T.RandomHorizontalFlip(0.5),
                        T.RandomApply([T.RandomAffine(10, translate=(0.06, 0.06), scale=(0.9, 1.1))], p=0.5),
                        T.RandomApply([T.ColorJitter(brightness=0.2, contrast=0.2)], p=0.3), T.ToTensor(),
                        T.Normalize(mean, std)])
    ds_aug = PilImages(paths, labels, tf_aug)
    kf_epoch(trainer, 99, mean, std)  # warm-up (imports, first allocations); the file cache is warm after the build
    kf_t, nchw_t, b0_t, b2_t, aug_t = [], [], [], [], []
    for e in range(n_epochs):
        kf_t.append(kf_epoch(trainer, e, mean, std))
        nchw_t.append(kf_epoch(nchw, e, mean, std))
        b0_t.append(baseline_epoch(ds, 0, e))
        b2_t.append(baseline_epoch(ds, 2, e))
        aug_t.append(baseline_epoch(ds_aug, 2, e))
    best_t = b0_t if sorted(b0_t)[len(b0_t) // 2] <= sorted(b2_t)[len(b2_t) // 2] else b2_t
    best_name = "baseline, 0 workers" if best_t is b0_t else "baseline, 2 workers"
    ips = lambda ts: [n / t for t in ts]  # noqa: E731
    label = {"real": f"real set, {n:,} train images 200x200 JPEG",
             "synth": f"{n} generated 384x512 JPEGs"}[name]
    med_build = sorted(builds)[len(builds) // 2]
    rows = [
        Row("1 feeding", f"{label}: epoch, kf cache + albumentations ({workers} workers, channels_last batches) "
                         f"vs {best_name}",
            Stat(ips(kf_t), "img/s", 0), Stat(ips(best_t), "img/s", 0), best_name, Stat(ratios(best_t, kf_t), "x", 1),
            "≥ 5× faster", lambda x: x >= 5),
        Row("1 feeding", f"{label}: epoch, kf to NCHW batches (channels_last off) vs {best_name}",
            Stat(ips(nchw_t), "img/s", 0), Stat(ips(best_t), "img/s", 0), best_name,
            Stat(ratios(best_t, nchw_t), "x", 1),
            note="the layout the baseline delivers; kf's default is channels_last (row above)"),
        Row("1 feeding", f"{label}: epoch, kf vs baseline + the same augmentation in torchvision, 2 workers",
            Stat(ips(kf_t), "img/s", 0), Stat(ips(aug_t), "img/s", 0), "baseline + augmentation, 2 workers",
            Stat(ratios(aug_t, kf_t), "x", 1), note="equal work: flip, affine, brightness/contrast"),
        Row("1 feeding", f"{label}: baseline with 0 vs 2 DataLoader workers (img/s)",
            Stat(ips(b0_t), "img/s", 0), Stat(ips(b2_t), "img/s", 0), "2 workers", Stat(ratios(b0_t, b2_t), "x", 2),
            note="ratio = 2-worker speed-up of the baseline"),
        Row("1 feeding", f"{label}: cache build, once (joblib threads, {os.cpu_count()} cores)",
            Stat(builds, "s", 2), Stat([n / b for b in builds], "img/s", 0), "build speed", None,
            note=f"amortised over {AMORTISE_EPOCHS} epochs (5 folds × 3 epochs × 2 backbones) it adds "
                 f"{med_build / AMORTISE_EPOCHS:.3f} s per epoch"),
        Row("1 feeding", f"{label}: epoch + cache build / {AMORTISE_EPOCHS} vs {best_name}",
            Stat([n / (t + med_build / AMORTISE_EPOCHS) for t in kf_t], "img/s", 0), Stat(ips(best_t), "img/s", 0),
            best_name, Stat([b / (t + med_build / AMORTISE_EPOCHS) for b, t in zip(best_t, kf_t)], "x", 1),
            "≥ 5× faster", lambda x: x >= 5),
        Row("1 feeding", f"{label}: first epoch including the whole cache build vs {best_name}",
            Stat([n / (t + med_build) for t in kf_t], "img/s", 0), Stat(ips(best_t), "img/s", 0), best_name,
            Stat([b / (t + med_build) for b, t in zip(best_t, kf_t)], "x", 1), note="worst case: a single epoch"),
    ]
    return rows


def torch_batch_augment(x, g):
    """The alternative to per-image albumentations: the same three augmentations on a whole float batch in torch.

    hflip (p 0.5); affine (p 0.5: rotate ±10°, scale 0.9-1.1, translate ±6 %)
    by ``affine_grid`` + ``grid_sample``; brightness/contrast (p 0.3, ±0.2).
    Not used by kf: measured here to show it is slower on CPU.
    """
    import math

    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    x = torch.where((torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
    idx = (torch.rand(n, generator=g) < 0.5).nonzero().flatten()
    if len(idx):
        k = len(idx)
        ang = (torch.rand(k, generator=g) * 2 - 1) * math.radians(10)
        sc = 0.9 + 0.2 * torch.rand(k, generator=g)
        shift = (torch.rand(2, k, generator=g) * 2 - 1) * 0.12
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1)
        grid = F.affine_grid(theta, [k, 3, h, w], align_corners=False)
        x[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    on = torch.rand(n, generator=g) < 0.3
    alpha = torch.where(on, 0.8 + 0.4 * torch.rand(n, generator=g), torch.ones(n)).view(-1, 1, 1, 1)
    beta = torch.where(on, (torch.rand(n, generator=g) * 2 - 1) * 0.2, torch.zeros(n)).view(-1, 1, 1, 1)
    return (x * alpha + beta).clamp_(0, 1)


def batch_augment_rows(ctx: Context) -> list[Row]:
    """albumentations per image (kf) vs :func:`torch_batch_augment` per batch, on batches of 32 cached images."""
    import numpy as np
    import torch

    from kfold.augment import build_train_transform

    images, _, src = ctx.images96(32 * (4 if ctx.quick else 16))
    tf = build_train_transform(lite0_config().augment, SIZE, 0)
    batches = [images[i:i + 32] for i in range(0, len(images), 32)]
    g = torch.Generator().manual_seed(0)

    def albu():
        for b in batches:
            np.stack([tf(image=np.array(im))["image"] for im in b])

    def batched():
        for b in batches:
            torch_batch_augment(torch.from_numpy(np.array(b)).permute(0, 3, 1, 2).float().div_(255), g)

    albu(), batched()  # warm-up
    a, t = [], []
    for _ in range(ctx.repeats):
        s0 = time.perf_counter()
        albu()
        a.append((time.perf_counter() - s0) / len(batches) * 1e3)
        s0 = time.perf_counter()
        batched()
        t.append((time.perf_counter() - s0) / len(batches) * 1e3)
    return [Row("1 feeding", f"augmentation of a batch of 32 {src} images at 96x96: albumentations per image (kf) "
                             "vs the same in torch on the whole batch (affine_grid + grid_sample)",
                Stat(a, "ms", 2), Stat(t, "ms", 2), "torch, batched", Stat(ratios(t, a), "x", 2),
                note="ratio = torch time / albumentations time; > 1: batching on CPU is slower")]


def run(ctx: Context) -> list[Row]:
    from kfold.synth import make_data

    rows = []
    epochs = 2 if ctx.quick else max(2, ctx.repeats)
    if ctx.real_data is not None:
        rows += measure(ctx, "real", ctx.real_data, epochs)
    else:
        ctx.notes.append("1 feeding: the real set was not found; measured on generated images only")
    root = ctx.tmp / "synth384x512"
    t = time.perf_counter()
    make_data(root, people=43, eval_people=1, size=(384, 512), seed=0, quirks=False)  # 301 train JPEGs
    ctx.settings["generated 384x512 set"] = f"{time.perf_counter() - t:.0f} s to generate (kfold.synth.make_data)"
    rows += measure(ctx, "synth", root, epochs)
    shutil.rmtree(root / "eval", ignore_errors=True)
    return rows + batch_augment_rows(ctx)


if __name__ == "__main__":
    standalone(run)
