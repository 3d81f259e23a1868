"""Run configuration: one YAML per backbone/experiment in ``configs/``.

Every key is a field of :class:`TrainConfig`; unknown keys are refused with
the list of valid ones. Any value can be overridden on the command line with
``--set key=value`` (the value is parsed as YAML: ``--set epochs=1``,
``--set image_size=[96,96]``, ``--set augment.hflip=0``). Files and ``--set``
values are read as YAML with YAML 1.2 floats (``1e-3`` is a number).

Each field's rule (type, range, finiteness, choices, length) is one entry of
:data:`kfold.rules.RULES`, which :func:`validate` reads; docs/reliability.md lists them.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import KfError, ParamError
from .rules import (
    AUGMENT_DEFAULTS,
    AUGMENT_RULES,  # noqa: F401 - kfold.config is where settings code looks for the tables
    RULES,
    TASK_WEIGHT_DEFAULTS,
    SubkeyError,
)

# config keys that change how fast, not what is computed (a run resumed with others is the same run)
RUNTIME_KEYS = ("num_workers", "threads", "device", "eval_batch_size", "track")


class SafeLoader12(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's floats and booleans.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent,
    so ``lr: 1e-3`` would load as the string ``'1e-3'``, and whose booleans
    include ``on``/``off``/``yes``/``no``, so ``amp: off`` would load as
    ``False``. This loader adds YAML 1.2's float pattern (core schema) after
    1.1's int and float resolvers, so every number written the usual way is a
    number, and takes only ``true``/``false`` as booleans. It builds only
    plain Python objects, as ``yaml.safe_load`` does.
    """


