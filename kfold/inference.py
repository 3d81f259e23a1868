"""Inference from a finished run's fold checkpoints: any folder of images, or the OOF/test sets with another TTA.

Each fold model's ``best.pt`` (``torch.load(weights_only=True)``) is rebuilt
from the run's recorded config; probabilities are averaged over fold models,
each with batched TTA (:mod:`kfold.tta`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .cache import build_cache
from .config import TrainConfig, validate
from .device import amp_dtype, configure_torch, resolve_device, use_channels_last
from .images import extensions_text, list_images, load_image
from .io import KfError, write_csv
from .labels import N_CLASSES
from .metrics import macro_f1
from .runrecord import RunRecord, read_run_json, run_json_path, write_run_json
from .stagefiles import KEY_COLS, probs_frame, read_oof_csv, read_test_csv


def load_run(run_dir: str | Path) -> tuple[RunRecord, TrainConfig]:
    """Read ``run.json`` (:class:`kfold.runrecord.RunRecord`) and rebuild the run's :class:`TrainConfig`.

    Raises:
        KfError: not a run folder, or the run has no checkpoints.
    """
    run_dir = Path(run_dir)
    meta = read_run_json(run_dir)
    if meta.kind != "run":
        what = "an imported run (kind external)" if meta.get("kind") == "external" else "an ensemble"
        raise KfError(f"{run_dir}: is {what}, not a run with checkpoints")
    if meta.get("combined_from"):
        raise KfError(f"{run_dir}: combined from the runs {', '.join(meta['combined_from'].values())} and has no "
                      "checkpoints of its own; re-predict those runs, then kf combine them again")
    from .config import VALID_KEYS

    config = meta.get("config") or {}
    unknown = [k for k in config if k not in VALID_KEYS]
    if unknown:
        raise KfError(f"{run_json_path(run_dir)}: config key {unknown[0]!r} is unknown to this kf version; retrain or upgrade kf")
    cfg = validate(TrainConfig(**config), str(run_json_path(run_dir)))
    return meta, cfg


def fold_models(run_dir: str | Path, cfg: TrainConfig, device: torch.device):
    """Yield ``(fold, model)`` for every ``fold<k>/best.pt`` of a run, in eval mode on ``device``.

    Raises:
        KfError: no fold checkpoint found, or one is not a plain tensor file
            (loaded with ``weights_only=True``: pickled objects are refused, never run).
    """
    from .heads import build_model
    from .models import load_checkpoint

    paths = sorted(Path(run_dir).glob("fold*/best.pt"), key=lambda p: int(p.parent.name[4:]))
    if not paths:
        raise KfError(f"{run_dir}: no fold*/best.pt checkpoints")
    for p in paths:
        model = build_model(cfg, "none")  # a task-head model's age cuts come with its weights (a buffer)
        model.load_state_dict(load_checkpoint(p))
        yield int(p.parent.name[4:]), model.to(device).eval()


def _predict(model, images: np.ndarray, cfg: TrainConfig, device: torch.device, tta: str, indices=None) -> np.ndarray:
    from .models import normalisation
    from .tta import predict_array

    mean, std = normalisation(model)
    cl = use_channels_last(cfg)
    if cl:
        model.to(memory_format=torch.channels_last)
    return predict_array(model, images, mean, std, device, tta, cfg.eval_batch_size, amp_dtype(cfg, device), cl, indices)


def predict_images(run_dir: str | Path, images_dir: str | Path, tta: str | None = None,
                   batch_size: int | None = None) -> tuple[list[str], np.ndarray]:
    """Apply a run's fold models (mean of probabilities) with TTA to every image in a folder.

    Args:
        run_dir: ``<oof>/<run>``.
        images_dir: folder of images: the files :func:`kfold.images.list_images` lists (the
            extensions of :data:`kfold.images.IMAGE_EXTENSIONS`, any case; hidden files and
            other entries skipped, see ``skipped`` of that function), read in name order.
        tta: ``none``/``hflip``/``flip``/``d4``; default: the run's.

    Returns:
        ``(image_ids, probs)``: file names and ``(n_images, 18)`` float32 probabilities.

    Raises:
        KfError: not a run, no images, or an unreadable image.
    """
    combined = read_run_json(run_dir).get("combined_from")
    if combined:
        return _predict_combined(run_dir, combined, images_dir, tta, batch_size)
    meta, cfg = load_run(run_dir)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise KfError(f"{images_dir}: folder not found")
    files, _ = list_images(images_dir)
    if not files:
        raise KfError(f"{images_dir}: no images (an image must be {extensions_text()})")
    if batch_size:
        cfg.eval_batch_size = batch_size
    device = resolve_device(cfg)
    configure_torch(cfg, device)
    arr = np.stack([load_image(p, tuple(cfg.image_size)) for p in files])
    probs = np.mean([_predict(m, arr, cfg, device, tta or cfg.tta) for _, m in fold_models(run_dir, cfg, device)], axis=0)
    return [p.name for p in files], probs.astype(np.float32)


def _predict_combined(run_dir, combined: dict, images_dir, tta, batch_size) -> tuple[list[str], np.ndarray]:
    """``kf combine``'s run on a folder of images: each member run's task marginal, multiplied (kfold.heads)."""
    from .heads import TASKS, joint_from_marginals, task_marginals

    own = read_run_json(run_dir).tta or {}
    parts = [predict_images(Path(run_dir).parent / combined[t], images_dir, tta if isinstance(tta, str) else own.get(t),
                            batch_size) for t in TASKS]
    probs = joint_from_marginals(*(task_marginals(p)[i] for i, (_, p) in enumerate(parts)))
    return parts[0][0], probs.astype(np.float32)


def repredict_run(run_dir: str | Path, data_root: str | Path, tta: str, out_dir: str | Path,
                  echo: Callable[[str], None] = print) -> dict:
    """Re-predict a finished run's OOF and test sets from its checkpoints with another TTA.

    Writes a run folder ``out_dir`` (``oof.csv``, ``test.csv``, ``run.json`` with
    the same folds fingerprint and ``tta``), which ``kf ensemble`` treats as a
    run. Each OOF row is predicted by its own fold's model, as in training.

    Returns:
        The new ``run.json`` content (:meth:`kfold.runrecord.RunRecord.repredicted`).

    Raises:
        KfError: the run is unfinished or its checkpoints are missing.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta, cfg = load_run(run_dir)
    if not meta.get("finished"):
        raise KfError(f"{run_dir}: run is not finished (train all folds first)")
    oof, _ = read_oof_csv(run_dir / "oof.csv")
    test = pd.DataFrame({"ImageID": read_test_csv(run_dir / "test.csv")[0]})
    root = Path(data_root)
    device = resolve_device(cfg)
    configure_torch(cfg, device)
    size = tuple(cfg.image_size)
    cache_dir = run_dir.parent / "cache"
    train_cache = build_cache([root / p for p in oof["image"]], size, cache_dir)
    test_cache = build_cache([root / "eval" / "images" / i for i in test["ImageID"]], size, cache_dir)
    oof_p = np.zeros((len(oof), N_CLASSES), dtype=np.float32)
    test_p = []
    for f, model in fold_models(run_dir, cfg, device):
        rows = np.flatnonzero(oof["fold"].to_numpy() == f)
        oof_p[rows] = _predict(model, train_cache, cfg, device, tta, rows)
        test_p.append(_predict(model, test_cache, cfg, device, tta))
        echo(f"  {meta['name']} fold {f}: re-predicted with TTA {tta}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(probs_frame(oof[KEY_COLS], oof_p), out_dir / "oof.csv")
    write_csv(probs_frame(test, np.mean(test_p, axis=0)), out_dir / "test.csv")
    new_meta = RunRecord.repredicted(meta, out_dir.name, tta, macro_f1(oof["label"].to_numpy(), oof_p.argmax(1)))
    write_run_json(new_meta, out_dir)
    return new_meta.to_dict()
