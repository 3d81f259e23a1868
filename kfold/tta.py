"""Test-time augmentation with ttach's transforms, batched into one forward pass.

ttach's ``ClassificationTTAWrapper`` runs the model once per view and merges
logits. kf instead stacks every view of a batch along the batch dimension,
runs the model once, applies softmax per view and averages probabilities
(views of different shapes, e.g. 90-degree rotations of a non-square image,
are grouped by shape). The transforms themselves are ttach's
(``ttach.aliases``): ``hflip`` (2 views), ``flip`` (h+v, 4 views), ``d4``
(flips x 90-degree rotations, 8 views).
"""
from __future__ import annotations

import numpy as np
import torch
import ttach

from .labels import N_CLASSES

TTA_TRANSFORMS = {
    "none": lambda: None,
    "hflip": ttach.aliases.hflip_transform,
    "flip": ttach.aliases.flip_transform,
    "d4": ttach.aliases.d4_transform,
}


def tta_compose(name: str) -> ttach.Compose | None:
    """ttach ``Compose`` for a TTA name (``none``, ``hflip``, ``flip``, ``d4``); None for ``none``.

    Raises:
        ValueError: unknown name.
    """
    if name not in TTA_TRANSFORMS:
        raise ValueError(f"unknown TTA {name!r}; choose from {', '.join(TTA_TRANSFORMS)}")
    return TTA_TRANSFORMS[name]()


def n_views(name: str) -> int:
    """Number of views a TTA name produces (1 for ``none``)."""
    c = tta_compose(name)
    return 1 if c is None else len(c)


@torch.no_grad()
def tta_probs(model: torch.nn.Module, x: torch.Tensor, compose: ttach.Compose | None) -> torch.Tensor:
    """Mean softmax probability over TTA views, all views in one forward pass per shape.

    Args:
        model: returns logits ``(batch, n_classes)``.
        x: normalised input ``(batch, 3, h, w)``.
        compose: ttach transforms, or None for a single plain view.

    Returns:
        ``(batch, n_classes)`` float32 probabilities, rows sum to 1.
    """
    if compose is None:
        return torch.softmax(model(x).float(), dim=1)
    views = [t.augment_image(x) for t in compose]
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape), []).append(i)
    total = None
    b = x.shape[0]
    for idx in groups.values():
        stacked = torch.cat([views[i] for i in idx]) if len(idx) > 1 else views[idx[0]]
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        p = torch.softmax(model(stacked).float(), dim=1).view(len(idx), b, -1).sum(0)
        total = p if total is None else total + p
    return total / len(views)


@torch.no_grad()
def predict_array(model: torch.nn.Module, images: np.ndarray, mean, std, device: torch.device, tta: str = "none",
                  batch_size: int = 128, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                  indices: np.ndarray | None = None) -> np.ndarray:
    """Probabilities for uint8 images ``(n, h, w, 3)`` (e.g. a cache memmap), batched, with TTA.

    Args:
        mean, std: per-channel normalisation in 0..1 units (the model's pretrained config).
        tta: ``none``, ``hflip``, ``flip`` or ``d4`` (see :func:`tta_compose`).
        batch_size: inputs per forward pass, TTA views included: ``batch_size // views``
            images at a time (hflip, 128: 64 images x 2 views). On CPU a forward
            pass of 2 x 128 ran 1.3x slower than two of 128 (docs/benchmarks.md).
        amp_dtype: ``torch.bfloat16``/``torch.float16`` autocast on CUDA, or None.
        indices: rows of ``images`` to predict (default: all).

    Returns:
        ``(len(indices), n_classes)`` float32 probabilities, rows sum to 1.
    """
    from .augment import to_model_input

    model.eval()
    compose = tta_compose(tta)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    idx = np.arange(len(images)) if indices is None else np.asarray(indices)
    step = max(1, batch_size // (1 if compose is None else len(compose)))
    out = []
    for start in range(0, len(idx), step):
        rows = idx[start:start + step]
        batch = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2)
        if device.type == "cuda":
            batch = batch.pin_memory()
        x = to_model_input(batch, m, s, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out.append(tta_probs(model, x, compose).cpu())
    if not out:
        return np.zeros((0, N_CLASSES), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)