SafeLoader12.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:bool"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SafeLoader12.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
SafeLoader12.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with YAML 1.2 floats (see :class:`SafeLoader12`).

    Raises:
        yaml.YAMLError: invalid YAML.
    """
    loader = SafeLoader12(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

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
    # task heads and age (docs/training.md "Task heads and age in years"; kfold/heads.py)
    heads: str = "joint"            # joint (one 18-class classifier) | tasks (mask/gender/age heads, one backbone)
    task: str = "all"               # all | mask | gender | age (a single-task run; heads: tasks)
    age_head: str = "band"          # band (3-class) | years (Gaussian regression on the age in years; heads: tasks)
    task_weights: dict = field(default_factory=lambda: dict(TASK_WEIGHT_DEFAULTS))  # loss weight per task
    train_age_cuts: Any = None      # null (= --age-cuts, the scoring cuts) | [young_upper, old_lower] for training targets
    # mixing augmentations (timm Mixup/CutMix, soft targets) and pseudo-labels; docs/training.md
    mixup_alpha: float = 0.0        # Beta(a, a) of MixUp; 0 = off
    cutmix_alpha: float = 0.0       # Beta(a, a) of CutMix; 0 = off
    cutmix_region: str = "box"      # box (timm: random rectangle) | left_right | top_bottom (split along a line)
    mix_prob: float = 1.0           # probability that a batch is mixed (when an alpha > 0)
    mix_switch_prob: float = 0.5    # CutMix instead of MixUp when both alphas > 0
    mix_mode: str = "batch"         # timm Mixup mode: batch | pair | elem (left_right/top_bottom: batch only)
    pseudo: Any = None              # null | run or ensemble folder (or its test.csv) whose confident test rows join training
    pseudo_threshold: float = 0.9   # minimum top-class probability of a pseudo-labelled test image
    track: bool = False             # log to MLflow (pip install -e '.[track]'; docs/tracking.md); also --track, KF_TRACK=1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


VALID_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


#: the ``source`` of :func:`load_config`'s ``overrides`` in messages: a :class:`ParamError` placeholder
#: (``overrides epochs: ...`` from Python, ``--set epochs: ...`` from ``kf train``)
OVERRIDES = "{overrides}"


def _source_error(message: str, source: str) -> KfError:
    """A :class:`KfError` about a value from ``source`` (a file), or a :class:`ParamError` when it is :data:`OVERRIDES`."""
    return ParamError(message, "overrides") if source == OVERRIDES else KfError(message)


def _set(d: dict, key: str, value: Any, source: str) -> None:
    if "." in key:
        top, sub = key.split(".", 1)
        if top != "augment":
            raise _source_error(f"{source}: unknown key {key!r}; only augment.<name> is nested", source)
        if sub not in AUGMENT_DEFAULTS:
            where = f"{source} {key}" if source == OVERRIDES else f"{source}: {key}"
            raise _source_error(f"{where}: unknown augment key {sub!r}; valid: {', '.join(AUGMENT_DEFAULTS)}", source)
        d.setdefault("augment", dict(AUGMENT_DEFAULTS))[sub] = value
        return
    if key not in VALID_KEYS:
        raise _source_error(f"{source}: unknown key {key!r}; valid keys: {', '.join(VALID_KEYS)}", source)
    d[key] = value




def validate(cfg: TrainConfig, source: str, overridden: frozenset[str] = frozenset()) -> TrainConfig:
    """Check every field against its :data:`RULES` entry and normalise it (ints to floats, a size to a list).

    Raises:
        KfError: ``<source>: <key>: <why>``, or the ParamError ``overrides <key>: <why>`` (``kf train``:
            ``--set <key>: <why>``) for a key in ``overridden``; the first field (in field order) that breaks its rule.
        LookupError: a TrainConfig field has no rule (a programming error).
    """
    def bad(k: str, why: str) -> KfError:
        return _source_error(f"{OVERRIDES} {k}: {why}", OVERRIDES) if k in overridden else KfError(f"{source}: {k}: {why}")

    for k in VALID_KEYS:
        if k not in RULES:
            raise LookupError(f"TrainConfig.{k} has no rule in kfold.rules.RULES")
        try:
            setattr(cfg, k, RULES[k].check(getattr(cfg, k)))
        except SubkeyError as e:  # augment is set per sub-key (augment.hflip), other sections as a whole
            raise (bad(f"{k}.{e.key}", str(e)) if k == "augment" else bad(k, f"{e.key}: {e}")) from None
        except ValueError as e:
            raise bad(k, str(e)) from None
    if cfg.heads == "joint" and (cfg.task != "all" or cfg.age_head != "band"):
        raise bad("task" if cfg.task != "all" else "age_head", "needs heads: tasks (a head per task)")
    if cfg.heads == "tasks" and isinstance(cfg.class_weights, list):
        raise bad("class_weights", "18 class weights do not apply to task heads; use null or balanced (per task)")
    if mixing(cfg):
        if cfg.cutmix_region != "box" and cfg.cutmix_alpha > 0 and cfg.mix_mode != "batch":
            raise bad("mix_mode", f"cutmix_region {cfg.cutmix_region} mixes whole batches; use mix_mode: batch")
        if cfg.loss == "focal":
            raise bad("loss", "focal takes class indices; with mixup/cutmix use ce or soft_f1 (soft targets)")
    if cfg.scheduler != "none" and cfg.min_lr > cfg.lr:
        raise bad("min_lr" if "min_lr" in overridden or "lr" not in overridden else "lr",
                  f"min_lr {cfg.min_lr:g} is above lr {cfg.lr:g}; the scheduler would raise the learning rate")
    cfg.kf_source = (source, overridden)
    return cfg


def setting_error(cfg: TrainConfig, key: str, why: str) -> KfError:
    """A :class:`KfError` about setting ``key`` of a validated config, worded as :func:`validate` words it.

    For checks that need more than the value (the preflight: can the model
    take this image size, is this device there).
    """
    source, overridden = getattr(cfg, "kf_source", (None, frozenset()))
    if key in overridden:
        return _source_error(f"{OVERRIDES} {key}: {why}", OVERRIDES)
    return KfError(f"{source}: {key}: {why}" if source else f"{key}: {why}")


def mixing(cfg: TrainConfig) -> bool:
    """Whether training mixes images (MixUp or CutMix on, ``mix_prob`` > 0): the loss then gets soft ``(n, 18)`` targets."""
    return (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and cfg.mix_prob > 0


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["epochs=1", "image_size=[96,96]"]`` -> ``[("epochs", 1), ("image_size", [96, 96])]`` (``kf train --set``).

    Raises:
        ParamError: an item has no ``=`` or its value is not valid YAML (``overrides 'x': expected key=value``).
    """
    out = []
    for p in overrides:
        if "=" not in p:
            raise _source_error(f"{OVERRIDES} {p!r}: expected key=value", OVERRIDES)
        k, v = p.split("=", 1)
        try:
            out.append((k.strip(), load_yaml(v) if v.strip() else None))
        except yaml.YAMLError:
            raise _source_error(f"{OVERRIDES} {p!r}: value is not valid YAML", OVERRIDES) from None
    return out


def load_config(path: str | Path, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    """Read a YAML config, apply ``overrides`` (``kf train --set``) and validate.

    The run name defaults to the file's stem.

    Raises:
        KfError: unreadable YAML, unknown keys, bad values (naming the file and key); a
            :class:`ParamError` naming ``overrides`` for a bad key or value there.
    """
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KfError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KfError(f"{path}: invalid YAML{where}") from None
    if raw is None:  # an empty (or comments-only) file would silently train every default
        raise KfError(f"{path}: empty config; expected a mapping of key: value (e.g. model: tf_efficientnet_lite0)")
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
        _set(d, k, v, OVERRIDES)
    return validate(TrainConfig(**d), str(path), frozenset(k for k, _ in overrides))


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (what ``oof/<run>/config.yaml`` holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
