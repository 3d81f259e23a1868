"""Errors and atomic file writes shared by every kf stage.

Every file kf writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the destination folder, are flushed and fsync'ed, and the
temporary file is renamed over the destination (``os.replace`` is atomic on
POSIX and Windows). A process killed mid-write leaves either the old file or
the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def crash_point(name: str) -> None:
    """Fault injection for the kill tests: SIGKILL this process at the point ``name``.

    Set ``KF_CRASH_AT=<name>`` (optionally ``<name>#<n>`` for the n-th time the
    point is reached, counting from 1) to kill the process there, as a power
    cut or an OOM kill would. Does nothing when the variable is unset.
    For tests of several processes (Ray workers, whose retries see the same
    variables): ``KF_CRASH_ONCE=<file>`` fires only in the first process that
    creates ``<file>`` (it writes its pid there); ``KF_CRASH_MODE=pause`` waits
    there instead of dying, while ``<file>`` exists (at most 10 minutes), so
    that a test can kill the process or remove its node from outside.
    """
    want = os.environ.get("KF_CRASH_AT")
    if not want:
        return
    point, _, nth = want.partition("#")
    if point != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if _CRASH_COUNTS[name] != int(nth or 1):
        return
    once = os.environ.get("KF_CRASH_ONCE")
    if once:
        try:
            fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # another process fired already
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
    if os.environ.get("KF_CRASH_MODE") == "pause":
        import time

        end = time.monotonic() + 600
        while time.monotonic() < end and (not once or os.path.exists(once)):
            time.sleep(0.1)
        return
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


_CRASH_COUNTS: dict[str, int] = {}
_UMASK = os.umask(0)
os.umask(_UMASK)


class KfError(Exception):
    """A user-facing error: the CLI prints ``error: <message>`` on one line and exits 2.

    Raise it for bad input (name the file and the row or field) and for
    states the user can fix; let programming errors raise as usual.
    """


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, overwrite: bool = True) -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path`` and rename it over ``path`` on success.

    Args:
        path: destination file. Its folder must exist.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
        overwrite: when False and ``path`` exists, raise instead of replacing it.

    Raises:
        KfError: the folder is missing, ``path`` is a directory, or it exists
            and ``overwrite`` is False. Nothing is written in these cases.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            crash_point(f"write:{path.name}")  # the bytes are in the temporary file, not yet renamed
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Raise :class:`KfError` when ``path`` cannot be written as a file (see :func:`atomic_write`)."""
    path = Path(path)
    if path.is_dir():
        raise KfError(f"{path}: is a directory, expected a file path")
    if not path.parent.is_dir():
        raise KfError(f"{path}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise KfError(f"{path}: already exists (pass --overwrite to replace it)")


def write_csv(df: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = True, float_format: str | None = None) -> None:
    """Write ``df`` as CSV (no index) atomically."""
    with atomic_write(path, overwrite=overwrite) as fh:
        df.to_csv(fh, index=False, float_format=float_format, lineterminator="\n")


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; raise :class:`KfError` naming the file when it is missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KfError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise KfError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def read_csv(path: str | os.PathLike, *, required: list[str] | None = None, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV (BOM and CRLF tolerated) and check that ``required`` columns exist.

    Raises:
        KfError: the file is missing, empty, unparsable, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise KfError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", **kwargs)
    except pd.errors.EmptyDataError:
        raise KfError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise KfError(f"{path}: cannot parse CSV: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in (required or []) if c not in df.columns]
    if missing:
        raise KfError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns)})")
    return df
