"""Task heads: mask (3), gender (2) and age (3 bands, or years) on one backbone, and their 18-class joint.

Independence assumption: given the image, the model treats the three tasks
as independent, so its 18-class probability is the product of the task
marginals::

    p(class = m*6 + g*3 + a | x) = p(mask = m | x) * p(gender = g | x) * p(age = a | x)

:class:`TaskModel`'s ``forward`` returns these 18 **log**-probabilities
``log p(m) + log p(g) + log p(a)``, so the softmax that TTA and inference
apply (:mod:`kfold.tta`) returns exactly the product (log-probabilities are
already normalised logits), and OOF/test files, ensembles, ``kf submit`` and
``kf predict`` read a task-head run like any other. Training uses
:meth:`TaskModel.forward_tasks` (one output per head) and
:class:`TaskLoss`, a weighted sum of per-task losses (Caruana 1997,
"Multitask Learning"; the separate mask/gender/age heads or models of the
2021 Boostcamp face-mask competition's top teams).

Age in years (``age_head: years``): the head predicts a Gaussian over the
age, mean ``mu`` and scale ``sigma`` per image, trained with the Gaussian
negative log-likelihood (``torch.nn.functional.gaussian_nll_loss``;
heteroscedastic regression, Nix & Weigend 1994, Kendall & Gal 2017), so the
scale is fitted per image on the training folds only (fitting one scale on
the OOF rows afterwards would let every fold's OOF depend on the other
folds). Band probabilities are the Gaussian's mass between the cuts, with a
half-year continuity correction because train.csv holds whole years
(``age >= 60`` is ``X >= 59.5``): see :func:`age_band_log_probs`.

A single-task run (``task: mask|gender|age``) has one head; its 18-class
output spreads the missing tasks uniformly, so the task marginal of its
files is the trained task's, and :func:`combine_task_runs` joins three such
runs into one 18-class run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import labels as L
from .io import KfError, ParamError

TASKS = ("mask", "gender", "age")
TASK_CLASSES = {"mask": 3, "gender": 2, "age": 3}
#: age head output in years = AGE_CENTER + AGE_SCALE * raw (ages 18..60 map to about -1.1..1)
AGE_CENTER, AGE_SCALE = 40.0, 20.0
#: bounds of log(sigma / AGE_SCALE): sigma between about 0.05 and 400 years
LOG_SIGMA_RANGE = (-6.0, 3.0)


# -- mappings between the 18 classes and the tasks -------------------------------------------------------
def joint_log_probs(log_mask: torch.Tensor, log_gender: torch.Tensor, log_age: torch.Tensor) -> torch.Tensor:
    """18-class log-probabilities from task log-probabilities, under the independence assumption.

    Args:
        log_mask, log_gender, log_age: ``(n, 3)``, ``(n, 2)``, ``(n, 3)`` log-probabilities.

    Returns:
        ``(n, 18)`` with column ``m*6 + g*3 + a`` = ``log_mask[m] + log_gender[g] + log_age[a]``
        (:func:`kfold.labels.encode` order); ``exp`` of a row sums to 1.
    """
    j = log_mask[:, :, None, None] + log_gender[:, None, :, None] + log_age[:, None, None, :]
    return j.reshape(len(log_mask), L.N_CLASSES)


def task_marginals(p: np.ndarray | torch.Tensor) -> tuple:
    """Task marginals of 18-class probabilities: the inverse of :func:`joint_log_probs` for a product.

    Args:
        p: ``(n, 18)`` probabilities (numpy or torch), e.g. a run's OOF rows or a
            mixup/cutmix soft target.

    Returns:
        ``(p_mask (n, 3), p_gender (n, 2), p_age (n, 3))``, each row summing to
        the row sum of ``p``. For a product of marginals they are recovered
        exactly; for any other joint, the product of the returned marginals is
        its closest independent approximation (in KL divergence).
    """
    c = p.reshape(-1, 3, 2, 3)
    return c.sum((2, 3)), c.sum((1, 3)), c.sum((1, 2))


def joint_from_marginals(p_mask: np.ndarray, p_gender: np.ndarray, p_age: np.ndarray) -> np.ndarray:
    """``(n, 18)`` float64 product of task probabilities ``(n, 3)``, ``(n, 2)``, ``(n, 3)`` (numpy)."""
    j = p_mask[:, :, None, None] * p_gender[:, None, :, None] * p_age[:, None, None, :]
    return j.reshape(len(p_mask), L.N_CLASSES)


def age_band_log_probs(mu: torch.Tensor, sigma: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Log-probability of each age band under a Gaussian ``N(mu, sigma^2)`` over the age in years.

    Band 0 is ``age < cuts[0]``, 1 ``cuts[0] <= age < cuts[1]``, 2 ``age >= cuts[1]``
    (:func:`kfold.labels.age_band`). Ages are whole years, so the Gaussian is
    split at ``cut - 0.5`` (continuity correction). The probability of the
    oldest band rises and of the youngest falls as ``mu`` rises (monotone).

    Args:
        mu, sigma: ``(n,)`` mean and scale in years (``sigma > 0``).
        cuts: ``(2,)`` increasing cuts in years.

    Returns:
        ``(n, 3)`` log-probabilities (computed with ``torch.special.log_ndtr``,
        stable far in the tails); ``exp`` of a row sums to 1.
    """
    z = (cuts[None, :] - 0.5 - mu[:, None]) / sigma[:, None]
    lo = torch.special.log_ndtr(z[:, 0])       # P(age < c0)
    below_hi = torch.special.log_ndtr(z[:, 1])  # P(age < c1)
    hi = torch.special.log_ndtr(-z[:, 1])      # P(age >= c1)
    # P(c0 <= age < c1) = P(age < c1) - P(age < c0), in log space
    mid = below_hi + torch.log1p(-torch.exp(torch.clamp(lo - below_hi, max=-1e-7)))
    return torch.stack([lo, mid, hi], dim=1)


