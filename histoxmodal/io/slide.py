"""One interface over whole-slide and plain images: :class:`SlideReader` and :func:`open_slide`.

Backends (registered in ``histoxmodal.io.slide_readers``):

- ``openslide``: every format OpenSlide opens (Aperio SVS, generic tiled TIFF, Hamamatsu NDPI/VMS,
  MIRAX MRXS, Leica SCN, Philips TIFF, Ventana BIF, Zeiss CZI, DICOM WSI, ...);
- ``tifffile``: OME-TIFF and TIFFs OpenSlide refuses (striped, untiled, pyramids in SubIFDs);
- ``pillow``: plain JPEG and PNG (for example the her2st H&E images), decoded once into one array.

Coordinates are always level-0 pixels ``(x, y)``; arrays are ``(height, width, 3)`` RGB uint8.
A slide reads pixels and nothing else: tissue detection and tiling live in ``histoxmodal.tiling``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from histoxmodal.errors import MppError, SlideOpenError
from histoxmodal.registry import Registry
from histoxmodal.reprs import THUMBNAIL_PX, fmt_mpp, html_card, safe_html, safe_repr

if TYPE_CHECKING:
    from histoxmodal.io.mpp import MppChoice, SlideMpp

log = logging.getLogger(__name__)

#: Pixel sizes outside this range (µm per pixel) are refused unless the user overrides the check.
PLAUSIBLE_MPP = (0.1, 10.0)

MppSource = Literal["metadata", "user", "unknown"]

READERS: Registry[type[SlideReader]] = Registry("slide reader")

_PILLOW_SUFFIXES = {".jpg", ".jpeg", ".png"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}


@dataclass(frozen=True)
class MppInfo:
    """Pixel size of level 0 with where it came from.

    Attributes
    ----------
    mpp
        µm per pixel (the mean of x and y), or ``None`` when unknown.
    source
        ``"metadata"`` (the file says so), ``"user"`` (passed as ``mpp=``) or ``"unknown"``.
    detail
        Which field or tag it was read from, e.g. ``"openslide.mpp-x"``, ``"OME PhysicalSizeX"``.
    metadata_mpp
        What the file's metadata says, kept even when the user overrides it.
    """

    mpp: float | None
    source: MppSource
    detail: str = ""
    metadata_mpp: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "mpp": self.mpp,
            "mpp_source": self.source,
            "mpp_detail": self.detail,
            "metadata_mpp": self.metadata_mpp,
        }


class SlideReader(ABC):
    """A slide opened for reading: pyramid geometry, pixel size, and region reads.

    Subclasses implement :meth:`_read_level_region` and fill the geometry in ``__init__``.
    Instances are safe to share between threads (backends that are not guard themselves).
    """

    #: registry name of the backend
    name: str = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.vendor: str = ""
        self.mpp_info = MppInfo(None, "unknown")

    # ------------------------------------------------------------------ metadata
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 size ``(width, height)`` in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float | None:
        """Level-0 µm per pixel, or ``None`` when unknown (see :attr:`mpp_info`)."""
        return self.mpp_info.mpp

    def require_mpp(self) -> float:
        """The pixel size, or an :class:`MppError` that says how to pass it."""
        if self.mpp is None:
            raise MppError(
                f"{self.path}: the pixel size (µm per pixel) is not in the file's metadata. "
                f"Pass it to the command you ran with --mpp UM (tile and features also read "
                f"--mpp-csv FILE, one row per slide), or open_slide(path, mpp=UM) in Python; "
                f"0.25 is typical of 40x scans, 0.5 of 20x. For the H&E of a spatial sample "
                f"(her2st, Visium), use the value histoxmodal.io.read_spatial derives from the "
                f"spot pitch: uns['spatial'][sample]['metadata']['mpp']"
            )
        return self.mpp

    @abstractmethod
    def _metadata_mpp(self) -> tuple[float | None, str]:
        """The pixel size the file's metadata states, and the field it came from."""

    def properties(self) -> dict[str, str]:
        """Backend metadata as strings (OpenSlide properties, TIFF tags, ...)."""
        return {}

    # ------------------------------------------------------------------ pixels
    @abstractmethod
    def _read_level_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """Read ``(h, w, 3)`` RGB at ``level`` whose top-left is level-0 ``(x, y)``.

        Areas outside the image are white (glass), never black.
        """

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read a region as RGB uint8.

        Parameters
        ----------
        location
            Top-left corner ``(x, y)`` in level-0 pixels (OpenSlide's convention).
        level
            Pyramid level to read from.
        size
            ``(width, height)`` in pixels of ``level``.

        Returns
        -------
        np.ndarray
            ``(height, width, 3)`` uint8; areas outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(
                f"level={level} is out of range: {self.path.name} has levels "
                f"0..{self.level_count - 1}"
            )
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"size={size} must be positive (width, height)")
        return self._read_level_region(int(location[0]), int(location[1]), level, w, h)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (1 % tolerance)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = i
        return best

    def read_region_at_mpp(
        self, location: tuple[int, int], size_px: int | tuple[int, int], target_mpp: float
    ) -> np.ndarray:
        """Read a region of ``size_px`` pixels at ``target_mpp`` µm/px.

        The best pyramid level is read (the coarsest one at least as fine as the target) and the
        result resampled to exactly ``size_px`` (area interpolation when shrinking).
        """
        import cv2

        mpp = self.require_mpp()
        sw, sh = (size_px, size_px) if isinstance(size_px, int) else size_px
        scale = target_mpp / mpp
        w0, h0 = round(sw * scale), round(sh * scale)
        level = self.best_level_for_downsample(scale)
        ds = self.level_downsamples[level]
        rw, rh = max(1, round(w0 / ds)), max(1, round(h0 / ds))
        region = self.read_region(location, level, (rw, rh))
        if (rw, rh) != (sw, sh):
            interp = cv2.INTER_AREA if rw > sw else cv2.INTER_LINEAR
            region = cv2.resize(region, (sw, sh), interpolation=interp)
        return region

    def get_thumbnail(self, max_size: int | None = None, *, mpp: float | None = None) -> np.ndarray:
        """A downsampled image of the whole slide, read from a low-resolution level.

        Give the longest side in pixels (``max_size``) or a pixel size (``mpp``, µm/px); with both,
        the smaller image wins. The chosen pyramid level is read in stripes and each stripe is
        shrunk on the fly, so memory stays bounded by the output, not by the slide.

        Returns
        -------
        np.ndarray
            ``(h, w, 3)`` RGB uint8. Its level-0 downsample is ``dimensions[0] / w``.
        """
        import cv2

        W, H = self.dimensions
        ds = 1.0
        if mpp is not None:
            ds = max(ds, mpp / self.require_mpp())
        if max_size is not None:
            ds = max(ds, max(W, H) / max_size)
        if max_size is None and mpp is None:
            raise ValueError("get_thumbnail needs max_size= or mpp=")
        out_w, out_h = max(1, round(W / ds)), max(1, round(H / ds))
        level = self.best_level_for_downsample(ds)
        lw, lh = self.level_dimensions[level]
        lds = self.level_downsamples[level]
        if (lw, lh) == (out_w, out_h):
            return self.read_region((0, 0), level, (lw, lh))
        # stripes of the level that map to whole output rows, about 2 Mpx each
        rows_per_out = lh / out_h
        stripe_out_rows = max(1, int(2_000_000 / max(1, lw) / max(rows_per_out, 1e-9)))
        out = np.empty((out_h, out_w, 3), np.uint8)
        interp = cv2.INTER_AREA if lw >= out_w else cv2.INTER_LINEAR

        def stripe(r0: int) -> None:
            r1 = min(out_h, r0 + stripe_out_rows)
            y0, y1 = round(r0 * rows_per_out), min(lh, round(r1 * rows_per_out))
            data = self.read_region((0, round(y0 * lds)), level, (lw, max(1, y1 - y0)))
            out[r0:r1] = cv2.resize(data, (out_w, r1 - r0), interpolation=interp)

        starts = range(0, out_h, stripe_out_rows)
        if len(starts) == 1:
            stripe(0)
        else:  # decoders release the GIL: two stripes at a time halve the wait
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                list(pool.map(stripe, starts))
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @safe_repr
    def __repr__(self) -> str:
        w, h = self.dimensions if self.level_dimensions else (0, 0)
        n = self.level_count
        vendor = f", vendor={self.vendor!r}" if self.vendor else ""
        return (
            f"{type(self).__name__}({self.path.name!r}, {w}×{h} px, {n} level"
            f"{'' if n == 1 else 's'}, {fmt_mpp(self.mpp)} ({self.mpp_info.source}){vendor})"
        )

    @safe_html
    def _repr_html_(self) -> str:
        """A table of the slide's facts and a thumbnail (at most 256 px), for Jupyter."""
        w, h = self.dimensions
        rows: list[tuple[str, object]] = [
            ("file", str(self.path)),
            ("reader", f"{self.name} ({self.vendor})" if self.vendor else self.name),
            ("size", f"{w} × {h} px"),
            (
                "levels",
                ", ".join(
                    f"{lw}×{lh} (/{ds:.3g})"
                    for (lw, lh), ds in zip(
                        self.level_dimensions, self.level_downsamples, strict=False
                    )
                ),
            ),
            ("pixel size", f"{fmt_mpp(self.mpp)} ({self.mpp_info.source})"),
        ]
        if self.mpp:
            rows.append(
                ("physical size", f"{w * self.mpp / 1000:.2f} × {h * self.mpp / 1000:.2f} mm")
            )
        thumb = None
        try:
            thumb = self.get_thumbnail(THUMBNAIL_PX)
        except Exception as exc:  # a slide that cannot be read still shows its facts
            rows.append(("thumbnail", f"unavailable: {exc}"))
        return html_card(repr(self), rows, thumb)

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary: path, backend, vendor, geometry and pixel size."""
        return {
            "slide": str(self.path),
            "reader": self.name,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            **self.mpp_info.as_dict(),
        }


def list_readers() -> list[str]:
    """Names of the registered slide-reader backends."""
    _ensure_registered()
    return READERS.list()


def _ensure_registered() -> None:
    from histoxmodal.deps import require_extra

    require_extra("wsi", "reading slides")
    import histoxmodal.io.slide_readers  # noqa: F401  (registers the backends)


def _resolve_mpp(slide: SlideReader, mpp, allow_implausible_mpp: bool) -> MppInfo:
    from histoxmodal.io.mpp import MppChoice, SlideMpp

    meta_mpp, detail = slide._metadata_mpp()
    if isinstance(mpp, SlideMpp):
        mpp = mpp.for_slide(slide.path)
    user_detail = "mpp argument"
    if isinstance(mpp, MppChoice):
        user_detail = mpp.detail
        mpp = mpp.mpp if (mpp.override or meta_mpp is None) else None
    if mpp is not None:
        if not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
            raise MppError(f"mpp={mpp!r} must be a positive number of µm per pixel, e.g. 0.5")
        if meta_mpp is not None and abs(meta_mpp - mpp) / mpp > 0.1:
            log.warning(
                "%s: using mpp=%.4g given by the user; the file's metadata says %.4g (%s)",
                slide.path.name,
                mpp,
                meta_mpp,
                detail,
            )
        info = MppInfo(float(mpp), "user", user_detail, meta_mpp)
    elif meta_mpp is not None:
        info = MppInfo(meta_mpp, "metadata", detail, meta_mpp)
    else:
        return MppInfo(None, "unknown", "", None)
    lo, hi = PLAUSIBLE_MPP
    if not lo <= info.mpp <= hi and not allow_implausible_mpp:
        where = "given" if info.source == "user" else f"read from the file's metadata ({detail})"
        raise MppError(
            f"{slide.path}: pixel size {info.mpp:.4g} µm/px {where} is implausible for a "
            f"microscope slide (expected {lo}-{hi} µm/px). If the metadata is wrong, pass the "
            f"right value with mpp= / --mpp; if it is right, override the check with "
            f"allow_implausible_mpp=True / --allow-implausible-mpp."
        )
    return info


def open_slide(
    path: str | Path,
    *,
    mpp: float | MppChoice | SlideMpp | None = None,
    reader: str | None = None,
    allow_implausible_mpp: bool = False,
) -> SlideReader:
    """Open a whole-slide image or plain image for reading.

    Parameters
    ----------
    path
        The slide file. For a DICOM WSI, any of its ``.dcm`` files or the folder holding them.
    mpp
        Level-0 µm per pixel given by the user; overrides the file's metadata (which is still
        recorded in ``slide.mpp_info.metadata_mpp``). An :class:`~histoxmodal.io.mpp.MppChoice`
        can instead fill in only a missing pixel size, and a :class:`~histoxmodal.io.mpp.SlideMpp`
        chooses per slide (a CSV, a fallback); where the value came from is kept in
        ``slide.mpp_info.detail``.
    reader
        Force a backend (see :func:`list_readers`); by default it is chosen from the file:
        Pillow for JPEG/PNG, tifffile for OME-TIFF, OpenSlide for what it recognises, and tifffile
        for other TIFFs.
    allow_implausible_mpp
        Accept a pixel size outside 0.1-10 µm/px.

    Returns
    -------
    SlideReader
        With ``mpp_info.source`` ``"metadata"``, ``"user"`` or ``"unknown"``. An unknown pixel size
        is allowed here; operations that need it raise :class:`~histoxmodal.errors.MppError`.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    SlideOpenError
        No backend can open the file; the message says why.
    MppError
        The pixel size is implausible (see ``allow_implausible_mpp``).
    """
    _ensure_registered()
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"slide not found: {p}")
    if p.is_dir():
        dcm = sorted(p.glob("*.dcm"))
        if not dcm:
            raise SlideOpenError(
                f"{p} is a folder; pass a slide file (a folder is accepted only for DICOM WSI, "
                f"and this one holds no .dcm files)"
            )
        p = dcm[0]
    p = p.resolve()
    if p.stat().st_size == 0:
        raise SlideOpenError(f"{p}: the file is empty (0 bytes); was the copy interrupted?")
    cls = READERS.get(reader) if reader else _choose_reader(p)
    slide = cls(p)
    try:
        slide.mpp_info = _resolve_mpp(slide, mpp, allow_implausible_mpp)
    except BaseException:
        slide.close()
        raise
    return slide


def _choose_reader(p: Path) -> type[SlideReader]:
    suffixes = "".join(p.suffixes[-2:]).lower()
    suffix = p.suffix.lower()
    if suffix in _PILLOW_SUFFIXES:
        return READERS.get("pillow")
    if suffixes in {".ome.tif", ".ome.tiff"}:
        return READERS.get("tifffile")
    import openslide

    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except Exception as exc:  # OpenSlide raises on unreadable files
        raise SlideOpenError(f"{p}: cannot be read ({exc})") from exc
    if fmt is not None:
        return READERS.get("openslide")
    if suffix in _TIFF_SUFFIXES or _looks_like_tiff(p):
        return READERS.get("tifffile")
    raise SlideOpenError(
        f"{p}: not a slide format OpenSlide, tifffile or Pillow recognise. Supported: the formats "
        f"OpenSlide opens (SVS, TIFF, NDPI, VMS, MRXS, SCN, BIF, CZI, DICOM WSI), OME-TIFF and "
        f"other TIFFs, JPEG and PNG. Is it a slide, and is the file complete?"
    )


def _looks_like_tiff(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(4)
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")
