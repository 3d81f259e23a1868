"""The epoch loop in parts: :func:`train_one_epoch`, :func:`validate`, :func:`step_scheduler`.

Plain functions of a model, a loader (or cached images), an optimizer, a
loss, a grad scaler and an optional EMA; they know nothing of folds, files
or configs, so each can be tested on a tiny model (tests/test_loop.py).
:class:`kfold.fold.FoldTrainer` calls them once per epoch. A non-finite
training loss or model output raises :class:`Diverged`, which the fold turns
into its one-line error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .io import crash_point


class Diverged(Exception):
    """A non-finite training loss or model output; the message says where (``step 3/10: training loss is nan``)."""


@dataclass
class EpochStats:
    """What one :func:`train_one_epoch` call did: ``loss`` is the mean training loss per image."""

    loss: float
    images: int
    seconds: float


@dataclass
class Validation:
    """What :func:`validate` measured.

    ``probs``: ``(n_images, n_classes)`` float32 probabilities (rows sum to 1);
    ``loss``: mean negative log-likelihood of the true class (probabilities
    clipped to ``[1e-7, 1]``); ``score``: the scorer's value (what picks the
    best epoch); ``accuracy``: share of argmax predictions that are right.
    """

    probs: np.ndarray
    loss: float
    score: float
    accuracy: float


#: the run settings :func:`train_one_epoch` takes as they are, as keywords of the same name
#: (:func:`loop_settings`): a new loop setting is a field in kfold/config.py, a keyword here and its name here
CONFIG_KEYWORDS = ("accum_steps",)


def loop_settings(cfg) -> dict:
    """The keywords of :func:`train_one_epoch` that come straight from a run's settings (:data:`CONFIG_KEYWORDS`).

    ``cfg``: a :class:`kfold.config.TrainConfig` (any object with those attributes).
    :class:`kfold.fold.FoldTrainer` passes them with ``**loop_settings(cfg)``; the
    loop itself reads no config.
    """
    return {k: getattr(cfg, k) for k in CONFIG_KEYWORDS}


def train_one_epoch(model: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
                    device: torch.device, mean: torch.Tensor, std: torch.Tensor,
                    scaler: torch.amp.GradScaler | None = None, ema=None, mixer: Callable | None = None,
                    accum_steps: int = 1, amp: torch.dtype | None = None, channels_last: bool = False,
                    progress: bool | None = None, desc: str = "") -> EpochStats:
    """One pass over ``loader``: forward, loss, backward, optimizer step every ``accum_steps`` batches.

    The model is put in training mode (:func:`kfold.models.set_train_mode`:
    a frozen backbone keeps its BatchNorm statistics). Each batch of uint8
    images ``(batch, h, w, 3)`` from a :class:`kfold.augment.CachedImages`
    loader is normalised with ``mean``/``std`` (``(1, 3, 1, 1)`` tensors on
    ``device``, 0..1 units) by :func:`kfold.augment.to_model_input`; with a
    ``mixer`` (timm ``Mixup``) the batch and its targets are mixed (soft
    ``(batch, n_classes)`` targets). A model with ``forward_tasks`` (task
    heads) is trained on its per-task outputs. The loss is computed under
    ``torch.autocast`` when ``amp`` is a dtype, scaled by ``scaler`` (default:
    a disabled ``GradScaler``, i.e. plain fp32 steps) and divided by
    ``accum_steps``; the last batch always ends with a step. ``ema``
    (timm ``ModelEmaV3``) is updated after each optimizer step.

    Returns:
        :class:`EpochStats`: mean loss per image, images seen, seconds.

    Raises:
        Diverged: a batch's loss is nan or inf (``step i/n: training loss is nan``).
    """
    from tqdm import tqdm

    from .augment import to_model_input
    from .models import set_train_mode

    scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
    forward = getattr(model, "forward_tasks", model)  # task heads: per-task outputs for TaskLoss
    set_train_mode(model)
    t0, seen, loss_sum = time.time(), 0, 0.0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, disable=None if progress is None else not progress, unit="batch")
    n_batches = len(loader)
    for i, (xb, yb) in enumerate(bar):
        x = to_model_input(loader.dataset.to_nchw(xb), mean, std, device, channels_last)
        y = yb.to(device, non_blocking=True)
        if mixer is not None:  # numpy's RNG, seeded per epoch with the loader; mixed targets carry no years
            x, y = mixer(x, y[:, 0].round().long() if y.dim() == 2 else y)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(forward(x), y)
        loss_value = float(loss.detach())
        if not np.isfinite(loss_value):
            raise Diverged(f"step {i + 1}/{n_batches}: training loss is {loss_value}")
        scaler.scale(loss / accum_steps).backward()
        if (i + 1) % accum_steps == 0 or i + 1 == n_batches:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
        seen += len(yb)
        loss_sum += loss_value * len(yb)
        crash_point("batch")
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
    return EpochStats(loss_sum / max(seen, 1), seen, time.time() - t0)


def check_finite(probs: np.ndarray, what: str) -> None:
    """Raise :class:`Diverged` when ``probs`` (softmax of a model's logits, ``(n, n_classes)``) holds nan or inf."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise Diverged(f"{what}: {int(bad.sum())} of {len(probs)} images have non-finite outputs (nan/inf logits)")


def validate(predict: Callable[[], np.ndarray], labels: np.ndarray,
             score: Callable[[np.ndarray, np.ndarray], float]) -> Validation:
    """Predict the validation images once and measure the predictions.

    Args:
        predict: returns ``(n_images, n_classes)`` probabilities of the
            validation images, with the model in eval mode, without gradients
            and without TTA (e.g. :func:`kfold.tta.predict_array` bound to the
            model and images: eval mode leaves weights and BatchNorm statistics
            as they are).
        labels: ``(n_images,)`` int true classes.
        score: ``score(probs, labels) -> float``, higher is better (e.g.
            :func:`kfold.heads.selection_score`: macro F1).

    Returns:
        :class:`Validation`.

    Raises:
        Diverged: a row of the probabilities is not finite (``validation: k of n images ...``).
    """
    probs = predict()
    check_finite(probs, "validation")
    labels = np.asarray(labels)
    pred = probs.argmax(1)
    loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1)).mean())
    return Validation(probs, loss, score(probs, labels), float((pred == labels).mean()))


def step_scheduler(scheduler, epoch: int, score: float) -> None:
    """Step a learning-rate scheduler after epoch ``epoch`` (from 0) with the validation ``score``.

    torch's ``ReduceLROnPlateau`` takes the score (mode ``max``); a timm
    scheduler takes the number of epochs done and the score; None does nothing.
    """
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(score)
    elif scheduler is not None:
        scheduler.step(epoch + 1, score)
