"""One fold of one run: build the model and its optimizer, train epoch by epoch, keep the best, predict.

:class:`FoldTrainer` puts the parts together: :mod:`kfold.device`
(precision, layout, seeds), :mod:`kfold.loop` (:func:`~kfold.loop.train_one_epoch`,
:func:`~kfold.loop.validate`), :mod:`kfold.checkpoint` (``best.pt``,
``last.pt``, resume). :func:`run_fold` is the unit of work of every
executor; :func:`fold_job` is its picklable form for :mod:`kfold.executors`.

A fold writes ``<oof>/<run>/fold<k>/``: ``best.pt``, ``last.pt`` (removed
when the fold is done), ``log.csv``, ``oof.csv``, ``test.csv`` (and
``holdout.csv``), then ``result.json``, last, which marks it finished.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import tracking
from .cache import holdout_cache, image_caches
from .checkpoint import FoldProgress, load_best, load_last, save_last, save_weights
from .config import TrainConfig
from .data import DataBundle
from .device import amp_dtype, configure_torch, epoch_seed, resolve_device, seed_everything, use_channels_last
from .folds import HOLDOUT_COLS
from .io import KfError, crash_point, read_json, write_csv, write_json
from .loop import Diverged, check_finite, loop_settings, step_scheduler, train_one_epoch, validate
from .stagefiles import probs_frame


class FoldTrainer:
    """Train one fold of one run; see :meth:`run`."""

    def __init__(self, cfg: TrainConfig, fold: int, run_dir: Path, data: DataBundle, train_cache: np.ndarray,
                 test_cache: np.ndarray, device: torch.device, workers: int, echo: Callable[[str], None] = print,
                 progress: bool | None = None, holdout_cache: np.ndarray | None = None):
        self.cfg, self.fold, self.data, self.device, self.workers, self.echo = cfg, fold, data, device, workers, echo
        self.holdout_cache = holdout_cache
        self.dir = run_dir / f"fold{fold}"
        self.train_cache, self.test_cache = train_cache, test_cache
        self.progress = progress
        f = data.folds["fold"].to_numpy()
        self.tr_idx, self.va_idx = np.flatnonzero(f != fold), np.flatnonzero(f == fold)
        if not len(self.va_idx) or not len(self.tr_idx):
            raise KfError(f"folds.csv: fold {fold} has {'no' if not len(self.va_idx) else 'every'} image; "
                          "rerun kf folds --force (kf folds never leaves a fold empty)")
        self.labels = data.folds["label"].to_numpy()
        from .heads import training_targets
        from .pseudo import pseudo_rows  # pseudo-labelled test rows: training side only, never validation

        self.targets = training_targets(cfg, self.labels, data.ages, data.data_settings["age_cuts"])
        self.ps_idx, self.ps_labels = (pseudo_rows(run_dir, fold, data.test["ImageID"].to_numpy()) if cfg.pseudo is not None
                                       else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        # a pseudo-labelled row has no age in years: a years head trains it on its band (NaN years)
        self.ps_targets = (np.stack([self.ps_labels, np.full(len(self.ps_labels), np.nan)], axis=1).astype(np.float32)
                           if self.targets.ndim == 2 else self.ps_labels)
        self.amp = amp_dtype(cfg, device)
        self.channels_last = use_channels_last(cfg)

    # -- building blocks ------------------------------------------------------------------
    def _build(self):
        import timm.optim
        import timm.scheduler
        import timm.utils

        from .augment import build_mixer
        from .heads import build_model, build_task_loss, train_cuts
        from .losses import build_loss, build_soft_loss, class_weights
        from .models import normalisation

        cfg = self.cfg
        model = build_model(cfg, age_cuts=train_cuts(cfg, self.data.data_settings["age_cuts"]))
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.mean, self.std = normalisation(model)
        opt = timm.optim.create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = None
        if cfg.scheduler == "plateau":
            # torch's, not timm's: timm's PlateauLRScheduler keeps no state in checkpoints (deprecated),
            # so a resumed fold would restart its patience; torch's has a state_dict
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.decay_rate, patience=1,
                                                               min_lr=cfg.min_lr)
        elif cfg.scheduler != "none":
            sched, _ = timm.scheduler.create_scheduler_v2(
                opt, sched=cfg.scheduler, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
                min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs, plateau_mode="max",
                patience_epochs=1)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        ema = timm.utils.ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        self.mixer = build_mixer(cfg)  # on: the loss gets soft (n, 18) targets
        if cfg.heads == "tasks":
            return model, opt, sched, scaler, ema, build_task_loss(cfg, model, self.targets[self.tr_idx], self.device)
        w = class_weights(np.concatenate([self.targets[self.tr_idx], self.ps_labels]), cfg.class_weights)
        if self.mixer is not None:
            loss_fn = build_soft_loss(cfg.loss, w.to(self.device) if w is not None else None)
        else:
            loss_fn = build_loss(cfg.loss, w.to(self.device) if w is not None else None, cfg.label_smoothing, cfg.focal_gamma)
        return model, opt, sched, scaler, ema, loss_fn

    def _loader(self, epoch: int):
        from torch.utils.data import DataLoader

        from .augment import CachedImages, ConcatImages, build_train_transform, seed_worker

        s = epoch_seed(self.cfg.seed, self.fold, epoch)
        seed_everything(s)
        transform = build_train_transform(self.cfg.augment, tuple(self.cfg.image_size), s)
        ds = CachedImages(self.train_cache, self.tr_idx, self.targets[self.tr_idx], transform, self.channels_last)
        if len(self.ps_idx):
            ds = ConcatImages([ds, CachedImages(self.test_cache, self.ps_idx, self.ps_targets, transform, self.channels_last)])
        g = torch.Generator().manual_seed(s)
        bs = min(self.cfg.batch_size, len(ds))
        return DataLoader(ds, batch_size=bs, shuffle=True, generator=g, num_workers=self.workers,
                          worker_init_fn=seed_worker if self.workers else None, drop_last=len(ds) > bs,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def predict(self, model, images: np.ndarray, indices: np.ndarray | None, tta: str) -> np.ndarray:
        from .tta import predict_array

        return predict_array(model, images, self.mean, self.std, self.device, tta, self.cfg.eval_batch_size,
                             self.amp, self.channels_last, indices)

    # -- divergence -------------------------------------------------------------------------
    def diverged(self, epoch: int, what: str) -> KfError:
        """Delete this fold's files and return the one-line error for a non-finite loss or output.

        Nothing of the fold is kept (its ``last.pt`` would resume into the same
        divergence, and a fold folder with weights would make a rerun with
        fixed settings look like a started run), so a rerun starts the fold
        clean. ``result.json`` was never written: the run is not finished.
        """
        shutil.rmtree(self.dir, ignore_errors=True)
        cfg = self.cfg
        return KfError(f"run {cfg.name} fold {self.fold} epoch {epoch + 1} {what}; the fold stopped and "
                       f"{self.dir.name}/ was removed. Lower lr (now {cfg.lr:g}; also try warmup_epochs, or amp off) "
                       f"or check class_weights, then rerun")

    # -- the fold ---------------------------------------------------------------------------
    def finished(self) -> bool:
        return (self.dir / "result.json").exists()

    def run(self) -> dict:
        """Train (or resume) this fold, then write its OOF/test predictions; return its result dict.

        Raises:
            KfError: a non-finite loss or output (the fold's folder is removed,
                see :meth:`diverged`), or an unloadable ``last.pt``.
        """
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        seed_everything(epoch_seed(cfg.seed, self.fold, -1))  # the head's (or whole model's) random init
        model, opt, sched, scaler, ema, loss_fn = self._build()
        eval_model = ema.module if ema is not None else model
        state = FoldProgress()
        last = self.dir / "last.pt"
        if last.exists():
            state = load_last(last, model, opt, sched, scaler, ema, self.device)
            self.echo(f"  fold {self.fold}: resuming after epoch {state.epoch + 1} "
                      f"(best macro F1 {state.best:.4f} at epoch {state.best_epoch})")
        start_epoch = state.next_epoch
        m = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        t_fold = time.time()
        for epoch in range(start_epoch, cfg.epochs):
            if state.stopped(cfg.early_stopping):
                break
            try:
                self._epoch(epoch, state, model, eval_model, opt, sched, scaler, ema, loss_fn, m, s)
            except Diverged as e:
                raise self.diverged(epoch, str(e)) from None
        result = self._predict_best(eval_model, state)
        result["seconds"] = time.time() - t_fold + sum(h["seconds"] for h in state.history[:start_epoch])
        write_json(result, self.dir / "result.json")
        last.unlink(missing_ok=True)
        return result

    def _epoch(self, epoch: int, state: FoldProgress, model, eval_model, opt, sched, scaler, ema, loss_fn,
               mean: torch.Tensor, std: torch.Tensor) -> None:
        """Train and validate epoch ``epoch`` (from 0); save its checkpoints, log.csv row and tracking metrics."""
        from .heads import selection_score

        cfg = self.cfg
        loader = self._loader(epoch)  # seeds every RNG of the epoch first
        t0 = time.time()
        stats = train_one_epoch(model, loader, opt, loss_fn, device=self.device, mean=mean, std=std, scaler=scaler,
                                ema=ema, mixer=self.mixer, amp=self.amp, **loop_settings(cfg),
                                channels_last=self.channels_last, progress=self.progress,
                                desc=f"{cfg.name} fold {self.fold} epoch {epoch + 1}/{cfg.epochs}")
        val = validate(lambda: self.predict(eval_model, self.train_cache, self.va_idx, "none"),
                       self.labels[self.va_idx], lambda p, y: selection_score(p, y, cfg.task))
        lr = opt.param_groups[0]["lr"]
        step_scheduler(sched, epoch, val.score)
        state.history.append({"epoch": epoch + 1, "train_loss": stats.loss, "val_loss": val.loss,
                              "val_macro_f1": val.score, "val_accuracy": val.accuracy, "lr": lr,
                              "images_per_s": stats.images / stats.seconds, "seconds": time.time() - t0})
        if state.record(epoch, val.score):
            save_weights(eval_model.state_dict(), self.dir / "best.pt")
        stop = state.stopped(cfg.early_stopping)
        save_last(self.dir / "last.pt", state, model, opt, sched, scaler, ema)
        write_csv(pd.DataFrame(state.history), self.dir / "log.csv")
        row = state.history[-1]
        tracking.log_epoch(cfg, self.dir, row)
        self.echo(f"  {cfg.name} fold {self.fold} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                  f"val macro F1 {val.score:.4f} acc {row['val_accuracy']:.4f} "
                  f"({row['images_per_s']:.0f} img/s, {row['seconds']:.0f} s)" + (" early stop" if stop else ""))

    def _predict_best(self, eval_model, state: FoldProgress) -> dict:
        """Load ``best.pt``; write the fold's OOF, test (and holdout) predictions with TTA; return the result (no seconds)."""
        from .heads import selection_score

        cfg = self.cfg
        load_best(self.dir / "best.pt", eval_model, self.device)
        oof = self.predict(eval_model, self.train_cache, self.va_idx, cfg.tta)
        test = self.predict(eval_model, self.test_cache, None, cfg.tta)
        try:
            check_finite(oof, f"OOF prediction (best.pt, TTA {cfg.tta})")
            check_finite(test, f"test prediction (best.pt, TTA {cfg.tta})")
        except Diverged as e:
            raise self.diverged(state.best_epoch - 1, str(e)) from None
        folds = self.data.folds.iloc[self.va_idx]
        write_csv(probs_frame(folds[["image", "person", "fold", "label"]], oof), self.dir / "oof.csv")
        write_csv(probs_frame(self.data.test[["ImageID"]], test), self.dir / "test.csv")
        if self.holdout_cache is not None:  # predicted exactly as the test set: this fold's model, with TTA
            hold = self.predict(eval_model, self.holdout_cache, None, cfg.tta)
            write_csv(probs_frame(self.data.holdout[HOLDOUT_COLS], hold), self.dir / "holdout.csv")
        return {"fold": self.fold, "macro_f1": selection_score(oof, folds["label"].to_numpy(), cfg.task),
                "macro_f1_no_tta": state.best, "best_epoch": state.best_epoch, "epochs_run": len(state.history)}