# -- the model -------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """A timm backbone (pooled features) with one linear head per task; see the module docstring.

    Args:
        backbone: a timm model created with ``num_classes=0`` (returns ``(n, features)``).
        tasks: the heads to build (a subset of ``mask``, ``gender``, ``age``).
        age_head: ``band`` (3 logits) or ``years`` (mean and log-scale of a Gaussian).
        age_cuts: the cuts (years) at which a ``years`` head is split into bands.
    """

    def __init__(self, backbone: nn.Module, tasks: Sequence[str] = TASKS, age_head: str = "band",
                 age_cuts: Sequence[float] = L.DEFAULT_AGE_CUTS):
        super().__init__()
        if age_head not in ("band", "years"):
            raise ValueError(f"age_head {age_head!r}: band or years")
        self.backbone, self.tasks, self.age_head = backbone, tuple(tasks), age_head
        n = backbone.num_features
        out = {t: (2 if t == "age" and age_head == "years" else TASK_CLASSES[t]) for t in self.tasks}
        self.heads = nn.ModuleDict({t: nn.Linear(n, k) for t, k in out.items()})
        self.register_buffer("age_cuts", torch.tensor([float(c) for c in age_cuts]))
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})
        self.kf_frozen_backbone = getattr(backbone, "kf_frozen_backbone", False)

    def get_classifier(self) -> nn.Module:
        """The task heads (what ``freeze_backbone`` leaves trainable; see :func:`kfold.models.set_train_mode`)."""
        return self.heads

    def age_gaussian(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` in years from the years head's ``(n, 2)`` output."""
        raw = raw.float()
        log_s = raw[:, 1].clamp(*LOG_SIGMA_RANGE)
        return AGE_CENTER + AGE_SCALE * raw[:, 0], AGE_SCALE * torch.exp(log_s)

    def forward_tasks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs: ``{task: (n, k)}``; logits, or ``(n, 2)`` ``[raw mean, raw log-scale]`` for a years head."""
        f = self.backbone(x)
        return {t: h(f) for t, h in self.heads.items()}

    def task_log_probs(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task ``(n, k)`` log-probabilities from :meth:`forward_tasks`' outputs; a missing task is uniform."""
        n = len(next(iter(out.values())))
        logp = {}
        for t in TASKS:
            if t not in out:
                k = TASK_CLASSES[t]
                logp[t] = torch.full((n, k), -math.log(k), device=self.age_cuts.device)
            elif t == "age" and self.age_head == "years":
                logp[t] = age_band_log_probs(*self.age_gaussian(out[t]), self.age_cuts)
            else:
                logp[t] = F.log_softmax(out[t].float(), dim=1)
        return logp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 18)`` float32 log-probabilities, the product of the task marginals (softmax of them is the product)."""
        lp = self.task_log_probs(self.forward_tasks(x))
        return joint_log_probs(lp["mask"], lp["gender"], lp["age"])


def model_tasks(cfg) -> tuple[str, ...]:
    """The heads a config asks for: all three, or its single ``task``."""
    return TASKS if cfg.task == "all" else (cfg.task,)


def build_model(cfg, pretrained: str | None = None, age_cuts: Sequence[float] = L.DEFAULT_AGE_CUTS) -> nn.Module:
    """The model of a config: timm's 18-class classifier (``heads: joint``) or a :class:`TaskModel` (``heads: tasks``).

    Args:
        pretrained: weight source (default: the config's); inference passes ``none``.
        age_cuts: the training cuts in years (:func:`train_cuts`) a years head splits at.

    Raises:
        KfError: see :func:`kfold.models.create_model`.
    """
    from .models import create_model

    pretrained = cfg.pretrained if pretrained is None else pretrained
    if cfg.heads == "joint":
        return create_model(cfg.model, pretrained, drop_rate=cfg.drop_rate, freeze_backbone=cfg.freeze_backbone)
    backbone = create_model(cfg.model, pretrained, num_classes=0, drop_rate=cfg.drop_rate,
                            freeze_backbone=cfg.freeze_backbone)
    return TaskModel(backbone, model_tasks(cfg), cfg.age_head, age_cuts)


# -- training targets and the loss -----------------------------------------------------------------------
def train_cuts(cfg, data_cuts: Sequence[float]) -> list[float]:
    """The age cuts of the training targets: the config's ``train_age_cuts``, else the data's (scoring) cuts."""
    return [float(c) for c in (cfg.train_age_cuts if cfg.train_age_cuts is not None else data_cuts)]


def training_targets(cfg, labels: np.ndarray, ages: np.ndarray | None, data_cuts: Sequence[float]) -> np.ndarray:
    """Per training row, what the loss is given: 18-class labels at the training cuts, or ``[label, years]``.

    Args:
        labels: ``(n,)`` int 18-class labels at the data (scoring) cuts (folds.csv).
        ages: ``(n,)`` ages in years (None when unknown).

    Returns:
        ``(n,)`` int64 labels whose age band is recomputed at ``train_age_cuts``;
        for a years head ``(n, 2)`` float32 ``[label, age in years]``.

    Raises:
        KfError: training cuts or a years head asked for without ages.
    """
    cuts = train_cuts(cfg, data_cuts)
    needs_ages = cfg.heads == "tasks" and cfg.age_head == "years" and cfg.task in ("all", "age")
    if cuts == [float(c) for c in data_cuts] and not needs_ages:
        return np.asarray(labels, dtype=np.int64)
    if ages is None:
        raise KfError("train_age_cuts / age_head: years need the ages in years of the training images "
                      "(load the data with kfold.data.load_data)")
    m, g, _ = L.decode(np.asarray(labels))
    y = L.encode(m, g, L.age_band(ages, cuts)).astype(np.int64)
    return np.stack([y, ages], axis=1).astype(np.float32) if needs_ages else y


class TaskLoss(nn.Module):
    """Weighted sum of per-task losses on :meth:`TaskModel.forward_tasks`' outputs.

    Targets (``target`` of :meth:`forward`):

    * ``(n,)`` int 18-class labels: split with :func:`kfold.labels.decode`;
    * ``(n, 18)`` float soft targets (mixup/cutmix): marginalised per task with
      :func:`task_marginals` (the loss must accept probability targets: ``ce``);
    * ``(n, 2)`` float ``[label, years]`` for a years head (:func:`training_targets`):
      Gaussian NLL on the years (in units of ``AGE_SCALE``); a row whose years
      are NaN (e.g. a pseudo-labelled image) gets cross-entropy on its band
      through :func:`age_band_log_probs` instead.

    Args:
        model: the :class:`TaskModel` (its heads, age head kind and cuts).
        losses: per task, a classification loss on ``(logits, target)`` (see
            :func:`kfold.losses.build_loss`); the years head has its own.
        weights: per task, its weight in the sum.
    """

    def __init__(self, model: TaskModel, losses: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.model = [model]  # a plain list: not a submodule, so the loss holds no copy of the weights
        self.losses = nn.ModuleDict(losses)
        self.weights = {t: float(weights[t]) for t in model.tasks}

    def forward(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        model = self.model[0]
        years = None
        if target.dim() == 2 and target.shape[1] == L.N_CLASSES:
            hard = [t for t, f in self.losses.items() if not isinstance(f, nn.CrossEntropyLoss)]
            if hard:
                raise KfError(f"soft (mixup/cutmix) targets need loss: ce; the {hard[0]} head's loss takes class labels only")
            parts = dict(zip(TASKS, task_marginals(target.float())))
        else:
            if target.dim() == 2:  # [label, years]
                years, target = target[:, 1].float(), target[:, 0].round().long()
            parts = dict(zip(TASKS, (target // 6, (target // 3) % 2, target % 3)))
        total = 0.0
        for t in model.tasks:
            if t == "age" and model.age_head == "years":
                part = self._years_loss(model, out[t], parts[t], years)
            else:
                part = self.losses[t](out[t].float(), parts[t])
            total = total + self.weights[t] * part
        return total

    @staticmethod
    def _years_loss(model: TaskModel, raw: torch.Tensor, band: torch.Tensor, years: torch.Tensor | None) -> torch.Tensor:
        mu, sigma = model.age_gaussian(raw)
        known = torch.isfinite(years) if years is not None else torch.zeros_like(mu, dtype=torch.bool)
        loss = mu.new_zeros(())
        if known.any():
            # in AGE_SCALE units, so the loss is of order 1 like the cross-entropies it is added to
            loss = loss + F.gaussian_nll_loss((mu[known] - AGE_CENTER) / AGE_SCALE, (years[known] - AGE_CENTER) / AGE_SCALE,
                                              (sigma[known] / AGE_SCALE) ** 2, reduction="sum")
        if not known.all():
            logp = age_band_log_probs(mu[~known], sigma[~known], model.age_cuts)
            b = band[~known]
            loss = loss + (-(b * logp).sum(1) if b.dim() == 2 else F.nll_loss(logp, b, reduction="none")).sum()
        return loss / len(mu)


def build_task_loss(cfg, model: TaskModel, train_labels: np.ndarray, device: torch.device) -> TaskLoss:
    """The :class:`TaskLoss` of a config: ``loss`` (``ce``/``focal``/``soft_f1``), ``label_smoothing``,
    ``focal_gamma`` and ``class_weights: balanced`` applied per task (weights from that task's training labels)."""
    from .losses import build_loss, class_weights

    y = np.asarray(train_labels)
    y = (y[:, 0] if y.ndim == 2 else y).astype(np.int64)
    codes = dict(zip(TASKS, L.decode(y)))
    losses = {}
    for t in model.tasks:
        if t == "age" and model.age_head == "years":
            continue
        w = class_weights(codes[t], cfg.class_weights, TASK_CLASSES[t])
        losses[t] = build_loss(cfg.loss, w.to(device) if w is not None else None, cfg.label_smoothing, cfg.focal_gamma,
                               n_classes=TASK_CLASSES[t])
    return TaskLoss(model, losses, cfg.task_weights)


# -- scores ---------------------------------------------------------------------------------------------
def task_accuracy(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of each task's argmax marginal: ``{mask, gender, age}`` in 0..1.

    Args:
        probs: ``(n, 18)`` probabilities; labels: ``(n,)`` int 18-class labels.
    """
    truth = L.decode(np.asarray(labels))
    return {t: float((m.argmax(1) == y).mean()) for t, m, y in zip(TASKS, task_marginals(np.asarray(probs)), truth)}


def selection_score(probs: np.ndarray, labels: np.ndarray, task: str) -> float:
    """What picks the best epoch: 18-class macro F1, or the trained task's macro F1 in a single-task run.

    Args:
        probs: ``(n, 18)`` validation probabilities; labels: ``(n,)`` int 18-class labels (scoring cuts).
    """
    from .metrics import macro_f1

    if task == "all":
        return macro_f1(labels, probs.argmax(1))
    i = TASKS.index(task)
    return macro_f1(L.decode(np.asarray(labels))[i], task_marginals(np.asarray(probs))[i].argmax(1), TASK_CLASSES[task])


# -- three single-task runs -> one 18-class run ------------------------------------------------------------
def combine_task_runs(runs: dict[str, str | Path], out_dir: str | Path) -> dict:
    """Join a mask, a gender and an age run into one 18-class run folder that ``kf ensemble`` reads like any other.

    Each run's task marginal (:func:`task_marginals` of its ``oof.csv`` and
    ``test.csv``) is taken, and ``out_dir`` gets their product (the
    independence assumption of the module docstring) as ``oof.csv`` and
    ``test.csv``, and a ``run.json`` (``kind: run``, ``combined_from``,
    the members' TTA, folds fingerprint and per-task OOF accuracy). The
    members may be single-task runs or any runs (the mask marginal of a joint
    18-class run, say). Each OOF row stays held-out: every member predicted
    it with the model of its fold.

    Args:
        runs: ``{"mask": run_dir, "gender": run_dir, "age": run_dir}``.
        out_dir: the new run folder (``<oof>/<name>``).

    Returns:
        The new ``run.json`` content.

    Raises:
        KfError: a task missing, a member unfinished or trained on other folds,
            or its files not aligned (see :func:`kfold.runset.load_runs`).
    """
    from .io import write_csv
    from .metrics import macro_f1
    from .runrecord import RunRecord, read_run_json, write_run_json
    from .runset import load_runs
    from .stagefiles import KEY_COLS, probs_frame

    if sorted(runs) != sorted(TASKS):
        raise KfError(f"combine: give one run per task ({', '.join(TASKS)}), got {', '.join(sorted(runs)) or 'none'}")
    out_dir = Path(out_dir)
    dirs = [Path(runs[t]) for t in TASKS]
    oof_dir = dirs[0].parent
    if any(d.parent != oof_dir for d in dirs):
        raise ParamError("combine: the three runs must be in one {oof_dir} folder", "oof_dir")
    if out_dir.resolve() in [d.resolve() for d in dirs]:
        raise ParamError(f"combine: {out_dir} is one of the members; choose another {{out_dir}}", "out_dir")
    rs = load_runs(oof_dir, [d.name for d in dirs])
    oof = joint_from_marginals(*(task_marginals(rs.oof[i])[i] for i in range(3)))
    test = joint_from_marginals(*(task_marginals(rs.test[i])[i] for i in range(3)))
    metas = [read_run_json(d) for d in dirs]
    y = rs.y
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(probs_frame(rs.keys[KEY_COLS], oof.astype(np.float32)), out_dir / "oof.csv")
    write_csv(probs_frame(pd.DataFrame({"ImageID": rs.test_ids}), test.astype(np.float32)), out_dir / "test.csv")
    meta = RunRecord.combined(out_dir.name, {t: d.name for t, d in zip(TASKS, dirs)}, rs.folds_fingerprint,
                              rs.k, {t: m.tta for t, m in zip(TASKS, metas)}, metas[0].get("data"),
                              macro_f1(y, oof.argmax(1)), float((oof.argmax(1) == y).mean()), task_accuracy(oof, y),
                              float(sum(m.get("seconds", 0.0) for m in metas)))
    write_run_json(meta, out_dir)
    return meta.to_dict()
