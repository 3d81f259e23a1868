"""A fold's checkpoints: ``best.pt`` (the best epoch's weights) and ``last.pt`` (everything to resume).

``last.pt`` holds, after each finished epoch, the model, optimizer,
scheduler, grad scaler and EMA states and the fold's progress
(:class:`FoldProgress`: history, epoch, best score, best epoch, epochs
without improvement), so a killed fold resumes at the next epoch and, with
the per-epoch seeds of :func:`kfold.device.epoch_seed`, computes what an
uninterrupted one computes. ``best.pt`` holds the evaluated model's
``state_dict`` (the EMA's when on). Both are written atomically
(:func:`kfold.io.atomic_write`) and read with ``weights_only=True``
(:func:`kfold.models.load_checkpoint`). docs/formats.md documents the files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import atomic_write
from .models import load_checkpoint


@dataclass
class FoldProgress:
    """Where a fold stands after its last finished epoch (``epoch`` from 0; -1: none yet).

    ``history``: one ``log.csv`` row per finished epoch; ``best``: the best
    validation score so far (-1 before any); ``best_epoch``: its epoch, from
    1; ``bad_epochs``: epochs since the best one.
    """

    history: list[dict] = field(default_factory=list)
    epoch: int = -1
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0

    @property
    def next_epoch(self) -> int:
        """The epoch (from 0) to train next."""
        return self.epoch + 1

    def stopped(self, patience: int) -> bool:
        """Early stopping: ``patience`` > 0 epochs in a row without a better score."""
        return self.bad_epochs >= patience > 0

    def record(self, epoch: int, score: float) -> bool:
        """Count finished epoch ``epoch`` (from 0) with validation ``score``; True when it is the new best."""
        self.epoch = epoch
        if score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch + 1, 0
            return True
        self.bad_epochs += 1
        return False


def save_weights(obj, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a kill mid-write leaves the old file)."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def save_last(path: str | Path, progress: FoldProgress, model: torch.nn.Module, optimizer, scheduler, scaler,
              ema=None) -> None:
    """Write ``last.pt``: the training state after epoch ``progress.epoch`` (scheduler/EMA None when off)."""
    save_weights({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict() if scheduler is not None else None, "scaler": scaler.state_dict(),
                  "ema": ema.state_dict() if ema is not None else None, "history": progress.history,
                  "epoch": progress.epoch, "best": progress.best, "best_epoch": progress.best_epoch,
                  "bad_epochs": progress.bad_epochs}, path)


def load_last(path: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler, ema=None,
              device: torch.device | str = "cpu") -> FoldProgress:
    """Restore the states :func:`save_last` wrote into the given objects; return the fold's progress.

    Raises:
        KfError: the file is missing, damaged, or holds anything but tensors
            and plain containers (see :func:`kfold.models.load_checkpoint`).
    """
    ck = load_checkpoint(path, device)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck.get("scheduler") is not None:
        scheduler.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    if ema is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    return FoldProgress(ck["history"], ck["epoch"], ck["best"], ck["best_epoch"], ck["bad_epochs"])


def load_best(path: str | Path, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
    """Load ``best.pt`` (a ``state_dict``) into ``model``.

    Raises:
        KfError: see :func:`kfold.models.load_checkpoint`.
    """
    model.load_state_dict(load_checkpoint(path, device))
