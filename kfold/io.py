"""Errors and atomic file writes shared by every kf stage.

Every file kf writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the destination folder, are flushed and fsync'ed, and the
temporary file is renamed over the destination (``os.replace`` is atomic on
POSIX and Windows). A process killed mid-write leaves either the old file or
the new one, never half of one; its temporary is removed by the next write
into that folder (:func:`remove_stale_temporaries`). A refused write (read-only,
full disk, no permission) is one :class:`KfError` line naming the target.
Locks on shared stage files are :mod:`kfold.locks`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
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


class KfError(Exception):
    """A user-facing error: the CLI prints ``error: <message>`` on one line and exits 2.

    Raise it for bad input (name the file and the row or field) and for
    states the user can fix; let programming errors raise as usual.
    """


class ParamError(KfError):
    """A :class:`KfError` about a function's parameter, worded with the parameter's name.

    ``template`` holds ``{<param>}`` for each parameter it names; the library
    message shows the bare name (``method 'x': unknown``), and a command line
    renders it with its flags (``--method 'x': unknown``). This is kf's one
    mechanism for errors about an argument (docs/architecture.md, "Errors that
    name a parameter"): library code never writes a CLI flag in a message; the
    ``kf`` group (``kf/cli.py``) renders every ParamError with
    :func:`kfold.options.command_flags` of the command that ran (each click
    parameter's name -> its flag, plus ``PARAM_ALIASES`` such as
    ``oof_dir`` -> ``--oof``), and a command whose library name differs from
    its own in one place wraps that call in :func:`kfold.options.flag_errors`.
    Name the parameter of the public function the caller passed (``holdout``
    of :func:`kfold.folds.ensure_folds`, ``overrides`` of
    :func:`kfold.config.load_config`).

    Args:
        template: the message, e.g. ``"{method} 'x': unknown, expected one of soft, geo"``.
        params: the parameter names ``template`` refers to.
    """

    def __init__(self, template: str, *params: str):
        self.template, self.params = template, params
        super().__init__(self.render({}))

    def render(self, flags: dict[str, str]) -> str:
        """The message with each ``{param}`` replaced by ``flags[param]``, or by the bare name."""
        out = self.template
        for p in self.params:
            out = out.replace("{" + p + "}", flags.get(p, p))
        return out

    def for_flags(self, flags: dict[str, str]) -> ParamError:
        """The error worded for a command line (``flags``: parameter -> ``--flag``); the parameters not in
        ``flags`` stay placeholders, for the ``kf`` group to render."""
        keep = {p: "{" + p + "}" for p in self.params if p not in flags}
        return ParamError(self.render({**flags, **keep}), *keep)


#: a temporary file of :func:`atomic_write`: ``.<name or its start>.<host tag>-<pid>-<random>.tmp``
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-z]{6}\.tmp$")
#: the image cache's older temporaries (kf <= 0.1): ``.<name>.<pid>.tmp``
_OLD_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _host_tag() -> str:
    """6 hex digits naming this machine in temporary names, so that a cleaner on another host of a
    shared file system never judges a temporary by a process id that is not its own."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


_HOST = _host_tag()


def _name_max(folder: Path) -> int:
    """The file system's limit on one name in ``folder``, in bytes (``pathconf PC_NAME_MAX``; 255 if unknown)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` for writing it atomically, never longer than the file system allows.

    The name is ``.<name>.<host>-<pid>-<random>.tmp``; when that would pass
    the folder's name limit (``PC_NAME_MAX``, 255 bytes on ext4, xfs, btrfs),
    ``<name>`` is cut (on a UTF-8 character boundary) so that it fits: a
    target whose name fits always has a temporary name that fits. The host
    and process id let :func:`remove_stale_temporaries` tell a killed
    writer's leftovers from a live writer's file.
    """
    import secrets

    path = Path(path)
    rand = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    tail = f".{_HOST}-{os.getpid()}-{rand}.tmp"
    budget = _name_max(path.parent) - 1 - len(tail.encode())
    name = os.fsencode(path.name)[:max(budget, 1)].decode("utf-8", errors="ignore") or "x"
    return path.parent / f".{name}{tail}"


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of atomic writes into ``folder`` whose writer process is gone.

    A writer killed between creating its temporary file and renaming it
    (SIGKILL, OOM, power cut) leaves ``.<name>.<host>-<pid>-<random>.tmp``
    behind (for a checkpoint, a whole ``last.pt``). The next write into the
    same folder removes it when the process ``pid`` no longer runs on this
    host (``os.kill(pid, 0)``). A temporary of a live process, of another
    user's process, or made on another host of a shared file system is left
    alone. The image cache's older ``.<name>.<pid>.tmp`` names are handled too.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if m is not None and m["host"] != _HOST:
            continue
        m = m or _OLD_TMP_RE.match(e.name)
        if m is None or int(m["pid"]) == os.getpid():
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(e.path)
                removed.append(folder / e.name)
        except (PermissionError, OverflowError, OSError):
            continue
    return removed


def os_error(path: str | os.PathLike, e: OSError, doing: str = "cannot write") -> KfError:
    """The one-line :class:`KfError` for an ``OSError`` met while writing ``path``: ``<path>: cannot write: <cause>``."""
    cause = e.strerror or str(e) or type(e).__name__
    return KfError(f"{path}: {doing}: {cause}" + (f" (errno {e.errno})" if e.errno else ""))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, overwrite: bool = True) -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path`` and rename it over ``path`` on success.

    The temporary name comes from :func:`temporary_path` (never longer than
    the file system allows when ``path``'s name fits), and stale temporaries
    of killed writers in the folder are removed first
    (:func:`remove_stale_temporaries`). With ``overwrite=False`` the file is
    put in place with ``os.link``, which fails when ``path`` appeared in the
    meantime: two writers cannot both create it.

    Args:
        path: destination file. Its folder must exist.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
        overwrite: when False and ``path`` exists, raise instead of replacing it.

    Raises:
        KfError: the folder is missing, ``path`` is a directory, or it exists
            and ``overwrite`` is False; the file system refuses the write (read-only,
            full, no permission, name too long), as ``<path>: cannot write: <cause>``.
            Nothing is written in these cases and the old file is kept.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    remove_stale_temporaries(path.parent)
    for _ in range(100):
        tmp = temporary_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise os_error(path, e) from None
    else:  # pragma: no cover - 100 collisions of 36**6 random names
        raise KfError(f"{path}: cannot write: no free temporary name")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            crash_point(f"write:{path.name}")  # the bytes are in the temporary file, not yet renamed
            os.fsync(fh.fileno())
        _put_in_place(tmp, path, overwrite)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, str(tmp), str(path)):
            raise os_error(path, e) from None
        raise


