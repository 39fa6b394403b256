"""The slide-reader backends: OpenSlide, tifffile and Pillow (see :mod:`histoxmodal.io.slide`)."""

from __future__ import annotations

import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

import numpy as np

from histoxmodal.errors import SlideOpenError, SlideReadError
from histoxmodal.io.slide import READERS, SlideReader


def _paste(out: np.ndarray, src: np.ndarray, ox: int, oy: int) -> None:
    """Copy ``src`` into ``out`` with its top-left at ``(ox, oy)`` of ``out``, clipping edges."""
    h, w = out.shape[:2]
    sh, sw = src.shape[:2]
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(w, ox + sw), min(h, oy + sh)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = src[y0 - oy : y1 - oy, x0 - ox : x1 - ox]


def _to_rgb(a: np.ndarray) -> np.ndarray:
    """Greyscale, RGB or RGBA uint8 to contiguous RGB; transparent pixels become white.

    OpenCV does the channel shuffles: NumPy's strided copies are ~50x slower on tiles.
    """
    import cv2

    if a.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_GRAY2RGB)
    if a.shape[2] == 4:
        alpha = a[:, :, 3]
        if alpha.min() == 255:
            return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGBA2RGB)
        af = alpha[:, :, None].astype(np.float32) / 255.0
        return (a[:, :, :3] * af + 255.0 * (1.0 - af)).round().astype(np.uint8)
    if a.shape[2] == 3:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a[:, :, :3])


