"""Decode and resize each image once into a uint8 cache shared by folds, epochs and backbones.

The cache for a list of images at one ``(height, width)`` is a ``.npy`` file
of shape ``(n_images, height, width, 3)``, dtype uint8, RGB, opened as a
read-only memory map (so DataLoader workers share the pages). Images are
decoded by :func:`kfold.images.load_image` (EXIF orientation applied, every
mode to 8-bit RGB). Its name is a ``joblib.hash`` of the image paths, their
sizes and modification times, the target size and the decoder version: a
changed image or decoder makes a new cache. It is built in parallel
with joblib and written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import joblib
import numpy as np

from .images import DECODER_VERSION, load_image
from .io import KfError, crash_point, os_error, remove_stale_temporaries, temporary_path

if TYPE_CHECKING:
    from .data import DataBundle

__all__ = ["build_cache", "cache_key", "limit_opencv_threads", "load_image", "remove_stale_temporaries"]


def limit_opencv_threads() -> int:
    """Run OpenCV single-threaded (``cv2.setNumThreads(1)``, process-wide); returns the previous thread count.

    Images are decoded and resized in parallel by joblib threads here and
    augmented by DataLoader workers or beside torch's threads in training;
    OpenCV's own thread pool on top of those only oversubscribes the cores.
    Called by :func:`build_cache`, which every training and prediction run
    calls before its first image (and before DataLoader workers start), never
    at import.
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return before


def _load_chunk(paths: Sequence[str], size: tuple[int, int], failed: threading.Event) -> np.ndarray | KfError | None:
    """The chunk's images stacked, or the :class:`KfError` of its first bad image (returned, not raised).

    Raising inside a joblib thread ends the build while other threads are
    still decoding, and the interpreter then aborts at exit ("terminate called
    without an active exception", status 134); returning the error lets every
    thread finish. After a failure, chunks not yet started return None.
    """
    if failed.is_set():
        return None
    try:
        return np.stack([load_image(p, size) for p in paths])
    except KfError as e:
        failed.set()
        return e


def cache_key(paths: Sequence[str | Path], size: tuple[int, int]) -> str:
    """``joblib.hash`` of the paths, each file's size and mtime, the target size and the decoder version.

    :data:`kfold.images.DECODER_VERSION` is part of it, so a cache decoded
    by an older decoder (e.g. before EXIF orientation was applied) is never reused.
    """
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise KfError(f"{p}: image not found") from None
        stats.append((st.st_size, st.st_mtime_ns))
    return joblib.hash([[str(p) for p in paths], stats, list(size), DECODER_VERSION])


def build_cache(paths: Sequence[str | Path], size: tuple[int, int], cache_dir: str | Path, n_jobs: int = -1,
                verbose: bool = False) -> np.ndarray:
    """Return the uint8 cache of ``paths`` at ``size = (height, width)``, building it when absent.

    Args:
        paths: image files, in the order of the returned rows.
        size: ``(height, width)`` in pixels.
        cache_dir: folder for the ``.npy`` files (created if needed).
        n_jobs: joblib workers for decoding (-1: all cores). OpenCV itself runs single-threaded
            from here on (:func:`limit_opencv_threads`).

    Returns:
        Read-only memory map, shape ``(len(paths), height, width, 3)``, uint8 RGB.

    Raises:
        KfError: an image cannot be read (naming the file); the cache cannot be
            written (``<cache file>: cannot write: <cause>``).
    """
    limit_opencv_threads()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_dir)
    size = (int(size[0]), int(size[1]))
    target = cache_dir / f"{size[0]}x{size[1]}_{len(paths)}_{cache_key(paths, size)[:16]}.npy"
    if not target.exists():
        tmp = temporary_path(target)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size[0], size[1], 3))
            chunk = 64
            starts = range(0, len(paths), chunk)
            failed = threading.Event()
            jobs = (joblib.delayed(_load_chunk)([str(p) for p in paths[s:s + chunk]], size, failed) for s in starts)
            workers = joblib.Parallel(n_jobs=n_jobs if len(paths) > 2 * chunk else 1, prefer="threads", return_as="generator")
            errors = []
            for s, arr in zip(starts, workers(jobs)):  # drained to the end: every thread has finished
                if isinstance(arr, np.ndarray):
                    out[s:s + len(arr)] = arr
                elif arr is not None:
                    errors.append(arr)
            if errors:
                raise errors[0]
            out.flush()
            del out
            fd = os.open(tmp, os.O_RDONLY)  # the .npy header was written outside the memory map
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            crash_point("write:cache")  # complete in the temporary file, not yet renamed
            os.replace(tmp, target)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):  # read-only folder, full disk: one line naming the cache file
                raise os_error(target, e) from None
            raise
    try:
        return np.load(target, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise KfError(f"{target}: damaged image cache ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                      "delete it and rerun") from None


def image_caches(data: DataBundle, size: tuple[int, int], oof_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``(train, test)`` uint8 image caches at ``size`` under ``<oof>/cache`` (built when absent)."""
    train = build_cache([data.root / p for p in data.folds["image"]], size, oof_dir / "cache")
    test = build_cache([data.root / p for p in data.test["image"]], size, oof_dir / "cache")
    return train, test


def holdout_cache(data: DataBundle, size: tuple[int, int], oof_dir: Path) -> np.ndarray | None:
    """The uint8 image cache of the holdout images at ``size`` (built when absent); None without a holdout."""
    if not data.has_holdout:
        return None
    return build_cache([data.root / p for p in data.holdout["image"]], size, oof_dir / "cache")
