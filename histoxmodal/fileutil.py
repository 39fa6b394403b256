"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
