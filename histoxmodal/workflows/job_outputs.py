"""Where a batch job's item goes on disk, and how it is published atomically.

Two layouts, one protocol (:class:`OutputLayout`):

- :class:`FolderOutput` (``tile``, ``predict``): ``OUT/<name>/`` with ``manifest.json`` inside;
  a failed item's folder holds the manifest (and ``error.log`` for an unexpected error) only;
- :class:`FileOutput` (``features``): ``OUT/<name><suffix>`` and its record ``OUT/<name>.json``
  beside it; a failed item writes its record only, and the traceback goes into it.

Both build the item in a staging folder named after the final output (``.NAME.partial-*``,
:func:`~histoxmodal.fileutil.staging_dir`) and rename it into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from histoxmodal import keys
from histoxmodal.fileutil import publish_dir, write_json_atomic


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable (a record that
    cannot be read marks no finished output)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def foreign_folder(final: Path, markers: tuple[str, ...]) -> str | None:
    """Why ``final`` (one item's output folder inside ``--out``) may not be replaced, or None.

    An existing non-empty folder holding none of the command's own files (``markers``: its
    manifest, its main outputs) was not written by it (a lab's own folder that happens to bear
    the slide's name): publishing over it would delete it.
    """
    if not final.exists():
        return None
    if not final.is_dir():
        return f"{final} is a file, not an output folder; move it or choose another --out"
    if any((final / m).is_file() for m in markers) or not any(final.iterdir()):
        return None
    return (
        f"{final} is a folder histoxmodal did not write (none of {', '.join(markers)}); it is "
        "left as it is: move it or choose another --out"
    )


class OutputLayout(Protocol):
    """Where an item's output and record live, and how a staging folder becomes them."""

    def final(self, out_dir: Path, name: str) -> Path: ...

    def record_path(self, out_dir: Path, name: str) -> Path: ...

    def foreign(self, final: Path) -> str | None: ...

    def complete(self, out_dir: Path, record: dict) -> bool: ...

    def keep_traceback(self, staging: Path, final: Path, record: dict, text: str) -> Path: ...

    def publish(self, staging: Path, final: Path, record: dict, *, ok: bool) -> None: ...


@dataclass(frozen=True)
class FolderOutput:
    """``OUT/<name>/`` holding the item's files and ``manifest.json``; ``markers`` are the files
    that show a folder is ours (see :func:`foreign_folder`)."""

    markers: tuple[str, ...] = (keys.TILE_MANIFEST_FILE,)
    record_file: str = keys.TILE_MANIFEST_FILE

    def final(self, out_dir: Path, name: str) -> Path:
        return out_dir / name

    def record_path(self, out_dir: Path, name: str) -> Path:
        return out_dir / name / self.record_file

    def foreign(self, final: Path) -> str | None:
        return foreign_folder(final, self.markers)

    def complete(self, out_dir: Path, record: dict) -> bool:
        return True  # the manifest is written inside the folder, last

    def keep_traceback(self, staging: Path, final: Path, record: dict, text: str) -> Path:
        (staging / keys.TILE_ERROR_LOG).write_text(text, encoding="utf-8")
        return final / keys.TILE_ERROR_LOG

    def publish(self, staging: Path, final: Path, record: dict, *, ok: bool) -> None:
        write_json_atomic(staging / self.record_file, record)
        publish_dir(staging, final)


@dataclass(frozen=True)
class FileOutput:
    """``OUT/<name><suffix>`` and its record ``OUT/<name><record_suffix>``; the record's
    ``file`` field names the output."""

    suffix: str
    record_suffix: str = ".json"

    def final(self, out_dir: Path, name: str) -> Path:
        return out_dir / f"{name}{self.suffix}"

    def record_path(self, out_dir: Path, name: str) -> Path:
        return out_dir / f"{name}{self.record_suffix}"

    def foreign(self, final: Path) -> str | None:
        return None

    def complete(self, out_dir: Path, record: dict) -> bool:
        return (out_dir / str(record.get("file", ""))).is_file()

    def keep_traceback(self, staging: Path, final: Path, record: dict, text: str) -> Path:
        record["traceback"] = text
        return self.record_path(final.parent, final.name[: -len(self.suffix)])

    def publish(self, staging: Path, final: Path, record: dict, *, ok: bool) -> None:
        try:
            if ok:
                os.replace(staging / final.name, final)
            write_json_atomic(self.record_path(final.parent, final.name[: -len(self.suffix)]),
                              record)  # fmt: skip
        finally:
            shutil.rmtree(staging, ignore_errors=True)
