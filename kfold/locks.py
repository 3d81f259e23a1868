"""Locks on stage files: :func:`stage_lock` serialises read-check-write steps on shared stage files across processes (``filelock``)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from .io import os_error


@contextlib.contextmanager
def stage_lock(path: str | os.PathLike, echo: Any = None) -> Iterator[None]:
    """Hold an exclusive lock on the stage file or folder ``path`` (``filelock.FileLock``) for a read-check-write.

    The lock file is ``.<name>.lock`` beside ``path`` (its folder is created
    when missing). A second holder, in this or another process, waits until
    the first releases it, so concurrent commands behave as if run one after
    the other; ``echo`` (a ``print``-like callable, e.g. ``click.echo``) is
    told once when the call has to wait. The lock is released when the block
    ends or the process dies (``flock``: the kernel drops it with the process).
    On file systems without ``flock`` filelock falls back to an exclusive
    create of the lock file (see ``docs/reliability.md``).

    Raises:
        KfError: the lock file cannot be created (read-only folder, no permission).
    """
    import filelock

    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if echo is not None:
                echo(f"waiting: {path} is being written by another kf call (lock {lock_path})")
            lock.acquire()
    except OSError as e:
        raise os_error(lock_path, e, "cannot lock") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def stage_locks(paths: Iterable[str | os.PathLike], echo: Any = None) -> Iterator[None]:
    """Hold :func:`stage_lock` on each of ``paths``, taken in sorted order (two callers never deadlock)."""
    with contextlib.ExitStack() as stack:
        for p in sorted({str(p) for p in paths}):
            stack.enter_context(stage_lock(p, echo))
        yield
