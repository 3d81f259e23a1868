"""The one image decoder of kf, and the one definition of "an image kf reads".

Training (the image cache), prediction (``kf predict``), the cache
fingerprint and ``kf eda`` all go through this module, so a file gives the
same pixels whichever command reads it:

* **Which files**: a name ending (any case) in one of :data:`IMAGE_EXTENSIONS`;
  hidden names (``.``-prefixed: macOS ``._*``, ``.DS_Store``) never.
* **Orientation**: the EXIF ``Orientation`` tag is applied
  (``PIL.ImageOps.exif_transpose``), so a phone JPEG stored sideways with
  Orientation 6 is read upright, as every viewer shows it.
* **Modes** (PIL modes, see docs/data.md): ``RGB``, ``RGBA``, ``RGBX``, ``L``,
  ``LA``, ``1``, ``P``, ``PA``, ``CMYK``, ``YCbCr`` go through
  ``Image.convert("RGB")`` (alpha is dropped, the colour channels kept);
  16-bit grey (``I;16``, ``I;16B``, ``I;16L``, and ``I`` read from a 16-bit
  PNG or TIFF) is scaled to 8 bits, ``round(v / 257)``, and copied into the
  three channels; 16-bit RGB(A) PNG/TIFF are read by Pillow as 8-bit
  ``RGB``/``RGBA`` (the high byte). ``F`` (32-bit float) and 32-bit ``I``
  have no agreed range and are refused with one line naming file and mode.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .io import KfError

#: file name endings (compared in lower case) of the images kf reads, everywhere
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: changes whenever the decoder gives other pixels for the same file; part of the image cache's name
DECODER_VERSION = 2
#: PIL modes holding 16-bit unsigned grey values
_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N")
#: PIL's errors for damaged or unsupported files
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def extensions_text() -> str:
    """``.jpg, .jpeg, ..., .tif or .tiff``: the extensions for messages."""
    return ", ".join(IMAGE_EXTENSIONS[:-1]) + f" or {IMAGE_EXTENSIONS[-1]}"


def is_image_name(name: str | Path) -> bool:
    """True when kf reads a file of this name: not hidden, extension in :data:`IMAGE_EXTENSIONS` (any case)."""
    name = Path(name).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """The images kf reads directly in ``folder`` (name order) and the other non-hidden entries it skips.

    Returns:
        ``(images, skipped)``: two sorted lists of paths; hidden entries are in neither.
    """
    images, skipped = [], []
    for p in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        (images if p.is_file() and is_image_name(p) else skipped).append(p)
    return images, skipped


def _bits(im: Image.Image) -> int | None:
    """Bits per sample of a mode-``I`` image from its file: 16 for a 16-bit PNG or TIFF, else None (unknown)."""
    if im.format == "PNG":
        return 16
    tag = getattr(im, "tag_v2", None)
    if tag is not None:
        bits = tag.get(258)
        bits = bits[0] if isinstance(bits, tuple) else bits
        return int(bits) if bits else None
    return None


def mode_problem(im: Image.Image) -> str | None:
    """Why kf refuses an opened image's mode, or None when it reads it."""
    if im.mode == "F":
        return "mode F (32-bit float) has no agreed range; save the image as 8- or 16-bit"
    if im.mode in ("I", "I;32", "I;32B", "I;32L") and _bits(im) != 16:
        return f"mode {im.mode} ({_bits(im) or 32}-bit integer) has no agreed range; save the image as 8- or 16-bit"
    return None


def orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag (1..8; 1 when absent or unreadable)."""
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the image as stored, in every command alike
        return 1
    return o if 1 <= o <= 8 else 1


def upright(im: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose(im)``: the image as viewers show it (or ``im`` when its EXIF is damaged)."""
    if orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - see orientation()
        return im


def to_rgb(im: Image.Image, path: str | Path) -> np.ndarray:
    """Pixels of an opened, upright image as RGB uint8 ``(height, width, 3)`` (see the module docstring).

    Raises:
        KfError: a refused mode (``F``, 32-bit ``I``) or one PIL cannot convert, naming file and mode.
    """
    problem = mode_problem(im)
    if problem:
        raise KfError(f"{path}: {problem}")
    if im.mode in _GREY16 or im.mode.startswith("I"):
        grey = np.asarray(im).astype(np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    try:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # PIL's advice for palette transparency; the alpha is dropped next
        return np.asarray(im.convert("RGB"))
    except ValueError:
        raise KfError(f"{path}: cannot convert image mode {im.mode} to RGB") from None


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to upright RGB uint8 ``(height, width, 3)``, optionally resized to ``size = (height, width)``.

    The one decoder of kf (training, prediction, EDA): EXIF orientation
    applied, every mode mapped to 8-bit RGB as the module docstring says.
    Resizing uses OpenCV's area interpolation when shrinking and bilinear
    when enlarging.

    Raises:
        KfError: the file is missing, truncated, corrupt, not an image, or
            of a refused mode (the message names the file and the mode).
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(upright(im), path)
    except FileNotFoundError:
        raise KfError(f"{path}: image not found") from None
    except DECODE_ERRORS as e:
        raise KfError(f"{path}: cannot decode image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if size is not None and rgb.shape[:2] != tuple(size):
        h, w = size
        interp = cv2.INTER_AREA if h * w < rgb.shape[0] * rgb.shape[1] else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (w, h), interpolation=interp)
    return rgb


def image_info(path: str | Path) -> tuple[int, int, str, str | None]:
    """``(width, height, mode, problem)`` from the file header, as :func:`load_image` will read it.

    Width and height are the upright ones (swapped for EXIF orientations
    5..8); ``mode`` is PIL's; ``problem`` is None, or why :func:`load_image`
    will refuse the file (``mode`` is then ``unreadable`` when PIL cannot
    read the header). Pixels are not decoded.
    """
    try:
        with Image.open(path) as im:
            (w, h), mode = im.size, im.mode
            if orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            return w, h, mode, mode_problem(im)
    except DECODE_ERRORS as e:
        return -1, -1, "unreadable", str(e).splitlines()[0] if str(e) else type(e).__name__

