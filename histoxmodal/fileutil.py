"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


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
