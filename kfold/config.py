"""Run configuration: one YAML per backbone/experiment in ``configs/``.

Every key is a field of :class:`TrainConfig`; unknown keys are refused with
the list of valid ones. Any value can be overridden on the command line with
``--set key=value`` (the value is parsed as YAML: ``--set epochs=1``,
``--set image_size=[96,96]``, ``--set augment.hflip=0``). Files and ``--set``
values are read as YAML with YAML 1.2 floats (``1e-3`` is a number).

Each field is declared with its default, its rule (type, range, finiteness,
choices, length; :mod:`kfold.rules`) and a one-line help (:func:`setting`);
:func:`validate` checks the rules, and docs/settings.md is written from the
fields (:func:`settings_markdown`).
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import KfError, ParamError
from .labels import N_CLASSES
from .rules import (
    AUGMENT_DEFAULTS,
    AUGMENT_RULES,
    CLASS_WEIGHTS,
    CUTMIX_REGIONS,
    DEVICE,
    IMAGE_SIZE,
    LOSSES,
    MIX_MODES,
    MODEL,
    OPTIMIZER,
    PRETRAINED,
    PSEUDO,
    RUN_NAME,
    SCHEDULERS,
    TASK_WEIGHT_DEFAULTS,
    TRAIN_AGE_CUTS,
    TTAS,
    Rule,
    SubkeyError,
    auto_or_integer,
    boolean,
    choice,
    integer,
    number,
    probability,
    section,
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

def setting(default: Any, rule: Rule, help: str) -> Any:
    """A :class:`TrainConfig` field: its default, its rule (:mod:`kfold.rules`) and its one-line help.

    The rule and the help are kept in the field's ``metadata`` (``dataclasses.field``);
    :func:`validate` checks the value against the rule, and :func:`settings_markdown`
    writes the settings reference (docs/settings.md) from all three. A list or
    dict default is copied for each config.
    """
    meta = {"rule": rule, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """One run: a backbone and how to train it. See ``configs/*.yaml`` for documented examples.

    Each field is declared with :func:`setting` (default, rule, help); a new
    field needs nothing else here, and is listed by docs/settings.md.
    """

    name: str = setting("run", RUN_NAME, "run folder name under --oof (default: the config file's stem)")
    model: str = setting("tf_efficientnet_lite0", MODEL, "timm model name (the backbone)")
    pretrained: str = setting("none", PRETRAINED, "none | timm (hub) | file:/path.pth | pypi:efficientnet_lite0 (lite0/1/2)")
    freeze_backbone: bool = setting(False, boolean(), "true: train the head only (feature extraction)")
    drop_rate: float = setting(0.2, number(0, below=1), "dropout before the classifier")
    image_size: list = setting([96, 96], IMAGE_SIZE, "[height, width] in pixels the images are resized to")
    epochs: int = setting(3, integer(1), "training epochs per fold")
    batch_size: int = setting(32, integer(1), "training images per batch")
    accum_steps: int = setting(1, integer(1), "batches per optimizer step (gradient accumulation)")
    optimizer: str = setting("adamw", OPTIMIZER, "any timm.optim.create_optimizer_v2 name")
    lr: float = setting(1e-3, number(above=0), "peak learning rate")
    weight_decay: float = setting(1e-4, number(0), "weight decay of the optimizer")
    scheduler: str = setting("cosine", choice(*SCHEDULERS), "timm scheduler, stepped per epoch")
    warmup_epochs: int = setting(0, integer(0), "epochs of linear warm-up from warmup_lr")
    warmup_lr: float = setting(1e-5, number(0), "learning rate at the start of warm-up")
    min_lr: float = setting(1e-6, number(0), "lowest learning rate of the schedule (at most lr)")
    decay_epochs: int = setting(2, integer(1), "step scheduler period in epochs")
    decay_rate: float = setting(0.5, number(above=0, below=1), "step / plateau factor")
    loss: str = setting("ce", choice(*LOSSES), "cross-entropy, focal loss, or soft macro F1")
    label_smoothing: float = setting(0.0, number(0, below=1), "label smoothing of the targets (every loss)")
    focal_gamma: float = setting(2.0, number(0), "gamma of the focal loss")
    class_weights: Any = setting(None, CLASS_WEIGHTS, f"null | balanced | list of {N_CLASSES} floats: loss weight per class")
    augment: dict = setting(dict(AUGMENT_DEFAULTS), section(AUGMENT_RULES, AUGMENT_DEFAULTS),
                            "albumentations probabilities per transform (augment.<name>; docs/training.md)")
    tta: str = setting("hflip", choice(*TTAS), "ttach test-time augmentation of OOF and test predictions")
    ema: bool = setting(False, boolean(), "keep an exponential moving average of the weights (timm ModelEmaV3)")
    ema_decay: float = setting(0.998, number(0, below=1), "decay of the weight EMA")
    early_stopping: int = setting(0, integer(0), "patience in epochs on validation macro F1; 0 = off")
    amp: str = setting("auto", choice("auto", "bf16", "fp16", "off"), "mixed precision: auto | bf16 | fp16 | off (CUDA only; off on CPU)")
    channels_last: str = setting("auto", choice("auto", "on", "off"), "memory format: auto (= on, CUDA and CPU) | on | off")
    device: str = setting("auto", DEVICE, "auto | cpu | cuda | cuda:N")
    num_workers: Any = setting("auto", auto_or_integer(0), "DataLoader workers: auto | int")
    threads: Any = setting("auto", auto_or_integer(1), "torch intra-op threads: auto | int")
    eval_batch_size: int = setting(128, integer(1), "inputs per inference forward pass, TTA views included")
    seed: int = setting(42, integer(0, 2**32 - 1), "seed of weights init, shuffling and augmentation")
    # task heads and age (docs/training.md "Task heads and age in years"; kfold/heads.py)
    heads: str = setting("joint", choice("joint", "tasks"),
                         f"joint (one {N_CLASSES}-class classifier) | tasks (mask/gender/age heads, one backbone)")
    task: str = setting("all", choice("all", "mask", "gender", "age"), "all | mask | gender | age (a single-task run; heads: tasks)")
    age_head: str = setting("band", choice("band", "years"),
                            "band (3-class) | years (Gaussian regression on the age in years; heads: tasks)")
    task_weights: dict = setting(dict(TASK_WEIGHT_DEFAULTS), section({t: number(0) for t in TASK_WEIGHT_DEFAULTS}, TASK_WEIGHT_DEFAULTS),
                                 "loss weight per task (heads: tasks)")
    train_age_cuts: Any = setting(None, TRAIN_AGE_CUTS,
                                  "null (= --age-cuts, the scoring cuts) | [young_upper, old_lower] for training targets")
    # mixing augmentations (timm Mixup/CutMix, soft targets) and pseudo-labels; docs/training.md
    mixup_alpha: float = setting(0.0, number(0), "Beta(a, a) of MixUp; 0 = off")
    cutmix_alpha: float = setting(0.0, number(0), "Beta(a, a) of CutMix; 0 = off")
    cutmix_region: str = setting("box", choice(*CUTMIX_REGIONS),
                                 "box (timm: random rectangle) | left_right | top_bottom (split along a line)")
    mix_prob: float = setting(1.0, probability(), "probability that a batch is mixed (when an alpha > 0)")
    mix_switch_prob: float = setting(0.5, probability(), "CutMix instead of MixUp when both alphas > 0")
    mix_mode: str = setting("batch", choice(*MIX_MODES), "timm Mixup mode: batch | pair | elem (left_right/top_bottom: batch only)")
    pseudo: Any = setting(None, PSEUDO, "null | run or ensemble folder (or its test.csv) whose confident test rows join training")
    pseudo_threshold: float = setting(0.9, number(above=0, hi=1), "minimum top-class probability of a pseudo-labelled test image")
    track: bool = setting(False, boolean(), "log to MLflow (pip install -e '.[track]'; docs/tracking.md); also --track, KF_TRACK=1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: each field's rule, read by :func:`validate` (declared with the field: :func:`setting`)
RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in dataclasses.fields(TrainConfig) if "rule" in f.metadata}

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
            raise LookupError(f"TrainConfig.{k} has no rule: declare it with kfold.config.setting(default, rule, help)")
        try:
            setattr(cfg, k, RULES[k].check(getattr(cfg, k)))
        except SubkeyError as e:  # augment is set per sub-key (augment.hflip), other sections as a whole
            raise (bad(f"{k}.{e.key}", str(e)) if k == "augment" else bad(k, f"{e.key}: {e}")) from None
        except ValueError as e:
            raise bad(k, str(e)) from None
    if cfg.heads == "joint" and (cfg.task != "all" or cfg.age_head != "band"):
        raise bad("task" if cfg.task != "all" else "age_head", "needs heads: tasks (a head per task)")
    if cfg.heads == "tasks" and isinstance(cfg.class_weights, list):
        raise bad("class_weights", f"{N_CLASSES} class weights do not apply to task heads; use null or balanced (per task)")
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


def settings_markdown() -> str:
    """The settings reference (docs/settings.md): one table row per :class:`TrainConfig` field.

    Columns: the key, its default (as YAML), what its rule accepts, its help.
    ``python -m kfold.config > docs/settings.md`` rewrites the file;
    tests/test_settings.py checks that the file matches.
    """
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<", "&lt;")

    lines = ["# Settings of a run (`configs/*.yaml`, `kf train --set key=value`)", "",
             "Written by `python -m kfold.config > docs/settings.md` from the fields of `kfold.config.TrainConfig`;",
             "do not edit by hand. Rules that join two settings (`min_lr` <= `lr`, `task` and `age_head` need",
             "`heads: tasks`, ...) and the order of the checks: docs/reliability.md.", "",
             "| key | default | accepts | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = yaml.safe_dump(default, default_flow_style=True, sort_keys=False, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"| `{f.name}` | `{cell(shown)}` | {cell(f.metadata['rule'].text)} | {cell(f.metadata['help'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
