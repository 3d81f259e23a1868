"""Losses for 18-class training: cross-entropy (with label smoothing), focal, soft-F1.

* Cross-entropy and label smoothing: ``torch.nn.CrossEntropyLoss``
  (Szegedy et al. 2016, "Rethinking the Inception Architecture").
* Focal loss: Lin et al. 2017, "Focal Loss for Dense Object Detection",
  multi-class form ``-(1 - p_t)^gamma * log p_t``, optionally class-weighted.
* Soft-F1: 1 - macro F1 computed on softmax probabilities instead of hard
  predictions (a differentiable surrogate of the competition metric, as used
  by several teams of the 2021 competition).
* Soft targets (MixUp/CutMix, :class:`kfold.augment.Mixer`): timm's
  ``SoftTargetCrossEntropy`` ``mean(-sum_c t_c log p_c)``; with class weights,
  torch's ``cross_entropy`` on class-probability targets,
  ``mean(-sum_c w_c t_c log p_c)``; soft-F1 takes soft targets as they are.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .labels import N_CLASSES


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits ``(batch, n_classes)`` and int targets ``(batch,)``."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(logp, target, reduction="none")
        if self.label_smoothing:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(dim=1)
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - pt) ** self.gamma * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


class SoftF1Loss(nn.Module):
    """``1 - mean over classes of soft F1`` from softmax probabilities; logits ``(batch, n_classes)``."""

    def __init__(self, n_classes: int = N_CLASSES, eps: float = 1e-7):
        super().__init__()
        self.n_classes, self.eps = n_classes, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``target``: int class indices ``(batch,)`` or soft targets ``(batch, n_classes)`` whose rows sum to 1."""
        p = F.softmax(logits.float(), dim=1)
        y = target.float() if target.dim() == 2 else F.one_hot(target, self.n_classes).float()
        tp = (p * y).sum(0)
        fp = (p * (1 - y)).sum(0)
        fn = ((1 - p) * y).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


def class_weights(labels: np.ndarray, spec, n_classes: int = N_CLASSES) -> torch.Tensor | None:
    """Per-class weights: None, ``"balanced"`` (sklearn's ``compute_class_weight``) or a list of ``n_classes`` numbers.

    Classes absent from ``labels`` get weight 0 under ``"balanced"``.
    """
    if spec is None:
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        w = np.zeros(n_classes)
        w[present] = compute_class_weight("balanced", classes=present, y=labels)
        return torch.tensor(w, dtype=torch.float32)
    return torch.tensor(list(spec), dtype=torch.float32)


def build_loss(name: str, weight: torch.Tensor | None = None, label_smoothing: float = 0.0, focal_gamma: float = 2.0,
               n_classes: int = N_CLASSES) -> nn.Module:
    """Loss module by config name: ``ce``, ``focal`` or ``soft_f1``, over ``n_classes`` classes (a task head: 2 or 3)."""
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, weight, label_smoothing)
    if name == "soft_f1":
        return SoftF1Loss(n_classes)
    raise ValueError(f"unknown loss {name!r}")


def build_soft_loss(name: str, weight: torch.Tensor | None = None) -> nn.Module:
    """Loss on soft targets ``(batch, n_classes)`` (rows summing to 1, label smoothing already in them): ``ce`` or ``soft_f1``.

    Raises:
        ValueError: ``focal`` or an unknown name (focal loss is defined on class indices).
    """
    if name == "ce":
        if weight is None:
            from timm.loss import SoftTargetCrossEntropy

            return SoftTargetCrossEntropy()
        return nn.CrossEntropyLoss(weight=weight)  # accepts class-probability targets
    if name == "soft_f1":
        return SoftF1Loss()
    raise ValueError(f"loss {name!r} takes no soft targets; use ce or soft_f1 with mixup/cutmix")
