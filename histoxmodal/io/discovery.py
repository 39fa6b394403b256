"""Finding slide files: which files are slides, the output name of each, and what identifies a
slide file between runs.

Used by every per-slide batch job (``tile``, ``features``, ``predict``) through
:mod:`histoxmodal.workflows.jobs`; nothing here reads pixels.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: file suffixes picked up when a folder is given
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".bif",
    ".czi",
    ".svslide",
    ".dcm",
    ".jpg",
    ".jpeg",
    ".png",
    ".btf",
)

#: characters an output name may not hold (path separators, NUL and control characters)
_UNSAFE = re.compile(r"[\x00-\x1f/\\]+")


def safe_name(name: str) -> str:
    """``name`` made safe as one folder inside ``--out``: separators and control characters
    become ``_``, leading dots are dropped (no hidden names, never ``.`` or ``..``), and an empty
    result becomes ``slide``."""
    return _UNSAFE.sub("_", name).lstrip(".").strip() or "slide"


def output_name(path: str | Path) -> str:
    """The output name of a slide: its file name (the path given, not a symlink's target)
    without suffix (``x.ome.tif`` -> ``x``), made safe with :func:`safe_name` (``..svs`` ->
    ``slide``)."""
    name = Path(path).name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return safe_name(name[: -len(suf)])
    return safe_name(Path(name).stem)


def slide_identity(path: str | Path) -> dict[str, object]:
    """What identifies a slide file between runs: the absolute path given, the file it resolves
    to, its size and modification time (ns).

    Raises
    ------
    OSError
        The file cannot be read (missing, no permission).
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    st = p.stat()
    return {
        "path": str(p),
        "resolved": str(p.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def find_slides(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into slide files, sorted and de-duplicated.

    Folders are searched (not recursively) for :data:`SLIDE_SUFFIXES`. The ``.dcm`` files of one
    folder form one DICOM WSI, represented by the first of them.

    Returns
    -------
    slides
        Absolute slide paths as given (a symlink stays a symlink, so it names its own output).
    missing
        The input paths that do not exist.
    """
    found: list[Path] = []
    missing: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            missing.append(p)
            continue
        if p.is_dir():
            inside = sorted(
                q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_SUFFIXES
            )
            if not inside:
                log.warning(
                    "%s: no slides in this folder (looked for %s)", p, " ".join(SLIDE_SUFFIXES)
                )
            found.extend(inside)
        else:
            found.append(p)
    # one representative per DICOM folder: OpenSlide reads the whole series from any file
    out: list[Path] = []
    dicom_dirs: set[Path] = set()
    for p in sorted({Path(os.path.abspath(q)) for q in found}):
        if p.suffix.lower() == ".dcm":
            if p.parent in dicom_dirs:
                continue
            dicom_dirs.add(p.parent)
        out.append(p)
    return out, missing
