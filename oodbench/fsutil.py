"""Crash-safe file writes: a file under its final name is always complete.

Every writer here writes a temporary file in the target's directory (a hidden name unique to
the process, ``.<name>.<pid>-<random>.tmp``), flushes it to disk and renames it over the
target (``os.replace``, atomic on POSIX). A process killed mid-write leaves the previous file
untouched and at most one hidden temporary file beside it; never a 0-byte or half-written file
under the final name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from .errors import OodbenchError


def temp_name(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary sibling of ``path`` unique to this process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    For writers that take a file name (``fig.savefig(tmp, format=...)``, ``h5py.File(tmp, "w")``).
    """
    path = Path(path)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``.

    Raises:
        OodbenchError: the file cannot be written there (missing directory, a directory of that
            name, no permission, disk full); the previous file, if any, is unchanged.
    """
    path = Path(path)
    raw = data.encode(encoding) if isinstance(data, str) else data
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(raw)
    except OSError as exc:
        raise OodbenchError(
            f"Cannot write {path}: {exc.strerror or exc}: check that its directory exists and is writable."
        ) from None
    return path


def _fsync(path: Path) -> None:
    """Flush a written file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