def _premultiplied_bgra_to_rgb(bgra: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied ARGB (BGRA bytes in memory) to RGB over a white background."""
    import cv2

    rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    alpha = bgra[:, :, 3]
    if alpha.min() < 255:  # premultiplied: compositing on white adds the missing coverage
        rgb = cv2.add(rgb, cv2.cvtColor(255 - alpha, cv2.COLOR_GRAY2RGB))
    return rgb


def _crop(level_image: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """A ``(h, w, 3)`` window of an in-memory level; outside areas white."""
    H, W = level_image.shape[:2]
    if x >= 0 and y >= 0 and x + w <= W and y + h <= H:
        return level_image[y : y + h, x : x + w].copy()
    out = np.full((h, w, 3), 255, np.uint8)
    _paste(out, level_image, -x, -y)
    return out


# --------------------------------------------------------------------------- OpenSlide
_VL_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _dicom_wsi_problem(path: Path, openslide_message: str) -> str | None:
    """What a DICOM WSI series lacks, when OpenSlide refused it; None if not found or not DICOM.

    OpenSlide opens every .dcm file beside the one given and, for a file without ImageType, says
    only "Couldn't get image flavor", which reads like a damaged file. pydicom (the ``medical``
    extra) can name the file and the missing attribute; without it the generic message stays.
    """
    try:
        import pydicom
    except ImportError:
        return None
    with path.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] != b"DICM":
        return None
    # the file OpenSlide names first, then the one given, then the rest of the series folder
    named = [Path(m) for m in re.findall(r"Reading (.+?\.dcm)\b", openslide_message)]
    siblings = sorted(path.parent.glob("*.dcm"))
    seen: set[Path] = set()
    for f in [*named, path, *siblings]:
        f = f.resolve()
        if f in seen or not f.is_file():
            continue
        seen.add(f)
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM or unreadable: OpenSlide skips those files too
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if sop != _VL_WSI_SOP_CLASS:
            if f == path.resolve():
                name = getattr(ds.get("SOPClassUID"), "name", sop) or "none"
                return (
                    f"DICOM file {f} is not a whole-slide image (SOP class {name}, modality "
                    f"{ds.get('Modality', '?')}); give the files of a VL Whole Slide Microscopy "
                    f"Image series, or read radiology images with histoxmodal.read_radiology"
                )
            continue  # another object in the folder (a report, a label): not the series
        if "ImageType" not in ds:
            return (
                f"DICOM file {f} has no ImageType (0008,0008): not a whole-slide image series, "
                f"or written without the WSI attributes; OpenSlide needs ImageType (e.g. "
                f"DERIVED\\PRIMARY\\VOLUME\\NONE) in every file of the series. Re-export the "
                f"slide with a DICOM WSI converter, or move that file out of the folder"
            )
    return None


@READERS.register("openslide", formats="SVS TIFF NDPI VMS VMU SCN MRXS BIF CZI DICOM-WSI")
class OpenSlideReader(SlideReader):
    """Every format OpenSlide opens (vendor pyramids, generic tiled TIFF, DICOM WSI)."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import openslide

        self._openslide = openslide
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(
                f"{path}: OpenSlide does not recognise this file as a slide ({exc})"
            ) from exc
        except (openslide.OpenSlideError, OSError) as exc:
            why = _dicom_wsi_problem(Path(path), str(exc))
            if why is not None:
                raise SlideOpenError(f"{path}: OpenSlide cannot open it ({exc}). {why}") from exc
            raise SlideOpenError(
                f"{path}: OpenSlide cannot open it ({exc}); the file may be truncated or corrupt"
            ) from exc
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.vendor = self._osr.properties.get("openslide.vendor", "") or ""
        import ctypes
        import sys

        # openslide-python's raw binding (stable since 1.2); without it, the public PIL path
        raw = getattr(openslide.lowlevel, "_read_region", None)
        self._raw_read = raw if sys.byteorder == "little" else None
        self._uint32_p = ctypes.POINTER(ctypes.c_uint32)
        self._tiff: TiffSegments | None = None
        if self.vendor in self.TIFF_VENDORS:
            self._tiff = self._tiff_segments()

    #: OpenSlide vendors whose levels are plain TIFF pages that tifffile decodes to OpenSlide's
    #: pixels exactly, at several times OpenSlide's speed (its generic-tiff and Aperio reads spend
    #: most of their time compositing, not decoding)
    TIFF_VENDORS = ("generic-tiff", "aperio")

    @property
    def decoder(self) -> str:
        """What decodes pixels: ``"tifffile"`` (checked against OpenSlide) or ``"openslide"``."""
        return "openslide" if self._tiff is None else "tifffile"

    def _tiff_segments(self) -> TiffSegments | None:
        """The tifffile path for this slide, or None where it would not give OpenSlide's pixels.

        Every OpenSlide level must be a tiled page of the same size, and a region read both ways
        at the centre of level 0 must agree to the byte; anything else keeps OpenSlide.
        """
        try:
            tf, pages = _open_tiff_levels(self.path)
        except Exception:
            return None
        try:
            dims = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
            chosen = []
            for d in self.level_dimensions:
                page = pages[dims.index(d)] if d in dims else None
                if page is None or not page.is_tiled:
                    tf.close()
                    return None
                chosen.append(page)
            seg = TiffSegments(self.path, tf, chosen, self.level_downsamples)
        except Exception:
            tf.close()
            return None
        w, h = self.level_dimensions[0]
        n = min(256, w, h)
        x, y = (w - n) // 2, (h - n) // 2
        try:
            same = np.array_equal(seg.read(x, y, 0, n, n), self._read_openslide(x, y, 0, n, n))
        except Exception:
            same = False
        if not same:
            seg.close()
            return None
        return seg

    def _metadata_mpp(self) -> tuple[float | None, str]:
        props = self._osr.properties
        try:
            mx = float(props["openslide.mpp-x"])
            my = float(props.get("openslide.mpp-y", mx))
        except (KeyError, ValueError):
            return None, ""
        if not (math.isfinite(mx) and mx > 0 and math.isfinite(my) and my > 0):
            return None, ""
        return (mx + my) / 2, "openslide.mpp-x/openslide.mpp-y"

    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    def _read_level_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        if self._tiff is not None:
            ds = self.level_downsamples[level]
            # OpenSlide resamples a region whose corner falls between a level's pixels; the
            # tifffile path only reads whole pixels, so such reads stay with OpenSlide
            if level == 0 or ((x / ds).is_integer() and (y / ds).is_integer()):
                return self._tiff.read(x, y, level, w, h)
        return self._read_openslide(x, y, level, w, h)

    def _read_openslide(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            if self._raw_read is None:
                return _to_rgb(np.asarray(self._osr.read_region((x, y), level, (w, h))))
            # Decode straight into a NumPy buffer: skips PIL's un-premultiply pass and copies,
            # and the ctypes call releases the GIL for the whole decode.
            argb = np.empty((h, w), np.uint32)
            self._raw_read(self._osr._osr, argb.ctypes.data_as(self._uint32_p), x, y, level, w, h)
        except self._openslide.OpenSlideError as exc:
            raise SlideReadError(
                f"{self.path}: reading {w}x{h} px at level {level}, ({x}, {y}) failed: {exc}. "
                f"The file is probably truncated or corrupt."
            ) from exc
        return _premultiplied_bgra_to_rgb(argb.view(np.uint8).reshape(h, w, 4))

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        self._osr.close()


# --------------------------------------------------------------------------- tifffile
_OME_UNITS_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


class TiffSegments:
    """A TIFF pyramid's levels read segment by segment: the file read with ``os.pread``, each
    tile or strip decoded by tifffile's codecs (imagecodecs, which releases the GIL), a bounded
    LRU cache of decoded segments shared by threads.

    Used by :class:`TiffFileReader`, and by :class:`OpenSlideReader` for plain tiled TIFFs and
    Aperio SVS, where it returns OpenSlide's pixels exactly at several times its speed.

    Parameters
    ----------
    path
        The TIFF file.
    tf
        Its open ``tifffile.TiffFile`` (closed by :meth:`close`).
    pages
        One page per pyramid level, finest first.
    level_downsamples
        Level-0 pixels per pixel of each level.
    """

    CACHE_SEGMENTS = 256

    def __init__(self, path: Path, tf, pages: list, level_downsamples: tuple[float, ...]) -> None:
        self.path = Path(path)
        self._tf = tf
        self._pages = pages
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in pages)
        self.level_downsamples = tuple(level_downsamples)
        self._fd: int | None = os.open(str(path), os.O_RDONLY)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            seg = self._cache.get(key)
            if seg is not None:
                self._cache.move_to_end(key)
                return seg
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # sparse segment: nothing was scanned there
            seg = None
        else:
            data = os.pread(self._fd, count, offset)
            if len(data) < count:
                raise SlideReadError(
                    f"{self.path}: level {level} segment {index} is cut short ({len(data)} of "
                    f"{count} bytes); the file is truncated"
                )
            try:
                seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as exc:
                raise SlideReadError(
                    f"{self.path}: cannot decode level {level} segment {index}: {exc}"
                ) from exc
        if seg is None:
            th, tw = self._segment_shape(level)
            seg = np.full((th, tw, 3), 255, np.uint8)
        else:
            seg = _to_rgb(seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg)
        with self._lock:
            self._cache[key] = seg
            if len(self._cache) > self.CACHE_SEGMENTS:
                self._cache.popitem(last=False)
        return seg

    def _segment_shape(self, level: int) -> tuple[int, int]:
        page = self._pages[level]
        if page.is_tiled:
            return int(page.tilelength), int(page.tilewidth)
        return int(min(page.rowsperstrip, page.imagelength)), int(page.imagewidth)

    def read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` RGB of ``level`` whose top-left is level-0 ``(x, y)``; white outside."""
        ds = self.level_downsamples[level]
        lx, ly = round(x / ds), round(y / ds)
        W, H = self.level_dimensions[level]
        th, tw = self._segment_shape(level)
        across = math.ceil(W / tw)
        out = np.full((h, w, 3), 255, np.uint8)
        r0, r1 = max(0, ly // th), min(math.ceil(H / th), (ly + h - 1) // th + 1)
        c0, c1 = max(0, lx // tw), min(across, (lx + w - 1) // tw + 1)
        for r in range(r0, r1):
            for c in range(c0, c1):
                seg = self._segment(level, r * across + c)
                _paste(out, seg[: H - r * th, : W - c * tw], c * tw - lx, r * th - ly)
        return out

    def close(self) -> None:
        """Close the file descriptor and the TiffFile."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tf.close()


def _open_tiff_levels(path: Path) -> tuple:
    """``(TiffFile, level pages)`` of a brightfield TIFF pyramid; raises on other layouts."""
    import tifffile

    tf = tifffile.TiffFile(str(path))
    try:
        pages = []
        for lv in tf.series[0].levels:
            axes, shape = lv.axes, lv.shape
            ok = (axes == "YXS" and shape[-1] in (3, 4)) or axes == "YX"
            if not ok or len(lv.pages) != 1 or lv.dtype != np.uint8:
                raise SlideOpenError(
                    f"{path}: unsupported image layout (axes={axes}, shape={shape}, "
                    f"dtype={lv.dtype}); histoxmodal reads 8-bit RGB or greyscale brightfield "
                    f"slides with interleaved samples"
                )
            pages.append(lv.pages[0] if hasattr(lv.pages[0], "keyframe") else lv.keyframe)
    except BaseException:
        tf.close()
        raise
    return tf, pages


@READERS.register("tifffile", formats="OME-TIFF, striped or SubIFD-pyramid TIFF")
class TiffFileReader(SlideReader):
    """OME-TIFF and TIFFs OpenSlide refuses, read segment by segment with tifffile."""

    name = "tifffile"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            tf, pages = _open_tiff_levels(path)
        except SlideOpenError:
            raise
        except Exception as exc:  # tifffile raises many types on damaged files
            raise SlideOpenError(
                f"{path}: not a readable TIFF ({exc}); the file may be truncated or corrupt "
                f"({path.stat().st_size} bytes): re-copy it and compare checksums"
            ) from exc
        self._tf = tf
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in pages)
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        self.vendor = "ome-tiff" if tf.is_ome else "tiff"
        self._segments = TiffSegments(path, tf, pages, self.level_downsamples)

    def _metadata_mpp(self) -> tuple[float | None, str]:
        if self._tf.is_ome and self._tf.ome_metadata:
            try:
                root = ET.fromstring(self._tf.ome_metadata)
            except ET.ParseError:
                root = None
            pixels = (
                None
                if root is None
                else next(
                    (el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"),
                    None,
                )
            )
            if pixels is not None and pixels.get("PhysicalSizeX"):
                sx = float(pixels.get("PhysicalSizeX"))
                sy = float(pixels.get("PhysicalSizeY", sx))
                unit = _OME_UNITS_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
                return (sx + sy) / 2 * unit, "OME PhysicalSizeX/PhysicalSizeY"
        page = self._tf.pages[0]
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
        if m:
            return float(m.group(1)), "ImageDescription MPP"
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            unit = int(tags["ResolutionUnit"].value)
            num, den = tags["XResolution"].value
            res = num / den if den else 0.0
            if res > 0 and unit in (2, 3):
                um_per_unit = 25400.0 if unit == 2 else 10000.0
                return um_per_unit / res, "TIFF XResolution/ResolutionUnit"
        return None, ""

    def properties(self) -> dict[str, str]:
        page = self._tf.pages[0]
        return {f"tiff.{t.name}": str(t.value)[:200] for t in page.tags.values()}

    def _read_level_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        return self._segments.read(x, y, level, w, h)

    def close(self) -> None:
        if getattr(self, "_segments", None) is not None:
            self._segments.close()
            self._segments = None


# --------------------------------------------------------------------------- Pillow
@READERS.register("pillow", formats="JPEG PNG")
class PillowReader(SlideReader):
    """Plain JPEG and PNG images, decoded once into a single array.

    JPEGs get virtual pyramid levels at 1/2, 1/4 and 1/8 from libjpeg's DCT scaling, so
    thumbnails and tissue detection never decode the full image. Level 0 is decoded on first use
    straight into one NumPy array (no intermediate copies: about 3 bytes per pixel, 276 MB for a
    92 Mpx her2st image) and kept for later reads.
    """

    name = "pillow"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        from PIL import Image, UnidentifiedImageError

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # slides are legitimately huge; the file is the user's own
        try:
            with Image.open(path) as im:
                self._format = im.format
                self._mode = im.mode
                w, h = im.size
        except (UnidentifiedImageError, OSError) as exc:
            raise SlideOpenError(f"{path}: not a readable JPEG/PNG image ({exc})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old
        scales = (1, 2, 4, 8) if self._format == "JPEG" else (1,)
        self.level_dimensions = tuple((math.ceil(w / s), math.ceil(h / s)) for s in scales)
        self.level_downsamples = tuple((w / lw + h / lh) / 2 for lw, lh in self.level_dimensions)
        self.vendor = (self._format or "image").lower()
        self._levels: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _metadata_mpp(self) -> tuple[float | None, str]:
        # JFIF/PNG densities are print resolutions (72, 96, 300 dpi), never a microscope's
        # pixel size: trusting them would silently mis-scale every tile.
        return None, ""

    def _decode(self, level: int) -> np.ndarray:
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            if level == 0 and self._format == "JPEG" and self._mode in ("RGB", "L"):
                import imagecodecs

                data = self.path.read_bytes()
                # libjpeg pads a cut-off stream with grey instead of failing: check the end marker
                if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
                    raise SlideReadError(
                        f"{self.path}: the JPEG stream has no end-of-image marker; the file is "
                        f"truncated (re-copy or re-download it)"
                    )
                return _to_rgb(imagecodecs.jpeg8_decode(data))
            with Image.open(self.path) as im:
                if level > 0:
                    im.draft("RGB", self.level_dimensions[level])
                im = im.convert("RGB")
                arr = np.asarray(im)
            if arr.shape[1::-1] != self.level_dimensions[level]:
                import cv2

                arr = cv2.resize(arr, self.level_dimensions[level], interpolation=cv2.INTER_AREA)
            return arr
        except (OSError, ValueError, RuntimeError) as exc:
            raise SlideReadError(
                f"{self.path}: cannot decode the image ({exc}); the file may be truncated"
            ) from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old

    def _level(self, level: int) -> np.ndarray:
        arr = self._levels.get(level)
        if arr is None:
            with self._lock:
                arr = self._levels.get(level)
                if arr is None:
                    arr = self._levels[level] = self._decode(level)
        return arr

    def _read_level_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        return _crop(self._level(level), round(x / ds), round(y / ds), w, h)

    def close(self) -> None:
        self._levels.clear()


# --------------------------------------------------------------------------- in memory
@READERS.register("array", formats="in-memory RGB array")
class ArraySlide(SlideReader):
    """An image already in memory (for example ``uns['spatial'][lib]['images']['hires']``).

    Not opened from a file: build it with ``ArraySlide(image, mpp=..., name=...)``.
    """

    name = "array"

    def __init__(self, image: np.ndarray, *, mpp: float | None = None, name: str = "array"):
        from histoxmodal.io.slide import MppInfo

        super().__init__(Path(name))
        img = np.asarray(image)
        if img.dtype != np.uint8:  # float images in [0, 1] (scanpy's convention)
            img = np.clip(np.asarray(img, np.float32) * (255 if img.max() <= 1.0 else 1), 0, 255)
            img = img.round().astype(np.uint8)
        self._image = _to_rgb(img)
        h, w = self._image.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.vendor = "array"
        self.mpp_info = MppInfo(mpp, "user" if mpp else "unknown", "ArraySlide(mpp=...)", None)

    def _metadata_mpp(self) -> tuple[float | None, str]:
        return None, ""

    def _read_level_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        return _crop(self._image, x, y, w, h)
