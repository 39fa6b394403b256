"""Pixel sizes the user gives for a set of slides: one per slide from a CSV, or a fallback.

A slide's own metadata is trusted first. ``--mpp`` fills in only slides without a pixel size
(JPEG, PNG, stripped TIFFs) unless ``--mpp-override`` says it replaces the metadata too; a CSV
with columns ``slide, mpp`` (TRIDENT's custom-mpp list) names the pixel size of single slides and
always wins over their metadata, since the user picked that slide by name.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from histoxmodal.errors import ConfigError, DataError

#: The columns of an mpp CSV.
MPP_CSV_COLUMNS = ("slide", "mpp")


@dataclass(frozen=True)
class MppChoice:
    """The user's pixel size for one slide.

    Attributes
    ----------
    mpp
        Level-0 µm per pixel.
    override
        Replace the file's metadata (``True``) or fill in only when the file has none.
    detail
        Where the value came from, recorded in the manifest (``mpp_detail``), e.g.
        ``"--mpp-csv mpp.csv line 3"``.
    """

    mpp: float
    override: bool = True
    detail: str = "mpp argument"


@dataclass(frozen=True)
class SlideMpp:
    """Pixel sizes for a set of slides: per slide (from a CSV) and a fallback.

    Attributes
    ----------
    default
        µm/px for slides not in ``per_slide`` (``None``: their metadata only).
    override
        ``default`` replaces slides' metadata too, instead of filling in only missing ones.
    per_slide
        Slide key (file name, stem or path, as written in the CSV) to ``(mpp, where)``.
    csv
        The CSV file ``per_slide`` was read from, and its SHA-256, for provenance.
    """

    default: float | None = None
    override: bool = False
    per_slide: Mapping[str, tuple[float, str]] = field(default_factory=dict)
    csv: tuple[str, str] | None = None

    @classmethod
    def from_csv(
        cls, path: str | Path, *, default: float | None = None, override: bool = False
    ) -> SlideMpp:
        """Read ``slide, mpp`` rows from ``path`` (see :func:`read_mpp_csv`)."""
        path = Path(path).expanduser().resolve()
        table = read_mpp_csv(path)
        for key, value in list(table.items()):
            if "/" in key or "\\" in key:  # a path: as the slides are given, from here
                table.setdefault(str(Path(key).expanduser().resolve()), value)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(default, override, table, (str(path), digest))

    def for_slide(self, path: str | Path) -> MppChoice | None:
        """The user's choice for the slide at ``path``, or ``None`` (its metadata alone)."""
        p = Path(path)
        for key in (str(p), str(p.expanduser().resolve()), p.name, p.stem):
            if key in self.per_slide:
                mpp, where = self.per_slide[key]
                return MppChoice(mpp, True, where)
        if self.default is None:
            return None
        if self.override:
            return MppChoice(self.default, True, "--mpp with --mpp-override")
        return MppChoice(self.default, False, "--mpp (the file has no pixel size)")

    def as_params(self) -> dict[str, object]:
        """A JSON-ready summary for the tiling parameters of a manifest."""
        out: dict[str, object] = {"default": self.default, "override": self.override}
        if self.csv is not None:
            out["csv"] = {"path": self.csv[0], "sha256": self.csv[1]}
        return out


def read_mpp_csv(path: str | Path) -> dict[str, tuple[float, str]]:
    """Pixel sizes per slide from a CSV with a header ``slide,mpp`` (other columns ignored).

    ``slide`` is a file name (``a.svs``), a stem (``a``) or a path, as the slides are given.

    Returns
    -------
    dict
        Slide key to ``(mpp, "--mpp-csv FILE line N")``.

    Raises
    ------
    ConfigError
        The file is missing or cannot be opened.
    DataError
        The file is not text, lacks a column, or a row has an empty slide, a duplicate slide,
        or an mpp that is not a positive number; the message names the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"--mpp-csv {path}: file not found") from None
    except UnicodeDecodeError as exc:  # the file's content: bad data
        raise DataError(f"--mpp-csv {path}: cannot read it ({exc})") from None
    except OSError as exc:  # a folder, no permission: the path given
        raise ConfigError(f"--mpp-csv {path}: cannot read it ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in MPP_CSV_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"--mpp-csv {path} line 1: no column {', '.join(missing)} (header {header or 'empty'});"
            f" expected a header 'slide,mpp' then one row per slide, e.g. 'B4.jpg,1.0'"
        )
    reader.fieldnames = header
    table: dict[str, tuple[float, str]] = {}
    for row in reader:
        line = reader.line_num
        where = f"--mpp-csv {path} line {line}"
        slide = (row.get("slide") or "").strip()
        value = (row.get("mpp") or "").strip()
        if not slide and not value:
            continue
        if not slide:
            raise DataError(f"{where}: the slide column is empty")
        try:
            mpp = float(value)
        except ValueError:
            mpp = math.nan
        if not (math.isfinite(mpp) and mpp > 0):
            raise DataError(
                f"{where}: mpp {value!r} of {slide} is not a positive number of µm per pixel "
                f"(e.g. 0.25 at 40x, 0.5 at 20x)"
            )
        if slide in table:
            first = table[slide][1].rsplit(" ", 1)[-1]
            raise DataError(f"{where}: {slide} is listed twice (first on line {first})")
        table[slide] = (mpp, where)
    if not table:
        raise DataError(f"--mpp-csv {path}: no rows under the header 'slide,mpp'")
    return table


def mpp_params(mpp: float | MppChoice | SlideMpp | None) -> object:
    """The ``mpp`` argument as it is recorded in tiling parameters (JSON-ready)."""
    if isinstance(mpp, SlideMpp):
        return mpp.as_params()
    if isinstance(mpp, MppChoice):
        return {"default": mpp.mpp, "override": mpp.override}
    return mpp