def run_fold(cfg: TrainConfig, fold: int, run_dir: str | Path, data: DataBundle, oof_dir: str | Path,
             echo: Callable[[str], None] = print, progress: bool | None = None, cores: int | None = None) -> dict:
    """Train one (run, fold) unless it is finished; the unit of work of every executor.

    Idempotent: a finished fold (``fold<k>/result.json``) is returned as is; an
    interrupted one resumes from ``last.pt``. The image caches are built on
    first use and reused (memory-mapped) afterwards. ``cores``: see
    :func:`kfold.device.resolve_workers`. Torch's thread count is always set
    explicitly, so a fold computes the same numbers in any process given the
    same threads.

    Returns:
        The fold's ``result.json`` content plus ``skipped`` (bool).
    """
    run_dir, oof_dir = Path(run_dir), Path(oof_dir)
    device = resolve_device(cfg)
    threads, workers = configure_torch(cfg, device, cores)
    done = run_dir / f"fold{fold}" / "result.json"
    if done.exists():
        r = read_json(done)
        echo(f"  {cfg.name} fold {fold}: finished earlier (macro F1 {r['macro_f1']:.4f}), skipped")
        tracking.fold_done(cfg, run_dir, fold, r)
        return {**r, "skipped": True}
    size = tuple(cfg.image_size)
    t0 = time.time()
    train_cache, test_cache = image_caches(data, size, oof_dir)
    echo(f"{cfg.name} fold {fold}: {cfg.model} ({cfg.pretrained}) {size[0]}x{size[1]} on {device}, {threads} threads, "
         f"{workers} workers; image cache ready in {time.time() - t0:.1f} s")
    hold_cache = holdout_cache(data, size, oof_dir)
    r = FoldTrainer(cfg, fold, run_dir, data, train_cache, test_cache, device, workers, echo, progress, hold_cache).run()
    crash_point("fold-done")
    tracking.fold_done(cfg, run_dir, fold, r)
    echo(f"{cfg.name} fold {fold}: OOF macro F1 {r['macro_f1']:.4f} with TTA {cfg.tta} "
         f"(best epoch {r['best_epoch']}, {r['seconds']:.0f} s)")
    return {**r, "skipped": False}


@dataclass(frozen=True)
class RunSpec:
    """What a fold job of one run needs besides the fold and the data: picklable, for Ray.

    ``config``: :meth:`TrainConfig.to_dict`; ``run_dir`` and ``oof_dir``:
    absolute paths (a worker may run in another folder).
    """

    config: dict
    run_dir: str
    oof_dir: str


def fold_job(spec: RunSpec, fold: int, data: DataBundle, *, cores: int | None = None, gpu: bool = False,
             echo: Callable[[str], None] = print) -> dict:
    """:func:`run_fold` for an executor (see :func:`kfold.executors.run_jobs_on_ray`), without progress bars.

    ``gpu``: the executor gave the job one GPU, which the job sees as
    ``cuda:0``, so a ``cuda:N`` device becomes ``cuda``.
    """
    config = dict(spec.config)
    if gpu and config["device"].startswith("cuda"):
        config["device"] = "cuda"  # the task sees only the GPU Ray gave it, as cuda:0
    return run_fold(TrainConfig(**config), fold, spec.run_dir, data, spec.oof_dir, echo=echo, progress=False,
                    cores=cores)
