"""Training augmentation (albumentations), batch mixing (timm Mixup/CutMix) and the dataset over the uint8 cache.

Images arrive already resized (see :mod:`kfold.cache`), so augmentation works
on small uint8 arrays; normalisation to the model's mean/std happens on the
whole batch on the device (:func:`to_model_input`), not per image. MixUp and
CutMix (:class:`Mixer`) act on the normalised batch, after it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import albumentations as A
import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch.utils.data import ConcatDataset, Dataset

from .labels import N_CLASSES

if TYPE_CHECKING:
    from .config import TrainConfig


def build_train_transform(aug: dict, size: tuple[int, int], seed: int) -> A.Compose | None:
    """An albumentations ``Compose`` from the config's ``augment`` section; None when every probability is 0.

    Args:
        aug: probabilities ``hflip``, ``affine``, ``brightness_contrast``,
            ``hue_saturation``, ``coarse_dropout`` and ``rotate`` (degrees);
            the stronger photometric/occlusion ones (``color_jitter``,
            ``gamma``, ``clahe``, ``to_gray``, ``blur``, ``gauss_noise``,
            ``jpeg``, ``downscale``, ``grid_dropout``) come after them, each
            only when its probability is > 0, so older configs draw the same
            random numbers as before.
        size: ``(height, width)`` of the cached images.
        seed: seed of the Compose (reseeded per epoch and per worker by the trainer).
    """
    h, w = size
    t = []
    if aug["hflip"] > 0:
        t.append(A.HorizontalFlip(p=aug["hflip"]))
    if aug["affine"] > 0:
        t.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-aug["rotate"], aug["rotate"]),
                          border_mode=0, p=aug["affine"]))
    if aug["brightness_contrast"] > 0:
        t.append(A.RandomBrightnessContrast(0.2, 0.2, p=aug["brightness_contrast"]))
    if aug["hue_saturation"] > 0:
        t.append(A.HueSaturationValue(p=aug["hue_saturation"]))
    if aug["coarse_dropout"] > 0:
        t.append(A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                                 p=aug["coarse_dropout"]))
    strong = {
        "color_jitter": lambda p: A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=p),
        "gamma": lambda p: A.RandomGamma(gamma_limit=(70, 130), p=p),
        "clahe": lambda p: A.CLAHE(clip_limit=2.0, p=p),
        "to_gray": lambda p: A.ToGray(p=p),
        "blur": lambda p: A.OneOf([A.MotionBlur(blur_limit=(3, 5)), A.GaussianBlur(blur_limit=(3, 5))], p=p),
        "gauss_noise": lambda p: A.GaussNoise(std_range=(0.02, 0.08), p=p),
        "jpeg": lambda p: A.ImageCompression(quality_range=(40, 95), p=p),
        "downscale": lambda p: A.Downscale(scale_range=(0.5, 0.9), p=p),
        "grid_dropout": lambda p: A.GridDropout(ratio=0.3, p=p),
    }
    t += [make(aug[k]) for k, make in strong.items() if aug.get(k, 0) > 0]
    return A.Compose(t, seed=seed) if t else None


class CachedImages(Dataset):
    """Rows ``indices`` of a uint8 cache ``(n, height, width, 3)``, augmented, as uint8 tensors.

    Items are ``(image, label int64)`` (or a float32 target row when ``labels``
    is 2-D) with ``image`` a contiguous uint8
    ``(3, height, width)`` tensor, or ``(height, width, 3)`` when
    ``channels_last``: the collated ``(batch, height, width, 3)`` batch then
    becomes an NCHW-shaped channels_last tensor by ``permute(0, 3, 1, 2)``,
    a view, and normalising it (:func:`to_model_input`) keeps that layout, so
    the channels_last model gets its input with no transposing copy. Either
    way the DataLoader's collate stacks contiguous items with plain copies (a
    permuted view stacks 2x slower).
    """

    def __init__(self, cache: np.ndarray, indices: np.ndarray, labels: np.ndarray, transform: A.Compose | None = None,
                 channels_last: bool = False):
        self.cache, self.indices, self.labels, self.transform = cache, np.asarray(indices), np.asarray(labels), transform
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img = np.array(self.cache[self.indices[i]])  # a writable copy of the read-only memmap row
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        img = np.ascontiguousarray(img if self.channels_last else img.transpose(2, 0, 1))
        y = self.labels[i]  # an int label, or a float row such as [label, age in years] (kfold.heads.training_targets)
        return torch.from_numpy(img), (int(y) if np.ndim(y) == 0 else torch.from_numpy(np.asarray(y, np.float32)))

    def to_nchw(self, batch: torch.Tensor) -> torch.Tensor:
        """A collated batch as ``(batch, 3, height, width)``: a channels_last view when ``channels_last``, else itself."""
        return batch.permute(0, 3, 1, 2) if self.channels_last else batch


class ConcatImages(ConcatDataset):
    """Several :class:`CachedImages` as one dataset (training rows of the train cache, then pseudo-labelled test rows).

    The parts must share one ``transform`` object, so reseeding it (per epoch,
    per worker: :func:`seed_worker`) reseeds every part; items and
    :meth:`to_nchw` are the parts'.
    """

    def __init__(self, parts: list[CachedImages]):
        super().__init__(parts)
        if any(p.transform is not parts[0].transform or p.channels_last != parts[0].channels_last for p in parts):
            raise ValueError("ConcatImages: the parts must share one transform and one layout")
        self.transform = parts[0].transform
        self.to_nchw = parts[0].to_nchw


class Mixer(Mixup):
    """timm's :class:`~timm.data.Mixup` (MixUp, CutMix) plus CutMix along a straight line, on a normalised batch.

    Called as ``x, target = mixer(x, y)`` with ``x`` a float ``(n, 3, h, w)``
    batch (changed in place) and ``y`` int64 class indices ``(n,)``; returns
    ``target``, float ``(n, num_classes)`` soft targets whose rows sum to 1:
    ``lam * one_hot(y) + (1 - lam) * one_hot(y.flip(0))``, label-smoothed by
    ``label_smoothing``. Randomness comes from numpy's global RNG (as in
    timm), which the trainer seeds per epoch.

    ``region``:

    * ``box``: timm's CutMix (Yun et al. 2019, "CutMix"): a random rectangle
      of area ``1 - lam`` comes from the partner image (image ``n - 1 - i``).
    * ``left_right``: cut along a vertical line: a full-height band of
      ``round((1 - lam) * w)`` columns at the left or the right edge (chosen
      at random) comes from the partner; each image keeps one side of its
      face, mask included, so the 18-class target mixed by area stays true
      to the pixels (the layout used by teams of the 2021 mask competition).
    * ``top_bottom``: cut along a horizontal line: a full-width band of rows
      at the top or the bottom comes from the partner (one face's eyes and
      hair, the other's mouth and mask).

    ``lam`` is corrected to the area actually kept. MixUp (Zhang et al. 2018)
    is timm's. An odd-sized batch (only when the whole training set is
    smaller than ``batch_size``) is left unmixed, with one-hot soft targets.
    """

    def __init__(self, region: str = "box", **kwargs):
        super().__init__(**kwargs)
        if region not in ("box", "left_right", "top_bottom"):
            raise ValueError(f"unknown cutmix region {region!r}")
        self.region = region

    def _mix_batch(self, x: torch.Tensor):
        if self.region == "box":
            return super()._mix_batch(x)
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.:
            return 1.
        if not use_cutmix:  # MixUp, as timm's _mix_batch
            x_flipped = x.flip(0).mul_(1. - lam)
            x.mul_(lam).add_(x_flipped)
            return lam
        axis = 3 if self.region == "left_right" else 2
        size = x.shape[axis]
        band = int(round((1. - lam) * size))  # columns (rows) from the partner image
        start = 0 if np.random.rand() < 0.5 else size - band
        x.narrow(axis, start, band).copy_(x.flip(0).narrow(axis, start, band))
        return 1. - band / size

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if len(x) % 2:
            return x, mixup_target(target, self.num_classes, 1., self.label_smoothing)
        return super().__call__(x, target)


def build_mixer(cfg: "TrainConfig", num_classes: int = N_CLASSES) -> Mixer | None:
    """The config's :class:`Mixer`, or None when ``mixup_alpha`` and ``cutmix_alpha`` are 0 (or ``mix_prob`` is 0).

    Label smoothing goes into the soft targets (as in timm's train script) when
    the loss is ``ce``; the soft-target loss then applies none of its own.
    """
    from .config import mixing

    if not mixing(cfg):
        return None
    return Mixer(region=cfg.cutmix_region, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                 switch_prob=cfg.mix_switch_prob, mode=cfg.mix_mode, correct_lam=True,
                 label_smoothing=cfg.label_smoothing if cfg.loss == "ce" else 0.0, num_classes=num_classes)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's albumentations Compose its own seed.

    The seed comes from ``torch.initial_seed()``, which the DataLoader derives
    from its (seeded) generator, so runs stay reproducible with workers.
    """
    info = torch.utils.data.get_worker_info()
    t = getattr(info.dataset, "transform", None)
    if t is not None:
        t.set_random_seed(int(torch.initial_seed() % 2**31))


def to_model_input(batch_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(batch, 3, h, w)`` -> float32 normalised on ``device``: ``(x / 255 - mean) / std``.

    ``mean``/``std`` are float tensors of shape ``(1, 3, 1, 1)`` already on ``device``.
    Computed as ``x * (1 / (255 * std)) - mean / std`` (one multiply and one
    add in place, no division): 2.4x faster on CPU than dividing twice
    (docs/benchmarks.md); equal within 1e-6.

    The result keeps the layout of ``batch_u8``: a channels_last view (an
    NHWC batch permuted, see :meth:`CachedImages.to_nchw`) is normalised in
    place as NHWC rows of ``w * 3`` values, with the per-channel factors
    tiled along the row (broadcasting a ``(1, 3, 1, 1)`` factor over a
    channels_last tensor runs ~8x slower on CPU), and stays channels_last
    with no copy; an NCHW batch is converted when ``channels_last``.
    """
    x = batch_u8.to(device, non_blocking=True)
    scale, shift = 1 / (255 * std), mean / std
    if x.dim() == 4 and not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).float()  # contiguous (batch, h, w, 3)
        w = nhwc.shape[2]
        nhwc.view(-1, w * 3).mul_(scale.reshape(3).repeat(w)).sub_(shift.reshape(3).repeat(w))
        return nhwc.permute(0, 3, 1, 2)
    x = x.float().mul_(scale).sub_(shift)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
