"""Synthetic competition data in exactly the face-mask competition layout (``kf make-data``).

Each person is a drawn face whose pixels carry all three tasks:

* mask: a coloured mask over nose and mouth (wear), pulled below the nose
  (incorrect) or absent (normal);
* gender: long hair reaching the shoulders and red lips (female) versus short
  hair and a jaw shadow (male);
* age: hair greys and wrinkle lines appear continuously with age, so moving
  the age cut from 60 to 58 changes what is learnable, as on the real data.

Position, scale, skin and background vary per image, so a model must learn
the cues rather than pixel positions. The quirks of the real data are
reproduced: mixed ``.jpg``/``.jpeg``/``.png`` (some RGBA, some grayscale),
``._*`` junk, ``.ipynb_checkpoints/`` folders, repeated ids with different
paths (``001498-1``). Optional label noise flips the gender of some people in
train.csv and swaps ``normal``/``incorrect_mask`` files; what was injected is
written as ``noise.csv``, in the label-corrections format, so that applying
it restores the truth. ``gt.csv`` (``ImageID,ans``) holds the eval answers for
local scoring; it is not part of the competition layout.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from . import labels as L
from .io import KfError, ParamError, write_csv

RACES = ("White", "Black", "Asian", "Indian", "Other")
SKIN = {"White": (232, 196, 170), "Black": (120, 80, 55), "Asian": (225, 190, 150),
        "Indian": (180, 130, 95), "Other": (200, 160, 125)}
MASK_COLOURS = ((70, 130, 220), (30, 30, 30), (235, 235, 240), (200, 40, 50), (90, 160, 110))


def _age(rng: np.random.Generator) -> int:
    # roughly the competition's bands: ~47% <30, ~46% 30-59, ~7% >=60
    u = rng.random()
    if u < 0.47:
        return int(rng.integers(18, 30))
    if u < 0.93:
        return int(rng.integers(30, 60))
    return int(rng.integers(60, 81))


def draw_face(rng: np.random.Generator, size: tuple[int, int], gender: int, age: float, race: str,
              mask: int, mask_colour: tuple[int, int, int]) -> Image.Image:
    """Draw one face, RGB, ``size = (width, height)`` pixels.

    Args:
        gender: 0 male, 1 female. age: years. mask: 0 wear, 1 incorrect, 2 none.
    """
    w, h = size
    bg = tuple(int(v) for v in rng.integers(60, 200, 3))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    s = w / 96.0 * rng.uniform(0.9, 1.1)
    cx, cy = w / 2 + rng.uniform(-0.06, 0.06) * w, h * 0.48 + rng.uniform(-0.05, 0.05) * h
    fw, fh = 30 * s, 40 * s
    grey = float(np.clip((age - 25) / 45 + rng.normal(0, 0.08), 0, 1))
    hair = tuple(int(c * (1 - grey) + 235 * grey) for c in (60, 40, 25))
    if gender == 1:  # long hair behind the face, down to the shoulders
        d.rounded_rectangle([cx - fw * 1.25, cy - fh * 1.15, cx + fw * 1.25, cy + fh * 1.35], radius=int(12 * s), fill=hair)
    skin = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in SKIN[race])
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    d.chord([cx - fw, cy - fh * 1.05, cx + fw, cy - fh * (0.05 if gender else 0.25)], 180, 360, fill=hair)
    for ex in (-1, 1):  # eyes
        d.ellipse([cx + ex * 11 * s - 4 * s, cy - 8 * s - 2.5 * s, cx + ex * 11 * s + 4 * s, cy - 8 * s + 2.5 * s], fill=(30, 30, 30))
    n_wrinkles = int(np.clip((age - 30) / 10 + rng.normal(0, 0.4), 0, 5))
    for k in range(n_wrinkles):  # forehead lines
        y = cy - fh * 0.55 + k * 3 * s
        d.line([cx - 12 * s, y, cx + 12 * s, y], fill=tuple(int(c * 0.6) for c in skin), width=max(1, int(s)))
    d.line([cx, cy - 4 * s, cx - 3 * s, cy + 6 * s], fill=tuple(int(c * 0.7) for c in skin), width=max(1, int(1.5 * s)))  # nose
    lips = (200, 30, 60) if gender == 1 else tuple(int(c * 0.75) for c in skin)
    d.rectangle([cx - 8 * s, cy + 14 * s, cx + 8 * s, cy + 18 * s], fill=lips)
    if gender == 0:  # jaw shadow
        d.chord([cx - fw * 0.8, cy + fh * 0.3, cx + fw * 0.8, cy + fh], 0, 180, fill=tuple(int(c * 0.8) for c in skin))
    if mask != 2:
        top = cy - 2 * s if mask == 0 else cy + 10 * s  # incorrect: below the nose
        d.rounded_rectangle([cx - fw * 0.9, top, cx + fw * 0.9, top + 24 * s], radius=int(5 * s), fill=mask_colour)
        d.line([cx - fw * 0.9, top + 4 * s, cx - fw * 1.05, cy - 10 * s], fill=(220, 220, 220), width=max(1, int(s)))
    arr = np.asarray(im, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _save(im: Image.Image, path: Path, ext: str, rng: np.random.Generator) -> str:
    name = path.name + ext
    if ext == ".png":
        u = rng.random()
        if u < 0.3:
            im = im.convert("RGBA")
        elif u < 0.4:
            im = im.convert("L")
        im.save(path.with_name(name))
    else:
        im.save(path.with_name(name), quality=90)
    return name


def make_data(out: str | Path, people: int = 60, eval_people: int = 20, size: tuple[int, int] = (96, 128),
              seed: int = 0, noise: float = 0.0, quirks: bool = True) -> dict:
    """Write a synthetic competition folder (see the module docstring).

    Args:
        out: new or empty folder; ``train/``, ``eval/``, ``gt.csv`` and (with
            noise) ``noise.csv`` are written into it.
        people: train people (7 images each); eval_people: eval people.
        size: ``(width, height)`` of each image in pixels (competition: 384x512).
        seed: everything is a function of it.
        noise: fraction of train people whose gender is flipped in train.csv,
            and (separately) whose normal/incorrect_mask files are swapped.
        quirks: add the real data's quirks (mixed formats, junk, repeated ids).

    Returns:
        counts: ``{"people", "train_images", "eval_images", "noisy_people"}``.

    Raises:
        KfError: ``out`` exists and is not empty, or a size is not positive.
    """
    out = Path(out)
    if people < 1 or eval_people < 1 or min(size) < 16:
        raise ParamError("make-data: need {people} >= 1, {eval_people} >= 1 and a size of at least 16x16", "people", "eval_people")
    if not 0 <= noise <= 1:
        raise ParamError(f"make-data: {{noise}} {noise} must be a fraction in 0..1", "noise")
    if out.exists() and not out.is_dir():
        raise KfError(f"{out}: is a file, expected a new or empty folder")
    if out.exists() and any(out.iterdir()):
        raise KfError(f"{out}: folder exists and is not empty")
    rng = np.random.default_rng(seed)
    (out / "train" / "images").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "images").mkdir(parents=True, exist_ok=True)
    rows, noise_rows = [], []
    next_id = 1
    for p in range(people):
        gender = int(rng.random() < 0.61)
        age, race = _age(rng), RACES[int(rng.integers(len(RACES)))]
        if quirks and p > 0 and rng.random() < 0.03:
            pid = f"{rows[-1][0].split('-')[0]}-1"  # the same id again, another person
        else:
            pid = f"{next_id:06d}"
            next_id += int(rng.integers(1, 4))
        csv_gender = gender
        if noise > 0 and rng.random() < noise:
            csv_gender = 1 - gender
            noise_rows.append((None, "gender", L.GENDER_NAMES[gender]))
        path = f"{pid}_{L.GENDER_NAMES[csv_gender]}_{race}_{age}"
        if noise_rows and noise_rows[-1][0] is None:
            noise_rows[-1] = (path, *noise_rows[-1][1:])
        swap = noise > 0 and rng.random() < noise
        if swap:
            noise_rows.append((path, "mask-swap", "incorrect_mask:normal"))
        folder = out / "train" / "images" / path
        folder.mkdir()
        colour = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
        for stem in L.IMAGE_STEMS:
            m = L.MASK_OF_STEM[stem]
            drawn = {1: 2, 2: 1}.get(m, m) if swap else m
            ext = ".jpg"
            if quirks:
                ext = rng.choice([".jpg", ".jpeg", ".png", ".JPG"], p=[0.85, 0.05, 0.07, 0.03])
            _save(draw_face(rng, size, gender, age, race, drawn, colour), folder / stem, str(ext), rng)
        if quirks and rng.random() < 0.05:
            (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07junk")
        if quirks and rng.random() < 0.03:
            (folder / ".ipynb_checkpoints").mkdir()
            (folder / ".ipynb_checkpoints" / "mask1-checkpoint.jpg").write_bytes(b"junk")
        rows.append((pid, L.GENDER_NAMES[csv_gender], race, str(age), path))
    write_csv(pd.DataFrame(rows, columns=["id", "gender", "race", "age", "path"]), out / "train" / "train.csv")
    if noise_rows:
        write_csv(pd.DataFrame(noise_rows, columns=["path", "field", "value"]), out / "noise.csv")
    info = []
    for p in range(eval_people):
        gender, age, race = int(rng.random() < 0.61), _age(rng), RACES[int(rng.integers(len(RACES)))]
        colour = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
        for stem in L.IMAGE_STEMS:
            m = L.MASK_OF_STEM[stem]
            image_id = hashlib.sha1(f"{seed}/{p}/{stem}".encode()).hexdigest() + ".jpg"
            draw_face(rng, size, gender, age, race, m, colour).save(out / "eval" / "images" / image_id, quality=90)
            info.append((image_id, int(L.encode(m, gender, int(L.age_band(age))))))
    order = rng.permutation(len(info))
    info = [info[i] for i in order]
    write_csv(pd.DataFrame({"ImageID": [i for i, _ in info], "ans": 0}), out / "eval" / "info.csv")
    write_csv(pd.DataFrame(info, columns=["ImageID", "ans"]), out / "gt.csv")
    return {"people": people, "train_images": people * 7, "eval_images": eval_people * 7,
            "noisy_people": len({r[0] for r in noise_rows})}
