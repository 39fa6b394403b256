"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: errors of the disk rather than of one input: a batch job stops at the first (the next
#: item would fail the same way) instead of recording one failure per item
DISK_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large for the file system",
}


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a full, read-only or over-quota disk (:data:`DISK_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def current_umask() -> int:
    """The process's file-creation mask, read without changing it where the OS allows."""
    try:  # Linux: no window in which another thread would create files with umask 0
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask (``0o644`` under 022)."""
    return 0o666 & ~current_umask()


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode of a new file under the umask.

    For files written by libraries that create them ``0600`` (safetensors, ``mkstemp``) before
    they are renamed into place.
    """
    if os.name == "posix":
        os.chmod(path, default_file_mode())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and a rename.

    The file gets the mode of any new file under the user's umask (``mkstemp`` alone would
    leave it ``0600``, unreadable to lab mates sharing the folder).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows has no modes to fix
            os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staging_dir(final: Path) -> Path:
    """A fresh sibling folder to build ``final`` in, named so it is never mistaken for output."""
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished staging folder into place, replacing any previous ``final``.

    Two renames: the old folder is moved aside first, so at every moment ``final`` is either the
    complete old output or the complete new one.
    """
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(parent: Path, name: str) -> None:
    """Remove staging and moved-aside folders left by killed runs for output ``name``."""
    if not parent.is_dir():
        return
    for p in parent.glob(f".{name}.partial-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in parent.glob(f".{name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _is_within(path: Path, other: Path) -> bool:
    """Whether ``path`` equals ``other`` or lies inside it (both resolved)."""
    return path == other or other in path.parents


def check_output_location(
    out: str | os.PathLike,
    *,
    inputs: tuple[str | os.PathLike, ...] | list[str | os.PathLike] = (),
    option: str = "--out",
) -> Path:
    """Refuse an output folder whose replacement would destroy something that is not ours.

    An output may not be a regular file, the current folder or one of its parents (the home
    folder and ``/`` included), nor equal, contain or lie inside one of ``inputs``.

    Returns
    -------
    Path
        ``out`` resolved.

    Raises
    ------
    ConfigError
        Naming ``option``, the path and what to do instead.
    """
    from histoxmodal.errors import ConfigError

    given = Path(out)
    res = given.expanduser().resolve()
    if res.exists() and not res.is_dir():
        raise ConfigError(
            f"{option} {given} is an existing file, not a folder; choose a new folder for the "
            f"output (nothing was written)"
        )
    cwd = Path.cwd().resolve()
    if _is_within(cwd, res) or res == Path.home().resolve():
        raise ConfigError(
            f"{option} {given} is the current folder, the home folder or one of their parents; "
            f"choose a new folder such as {option} {given / 'export'} (nothing was written)"
        )
    for inp in inputs:
        src = Path(inp).expanduser().resolve()
        if _is_within(res, src) or _is_within(src, res):
            raise ConfigError(
                f"{option} {given} equals, contains or lies inside the input {inp}; write the "
                f"output to a separate folder (nothing was written)"
            )
    return res


def check_replaceable(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    is_ours: Callable[[Path], bool],
    kind: str,
    option: str = "--out",
) -> bool:
    """Decide whether ``out`` may be written, before anything is.

    ``out`` that does not exist, or an empty folder, may always be written. A non-empty folder
    needs ``overwrite``, and even then only when ``is_ours(out)`` says it is an earlier output of
    the same ``kind`` (a store or folder with its own manifest): ``--overwrite`` never deletes a
    folder it did not write.

    Returns
    -------
    bool
        Whether ``out`` holds an earlier output that will be replaced.
    """
    from histoxmodal.errors import ConfigError

    p = Path(out)
    if not p.exists() or (p.is_dir() and not any(p.iterdir())):
        return False
    if not is_ours(p):
        raise ConfigError(
            f"{option} {p} is a non-empty folder that is not {kind}; histoxmodal replaces only "
            f"its own earlier output. Choose a new {option}, or empty that folder yourself"
        )
    if not overwrite:
        raise ConfigError(
            f"{option} {p} holds an earlier {kind}; pass --overwrite (overwrite=True) to replace "
            f"it, or choose another {option}"
        )
    return True


@contextmanager
def output_lock(out: str | os.PathLike, *, what: str = "--out") -> Iterator[None]:
    """Hold the lock of output ``out`` (a hidden ``.NAME.lock`` beside it) while writing it.

    A second process writing the same output is refused at once instead of removing the first
    one's staging folder. The kernel releases the lock when the process dies.

    Raises
    ------
    ConfigError
        Another process holds the lock.
    """
    from filelock import FileLock, Timeout

    from histoxmodal.errors import ConfigError

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out.parent / f".{out.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{what} {out}: another histoxmodal process is writing it now (it holds "
            f"{lock.lock_file}); wait for it to finish, or choose another {what}"
        ) from None
    try:
        yield
    finally:
        lock.release()
