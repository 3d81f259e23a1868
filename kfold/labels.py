"""The 18-class label of the face-mask competition and its three tasks.

``class = mask * 6 + gender * 3 + age_band`` where

* mask: wear = 0 (``mask1``..``mask5``), incorrect = 1 (``incorrect_mask``), not wear = 2 (``normal``)
* gender: male = 0, female = 1
* age_band: ``age < cuts[0]`` = 0, ``cuts[0] <= age < cuts[1]`` = 1, ``age >= cuts[1]`` = 2

The default cuts are (30, 60), the competition's; many top teams trained with
(30, 58) to pull borderline 58-59 year olds into the rare oldest band.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

N_CLASSES = 18
MASK_NAMES = ("wear", "incorrect", "not wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")
DEFAULT_AGE_CUTS = (30, 60)

#: image stem in a person folder -> mask code
MASK_OF_STEM = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
IMAGE_STEMS = tuple(MASK_OF_STEM)
GENDER_CODE = {"male": 0, "female": 1}


def encode(mask: np.ndarray | int, gender: np.ndarray | int, age_band: np.ndarray | int) -> np.ndarray | int:
    """Combine task codes into the 18-class label (works on scalars or int arrays)."""
    return mask * 6 + gender * 3 + age_band


def decode(label: np.ndarray | int) -> tuple:
    """Split 18-class labels into ``(mask, gender, age_band)``; inverse of :func:`encode`.

    Raises:
        ValueError: a label is outside 0..17.
    """
    arr = np.asarray(label)
    if arr.size and (arr.min() < 0 or arr.max() >= N_CLASSES):
        raise ValueError(f"labels must be in 0..{N_CLASSES - 1}")
    return arr // 6, (arr // 3) % 2, arr % 3


def age_band(age: np.ndarray | float, cuts: Sequence[float] = DEFAULT_AGE_CUTS) -> np.ndarray:
    """Age in years -> band 0/1/2 with ``cuts = (young_upper, old_lower)``.

    Raises:
        ValueError: cuts are not two increasing numbers.
    """
    cuts = tuple(cuts)
    if len(cuts) != 2 or not cuts[0] < cuts[1]:
        raise ValueError(f"age cuts must be two increasing numbers, got {cuts}")
    return np.digitize(np.asarray(age, dtype=float), cuts).astype(np.int64)


def class_names() -> list[str]:
    """Readable names of the 18 classes, e.g. ``'wear/female/30-59'`` for class 4."""
    return class_labels(DEFAULT_AGE_CUTS)


def band_names(cuts: Sequence[float] = DEFAULT_AGE_CUTS) -> tuple[str, str, str]:
    """Readable age-band names for ``cuts = (a, b)``: ``('<30', '30-59', '>=60')`` for (30, 60).

    Raises:
        ValueError: cuts are not two increasing numbers.
    """
    a, b = (float(c) for c in cuts)
    if not a < b:
        raise ValueError(f"age cuts must be two increasing numbers, got {tuple(cuts)}")
    mid = f"{a:g}-{b - 1:g}" if a.is_integer() and b.is_integer() else f"{a:g}-<{b:g}"
    return f"<{a:g}", mid, f">={b:g}"


def class_labels(cuts: Sequence[float] = DEFAULT_AGE_CUTS) -> list[str]:
    """The class names with the age bands of ``cuts``, e.g. ``'wear/female/30-57'`` for class 4 at (30, 58).

    Equals :func:`class_names` for the default cuts.
    """
    ages = band_names(cuts)
    return [f"{MASK_NAMES[c // 6]}/{GENDER_NAMES[(c // 3) % 2]}/{ages[c % 3]}" for c in range(N_CLASSES)]
