"""The machine a fold runs on: device, torch threads, DataLoader workers, precision (AMP), memory layout, seeding.

Everything here reads a :class:`~kfold.config.TrainConfig` and the machine,
never the data: :func:`resolve_device`, :func:`configure_torch` (threads),
:func:`amp_dtype`, :func:`use_channels_last`, and the seeds of a fold's
epochs (:func:`seed_everything`, :func:`epoch_seed`), plus :func:`versions`,
the library versions a run records.
"""
from __future__ import annotations

import os
import platform

import numpy as np
import torch

from . import __version__
from .config import TrainConfig
from .io import KfError


def resolve_device(cfg: TrainConfig) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        KfError: CUDA asked for but not available.
    """
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    why = device_problem(cfg.device)
    if why:
        raise KfError(f"device {cfg.device!r}: {why}")
    return torch.device(cfg.device)


def device_problem(name: str) -> str | None:
    """None when device ``name`` (``cpu``, ``cuda``, ``cuda:N``) exists on this machine, else why not."""
    dev = torch.device(name)
    if dev.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}"
    return None


def forced_threads() -> int | None:
    """The torch thread count forced by the environment variable ``KF_THREADS`` (None when unset or empty).

    Raises:
        KfError: ``KF_THREADS`` is not a positive integer.
    """
    value = os.environ.get("KF_THREADS", "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise KfError(f"KF_THREADS={value!r}: expected a positive integer (torch threads replacing threads: auto)")
    return threads


def resolve_workers(cfg: TrainConfig, device: torch.device, cores: int | None = None) -> tuple[int, int]:
    """``(torch threads, DataLoader workers)``.

    ``cores``: the CPUs this fold may use (default ``os.cpu_count()``; a Ray
    task passes the CPUs Ray reserved for it).
    ``auto`` on CPU: all cores for torch and no workers; measured on 2 cores
    (docs/benchmarks.md), one worker beside 2 torch threads oversubscribes
    and is slower, since augmentation of cached small images is cheap next
    to the model. On CUDA: workers = min(8, cores - 1), torch threads unchanged.
    The environment variable ``KF_THREADS=<n>`` replaces ``threads: auto`` by
    ``n`` torch threads on any device (an explicit ``threads: <n>`` still wins);
    the test suite and CI use it to rerun training with another thread count.

    Raises:
        KfError: ``KF_THREADS`` is set but not a positive integer.
    """
    cores = cores or os.cpu_count() or 1
    forced = forced_threads()
    if device.type == "cuda":
        threads = (forced or torch.get_num_threads()) if cfg.threads == "auto" else int(cfg.threads)
        workers = min(8, max(cores - 1, 0)) if cfg.num_workers == "auto" else int(cfg.num_workers)
    else:
        threads = (forced or cores) if cfg.threads == "auto" else max(1, int(cfg.threads))
        workers = 0 if cfg.num_workers == "auto" else int(cfg.num_workers)
    return threads, workers


def configure_torch(cfg: TrainConfig, device: torch.device, cores: int | None = None) -> tuple[int, int]:
    """Apply :func:`resolve_workers`' thread count and, on CPU, flush denormal floats to zero.

    Denormal (subnormal) floats take a slow path on many x86 CPUs; flushing
    them to zero guards against it. On the 2-core AMD EPYC of
    docs/benchmarks.md it makes no measurable difference: the offline lite0
    weights hold no denormals, none appear in 40 fine-tuning steps, and
    fine-tuning them runs as fast as training from random init either way.

    Returns:
        ``(torch threads, DataLoader workers)``.
    """
    threads, workers = resolve_workers(cfg, device, cores)
    torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return threads, workers


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: on CUDA ``auto`` is bf16 where supported, else fp16; None (fp32) on CPU or ``off``."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


def use_channels_last(cfg: TrainConfig) -> bool:
    """Whether models and batches use the channels_last layout: ``auto`` and ``on`` (CUDA and CPU), not ``off``.

    On CPU oneDNN runs NHWC faster too: a lite0 epoch 1.5-1.7x on 2 cores (docs/benchmarks.md).
    """
    return cfg.channels_last != "off"


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of fold ``fold`` (independent of any earlier epoch)."""
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101 + 17) % 2**31


def versions() -> dict:
    """``{python, torch, timm, albumentations, kf}`` version strings, as run.json and MLflow tags record them."""
    import albumentations
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "kf": __version__}