def _put_in_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``path``; without ``overwrite`` only when ``path`` does not exist (``os.link``)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ParamError(f"{path}: already exists (pass {{overwrite}} to replace it)", "overwrite") from None
    except OSError:  # a file system without hard links: the check of check_writable must do
        if path.exists():
            raise ParamError(f"{path}: already exists (pass {{overwrite}} to replace it)", "overwrite") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def check_writable(path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Raise :class:`KfError` when ``path`` cannot be written as a file (see :func:`atomic_write`)."""
    path = Path(path)
    if path.is_dir():
        raise KfError(f"{path}: is a directory, expected a file path")
    if not path.parent.is_dir():
        raise KfError(f"{path}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ParamError(f"{path}: already exists (pass {{overwrite}} to replace it)", "overwrite")


def check_can_write(path: str | os.PathLike, *, folder: bool = False, overwrite: bool = True) -> None:
    """Check, before a long computation, that its output can be written: by creating and removing a temporary.

    Args:
        path: the output file, or with ``folder=True`` the output folder; a
            missing folder is not created: its nearest existing parent is probed.
        overwrite: for a file: whether an existing ``path`` may be replaced.

    Raises:
        KfError: ``<path>: cannot write: <cause>`` (read-only file system, no
            permission, disk quota, name too long), or see :func:`check_writable`.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise KfError(f"{path}: exists and is not a folder")
        where = path.absolute()
        while not where.is_dir():
            if where.exists() or where.parent == where:
                raise KfError(f"{path}: cannot create the folder ({where} is not a folder)")
            where = where.parent
        probe = temporary_path(where / "probe")
    else:
        check_writable(path, overwrite=overwrite)
        probe = temporary_path(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"kf")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        raise os_error(path, e) from None


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
    """Read a CSV (UTF-8 with or without BOM, or UTF-16 with BOM; CRLF tolerated) and check that ``required`` columns exist.

    Raises:
        KfError: the file is missing, empty, unparsable, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise KfError(f"{path}: file not found")
    with open(path, "rb") as fh:
        head = fh.read(2)
    encoding = "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"  # Excel's "Unicode text" has a UTF-16 BOM
    try:
        df = pd.read_csv(path, encoding=encoding, **kwargs)
    except pd.errors.EmptyDataError:
        raise KfError(f"{path}: file is empty") from None
    except UnicodeDecodeError as e:
        raise KfError(f"{path}: cannot parse CSV: not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
                      "save it as CSV UTF-8") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise KfError(f"{path}: cannot parse CSV: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in (required or []) if c not in df.columns]
    if missing:
        sep = next((s for s in (";", "\t", "|") if len(df.columns) == 1 and s in df.columns[0]), None)
        hint = f"; the file is separated by {sep!r}, kf reads comma-separated CSV" if sep else ""
        raise KfError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns)}){hint}")
    return df
