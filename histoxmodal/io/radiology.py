"""Radiology images (DICOM, PNG/JPEG, NIfTI) as float32 arrays in one convention.

:func:`read_radiology` returns a :class:`RadiologyImage`: ``(H, W)`` for a 2-D image, ``(D, H, W)``
for a volume, in the modality's physical values (Hounsfield units for CT), with bright = dense for
every file (``MONOCHROME1`` radiographs are inverted), the VOI window from the header or the
caller, and the header fields a cohort needs (patient, study, time, view). :func:`radiology_to_unit`
maps the window to ``[0, 1]`` for a model.

Windowing and resizing use NumPy and Pillow, not MONAI: ``import monai`` imports torch (several
seconds and the whole torch stack), and readers in :mod:`histoxmodal.io` stay torch-free. The
results match MONAI's ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)`` for the window and its
anti-aliased ``Resize`` in spirit (Pillow's resize filters are anti-aliased when shrinking).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal.deps import require_extra
from histoxmodal.errors import ConfigError
from histoxmodal.errors import RadiologyReadError as RadiologyReadError

log = logging.getLogger(__name__)

_PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# NIfTI spatial unit -> factor to mm
_NIFTI_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


@dataclass
class RadiologyImage:
    """One radiograph, slice or volume.

    Attributes
    ----------
    pixels
        float32, ``(H, W)`` or ``(D, H, W)``; physical values after the modality LUT (HU for
        CT), bright = dense; in ``[0, 1]`` when read with ``unit=True``.
    modality
        DICOM modality (``CR``, ``DX``, ``CT``, ``MR``, ...), or the file format (``PNG``,
        ``JPEG``, ``NIfTI``) when the file does not say.
    spacing
        mm per pixel along each axis of ``pixels`` (``(row, col)`` or ``(slice, row, col)``),
        None when the file does not say.
    patient_id, study_id
        DICOM Patient ID and Study Instance UID; None for other formats.
    acquired_at
        From AcquisitionDateTime, Acquisition, Content, Series or Study date and time (the
        first present), naive local time; None when absent.
    view
        DICOM View Position (``PA``, ``AP``, ``LL``, ...), None when absent.
    source_format
        ``"dicom"``, ``"png"``, ``"jpeg"``, ``"nifti"``, ...
    path
        The file (or the folder of a DICOM series).
    window
        VOI window ``(center, width)`` in the units of ``pixels`` (DICOM's linear definition),
        used by :func:`radiology_to_unit`; ``metadata["window_source"]`` says where it came from.
    metadata
        Everything else (SOP class, series, photometric interpretation, rescale, affine, ...).
    """

    pixels: np.ndarray = field(repr=False)
    modality: str
    spacing: tuple[float, ...] | None
    patient_id: str | None
    study_id: str | None
    acquired_at: datetime | None
    view: str | None
    source_format: str
    path: Path
    window: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


def read_radiology(
    path: str | Path,
    *,
    size: Sequence[int] | None = None,
    window: Sequence[float] | None = None,
    unit: bool = False,
) -> RadiologyImage:
    """Read a radiology image into a :class:`RadiologyImage`.

    Parameters
    ----------
    path
        A DICOM file (``.dcm`` or any file with the ``DICM`` preamble), a folder holding the
        DICOM slices of one series (stacked into a volume in patient order), a PNG/JPEG/TIFF
        (RGB converted to grey), or a NIfTI ``.nii``/``.nii.gz`` (a volume ``(X, Y, Z)`` is
        returned as ``(Z, Y, X)`` = ``(D, H, W)``, voxel order as stored; the affine is in
        ``metadata["affine"]``).
    size
        ``(H, W)``: resize every image/slice to this size (spacing updated); for a volume
        ``(D, H, W)`` also resamples the slices. None keeps the size.
    window
        VOI window ``(center, width)`` overriding the header's WindowCenter/WindowWidth.
    unit
        Return pixels scaled to ``[0, 1]`` through the window (see :func:`radiology_to_unit`).

    Returns
    -------
    RadiologyImage
        ``pixels`` float32 of shape ``(H, W)`` or ``(D, H, W)``.
    """
    require_extra("medical", "read_radiology")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"radiology image not found: {p}")
    user_window = _check_window(window, "window") if window is not None else None
    if size is not None:
        size = _check_size(size)
    name = p.name.lower()
    if p.is_dir():
        img = _read_dicom_series(p)
    elif name.endswith(_NIFTI_SUFFIXES):
        img = _read_nifti(p)
    elif _has_dicm_preamble(p) or p.suffix.lower() == ".dcm":
        img = _read_dicom_file(p)
    elif p.suffix.lower() in _PILLOW_SUFFIXES:
        img = _read_pillow(p)
    else:
        raise RadiologyReadError(
            f"{p}: not a radiology format this reader knows (no DICOM preamble, suffix "
            f"{p.suffix!r}); give a DICOM file or series folder, a PNG/JPEG, or a NIfTI .nii(.gz)"
        )
    if user_window is not None:
        img.window = user_window
        img.metadata["window_source"] = "argument"
    if size is not None:
        img = _resize(img, size)
    if unit:
        img = replace(img, pixels=radiology_to_unit(img), metadata=dict(img.metadata))
        img.metadata["intensity"] = "unit"
    return img


def radiology_to_unit(
    image: RadiologyImage | np.ndarray, *, window: Sequence[float] | None = None
) -> np.ndarray:
    """Intensities scaled to ``[0, 1]`` for a model: the window's range maps to 0..1, clipped.

    A DICOM header's VOI LUT Sequence or ``VOILUTFunction = SIGMOID`` is applied as DICOM
    defines it (through pydicom's ``apply_voi_lut`` at read time, ``metadata["voi_transform"]``
    says which) unless a window is given here or to :func:`read_radiology`. Otherwise the
    window is ``window=``, else ``image.window`` (header, bit depth), else the data range.
    The mapping is DICOM's linear VOI function (PS3.3 C.11.2.1.2.1), the same as MONAI's
    ``ScaleIntensityRange(a_min=c - 0.5 - (w - 1) / 2, a_max=c - 0.5 + (w - 1) / 2,
    b_min=0, b_max=1, clip=True)``.

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``image.pixels``.
    """
    pixels = image.pixels if isinstance(image, RadiologyImage) else np.asarray(image)
    meta = image.metadata if isinstance(image, RadiologyImage) else {}
    table = meta.get("voi_table")
    if window is None and table is not None and meta.get("window_source") != "argument":
        # the header's VOI LUT Sequence or SIGMOID function (see _dicom_voi)
        return np.interp(pixels, table[0], table[1]).astype(np.float32)
    if window is not None:
        win = _check_window(window, "window")
    elif isinstance(image, RadiologyImage) and image.window is not None:
        win = image.window
    else:
        win = _range_window(pixels)
    lo, hi = window_range(win)
    x = pixels.astype(np.float32, copy=False)
    if hi <= lo:  # width 1: DICOM's threshold
        return (x > lo).astype(np.float32)
    out = (x - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def window_range(window: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` pixel values mapped to 0 and 1 by the DICOM linear window ``(c, w)``."""
    c, w = float(window[0]), float(window[1])
    return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2


def _range_window(x: np.ndarray) -> tuple[float, float]:
    """The window whose :func:`window_range` is ``(min, max)`` of ``x``."""
    if x.size == 0:
        return (0.5, 1.0)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    return ((lo + hi) / 2 + 0.5, hi - lo + 1)


def _check_window(window: Sequence[float], name: str) -> tuple[float, float]:
    try:
        c, w = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}={window!r}; expected (center, width), e.g. (40, 400) for a CT soft-tissue "
            f"window"
        ) from None
    if not (np.isfinite(c) and np.isfinite(w)) or w < 1:
        raise ConfigError(f"{name}={window!r}: the width must be finite and >= 1")
    return (c, w)


def _check_size(size: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        out = ()
    if len(out) not in (2, 3) or min(out) < 1:
        raise ConfigError(f"size={size!r}; expected (H, W) or (D, H, W) of positive integers")
    return out


def _has_dicm_preamble(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


# ------------------------------------------------------------------------------ DICOM helpers

# Elements a real DICOM object carries; a file without the 'DICM' marker is taken as DICOM only
# when pydicom finds one of them, since force=True "reads" any bytes (a text file gives an empty
# dataset) and the reader then complains about a SOP class or pixel data the file never had.
_DICOM_EVIDENCE = ("SOPClassUID", "SOPInstanceUID", "Modality", "PixelData", "WaveformSequence")


def read_dicom_dataset(
    path: str | Path,
    *,
    stop_before_pixels: bool = False,
    error: type[Exception] = RadiologyReadError,
) -> Any:
    """Read a DICOM file with pydicom, refusing a file that is not DICOM with a clear message.

    Files with the 128-byte preamble and 'DICM' marker are read as usual; files without it (old
    ACR-NEMA style datasets) are read with ``force=True`` and accepted only when they hold a SOP
    class or instance UID, a modality, pixel data or a waveform.

    Parameters
    ----------
    path
        The file.
    stop_before_pixels
        Passed to :func:`pydicom.dcmread`.
    error
        The exception class raised (the caller's reader error).

    Returns
    -------
    pydicom.Dataset

    Raises
    ------
    error
        The file is not DICOM, or pydicom cannot parse it; the message names the file.
    """
    import pydicom

    p = Path(path)
    with p.open("rb") as f:
        head = f.read(132)
    marked = len(head) == 132 and head[128:132] == b"DICM"
    # pydicom warns about the VR it guesses for unmarked bytes; that is noise for a file that
    # turns out not to be DICOM, so the warnings are held back until the file is accepted
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=stop_before_pixels, force=not marked)
        except Exception as e:  # InvalidDicomError, struct.error, ... on a damaged file
            if not marked:
                raise error(_not_dicom_message(p, head)) from e
            raise error(f"{p}: not a readable DICOM file: {type(e).__name__}: {e}") from e
    if not marked and not any(k in ds for k in _DICOM_EVIDENCE):
        raise error(_not_dicom_message(p, head))
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def _not_dicom_message(p: Path, head: bytes) -> str:
    return (
        f"{p}: not a DICOM file: no 'DICM' marker at byte 128 (pydicom: InvalidDicomError) and "
        f"no DICOM elements in it; it starts with {head[:24]!r}. Check that it is the exported "
        f"DICOM and not a report or a renamed file"
    )


def dicom_datetime(
    ds: Any, prefixes: Sequence[str] = ("Acquisition", "Content", "Series", "Study")
) -> datetime | None:
    """The first date-time found among ``<prefix>DateTime`` and ``<prefix>Date`` + ``Time``.

    Naive (any UTC offset in the header is dropped: the site's local time as written).
    """
    for pre in prefixes:
        dt = _parse_dt(str(ds.get(f"{pre}DateTime", "") or ""))
        if dt is not None:
            return dt
        d = _parse_da(str(ds.get(f"{pre}Date", "") or ""))
        if d is not None:
            t = _parse_tm(str(ds.get(f"{pre}Time", "") or "")) or time()
            return datetime.combine(d, t)
    return None


def _parse_da(s: str) -> date | None:
    s = re.sub(r"[.\-]", "", s.strip())
    if not re.fullmatch(r"\d{8}", s):
        return None
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None


def _parse_tm(s: str) -> time | None:
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", s.strip().replace(":", ""))
    if not m:
        return None
    try:
        return time(
            int(m[1]), int(m[2] or 0), min(int(m[3] or 0), 59), int((m[4] or "0").ljust(6, "0"))
        )
    except ValueError:
        return None


def _parse_dt(s: str) -> datetime | None:
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?", s.strip())
    if not m:
        return None
    d = _parse_da(m[1])
    if d is None:
        return None
    t = _parse_tm(m[2]) if m[2] else time()
    return datetime.combine(d, t or time())


def _text(ds: Any, keyword: str) -> str | None:
    v = ds.get(keyword)
    s = str(v).strip() if v is not None else ""
    return s or None


def _first_float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, Sequence) and not isinstance(v, str):
        if len(v) == 0:
            return None
        v = v[0]
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _dicom_pixels(ds: Any, p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality-LUT pixels ``(H, W)`` or ``(frames, H, W)`` float32, bright = dense, + info."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds:
        if "WaveformSequence" in ds:
            raise RadiologyReadError(
                f"{p}: a DICOM waveform (ECG), not an image; read it with histoxmodal.read_ecg"
            )
        raise RadiologyReadError(f"{p}: DICOM file without pixel data (no image to read)")
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoders raise many types; say which syntax failed and the fix
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise RadiologyReadError(
            f"{p}: pixel data cannot be decoded (transfer syntax "
            f"{getattr(ts, 'name', ts)}): {type(e).__name__}: {e}; a decoder plugin may be "
            f"missing: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        ) from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    info: dict[str, Any] = {"photometric": photometric, "inverted": False}
    if spp > 1:
        # pydicom returns RGB for colour data (YBR converted); radiographs stored in colour are
        # grey in all three channels, so luma loses nothing
        rgb = arr.astype(np.float32)
        out = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        info["converted_from"] = "RGB"
        return out.astype(np.float32), info
    out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    if photometric == "MONOCHROME1":
        # invert about the stored range, not the data range, so the result (and a header
        # window) does not depend on the image's content: x' = f(lo) + f(hi) - x
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = np.asarray(apply_modality_lut(np.array([lo, hi]), ds), dtype=np.float64)
        pivot = float(ends[0] + ends[1])
        out = (np.float32(pivot) - out).astype(np.float32)
        info["inverted"] = True
        info["inversion_pivot"] = pivot
    return out, info


def _dicom_window(ds: Any, info: dict[str, Any]) -> tuple[tuple[float, float] | None, str]:
    c = _first_float(ds.get("WindowCenter"))
    w = _first_float(ds.get("WindowWidth"))
    if c is not None and w is not None and w >= 1:
        if info.get("inverted"):
            # the header window is for the stored values; mirror it with the pixels
            c = info["inversion_pivot"] - c + 1
        return (c, w), "header"
    bits = int(ds.get("BitsStored", 0) or 0)
    if info.get("converted_from") == "RGB" or (bits == 8 and "RescaleSlope" not in ds):
        return (128.0, 256.0), "bit depth"  # maps 0..255 to 0..1, as for an 8-bit PNG
    return None, "data range"


def _dicom_voi(ds: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The header's non-linear VOI transform (a VOI LUT Sequence, or VOILUTFunction SIGMOID),
    applied through pydicom's ``apply_voi_lut`` and kept as a monotone table from the
    (modality-LUT, MONOCHROME1-inverted) pixel value to ``[0, 1]`` for :func:`radiology_to_unit`.

    Returns ``{"voi_transform": "lut" | "sigmoid" | "linear", "voi_table": (x, y)?}``; a LINEAR
    (or LINEAR_EXACT) function or no VOI at all stays with the window.
    """
    if info.get("converted_from") == "RGB":
        return {"voi_transform": "linear"}
    lut = ds.get("VOILUTSequence")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if lut:
        kind = "lut"
    elif function == "SIGMOID" and _dicom_window(ds, {})[1] == "header":
        kind = "sigmoid"
    else:
        return {"voi_transform": "linear"}
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored = np.arange(lo, hi + 1, dtype=np.int64)  # every stored value: an exact table
    x = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if kind == "lut":
        y = np.asarray(apply_voi_lut(np.rint(x).astype(np.int64), ds, 0, prefer_lut=True),
                       np.float64)  # fmt: skip
        y_bits = int(lut[0].LUTDescriptor[2])
        y = y / (2**y_bits - 1)
    else:
        c, w = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
        with np.errstate(over="ignore"):  # the sigmoid's asymptotes: its output range
            y = np.asarray(apply_voi_lut(x, ds, 0, prefer_lut=False), np.float64)
            ends = np.asarray(
                apply_voi_lut(np.array([c - 1e3 * w, c + 1e3 * w]), ds, 0, prefer_lut=False)
            )
        y = (y - float(ends[0])) / max(float(ends[1] - ends[0]), 1e-12)
    if info.get("inverted"):  # the pixels were mirrored about the pivot: mirror the table
        x, y = info["inversion_pivot"] - x, 1.0 - y
    order = np.argsort(x, kind="stable")
    return {
        "voi_transform": kind,
        "voi_table": (x[order].astype(np.float32), np.clip(y[order], 0, 1).astype(np.float32)),
    }


def _dicom_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        if v is not None and len(v) == 2:
            try:
                return (float(v[0]), float(v[1])), kw
            except (TypeError, ValueError):
                continue
    return None, None


def _dicom_header(ds: Any) -> dict[str, Any]:
    sop = ds.get("SOPClassUID")
    return {
        "modality": _text(ds, "Modality") or "OT",
        "patient_id": _text(ds, "PatientID"),
        "study_id": _text(ds, "StudyInstanceUID") or _text(ds, "StudyID"),
        "acquired_at": dicom_datetime(ds),
        "view": _text(ds, "ViewPosition"),
        "metadata": {
            "sop_class": str(getattr(sop, "name", sop)) if sop is not None else None,
            "sop_instance_uid": _text(ds, "SOPInstanceUID"),
            "series_id": _text(ds, "SeriesInstanceUID"),
            "study_description": _text(ds, "StudyDescription"),
            "series_description": _text(ds, "SeriesDescription"),
            "body_part": _text(ds, "BodyPartExamined"),
            "sex": _text(ds, "PatientSex"),
            "age": _text(ds, "PatientAge"),
            "bits_stored": ds.get("BitsStored"),
            "rescale_slope": _first_float(ds.get("RescaleSlope")),
            "rescale_intercept": _first_float(ds.get("RescaleIntercept")),
            "voi_lut_function": _text(ds, "VOILUTFunction"),
        },
    }


def _read_dicom_file(p: Path) -> RadiologyImage:
    ds = read_dicom_dataset(p)
    pixels, info = _dicom_pixels(ds, p)
    head = _dicom_header(ds)
    spacing, spacing_src = _dicom_spacing(ds)
    if pixels.ndim == 3 and spacing is not None:
        dz = _first_float(ds.get("SpacingBetweenSlices")) or _first_float(ds.get("SliceThickness"))
        spacing = (dz, *spacing) if dz else None
    win, win_src = _dicom_window(ds, info)
    meta = head["metadata"] | info | {"window_source": win_src, "spacing_source": spacing_src}
    meta |= _dicom_voi(ds, info)
    return RadiologyImage(
        pixels=pixels,
        modality=head["modality"],
        spacing=spacing,
        patient_id=head["patient_id"],
        study_id=head["study_id"],
        acquired_at=head["acquired_at"],
        view=head["view"],
        source_format="dicom",
        path=p,
        window=win,
        metadata=meta,
    )


def _read_dicom_series(folder: Path) -> RadiologyImage:
    """The slices of one DICOM series in a folder, stacked in patient order into ``(D, H, W)``."""
    import pydicom

    files = sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and (f.suffix.lower() == ".dcm" or _has_dicm_preamble(f))
    )
    if not files:
        raise RadiologyReadError(
            f"{folder}: a folder with no DICOM files; give a DICOM series folder or one file"
        )
    heads = [(f, read_dicom_dataset(f, stop_before_pixels=True)) for f in files]
    series: dict[str, list] = {}
    for f, ds in heads:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if len(series) > 1:
        listing = "; ".join(f"{uid or '(none)'}: {len(v)} files" for uid, v in series.items())
        raise RadiologyReadError(
            f"{folder}: holds {len(series)} DICOM series ({listing}); give a folder with the "
            f"files of one series, or one file"
        )
    items = next(iter(series.values()))
    positions = _slice_positions([ds for _, ds in items])
    if positions is not None:
        order = np.argsort(positions, kind="stable")
    else:
        order = np.argsort(
            [int(ds.get("InstanceNumber", 0) or 0) for _, ds in items], kind="stable"
        )
    slices, infos = [], []
    for i in order:
        f = items[i][0]
        ds = pydicom.dcmread(f, force=True)
        px, info = _dicom_pixels(ds, f)
        if px.ndim != 2:
            raise RadiologyReadError(
                f"{f}: a multi-frame or unexpected image {px.shape} inside a series folder; "
                f"read multi-frame files one by one"
            )
        if slices and px.shape != slices[0].shape:
            raise RadiologyReadError(
                f"{f}: slice of {px.shape[0]} x {px.shape[1]} px in a series of "
                f"{slices[0].shape[0]} x {slices[0].shape[1]} px slices; the folder mixes images"
            )
        slices.append(px)
        infos.append(info)
    first = pydicom.dcmread(items[order[0]][0], stop_before_pixels=True, force=True)
    head = _dicom_header(first)
    spacing2, spacing_src = _dicom_spacing(first)
    dz = None
    if positions is not None and len(positions) > 1:
        dz = float(np.median(np.diff(np.sort(positions))))
    dz = (
        dz
        or _first_float(first.get("SpacingBetweenSlices"))
        or _first_float(first.get("SliceThickness"))
    )
    spacing = (dz, *spacing2) if (spacing2 is not None and dz) else None
    win, win_src = _dicom_window(first, infos[0])
    meta = head["metadata"] | infos[0]
    meta |= {
        "window_source": win_src,
        "spacing_source": spacing_src,
        "n_slices": len(slices),
        "files": [str(items[i][0].name) for i in order],
        "slice_order": "position" if positions is not None else "instance number",
    }
    return RadiologyImage(
        pixels=np.stack(slices).astype(np.float32, copy=False),
        modality=head["modality"],
        spacing=spacing,
        patient_id=head["patient_id"],
        study_id=head["study_id"],
        acquired_at=head["acquired_at"],
        view=head["view"],
        source_format="dicom",
        path=folder,
        window=win,
        metadata=meta,
    )


def _slice_positions(dss: list) -> np.ndarray | None:
    """Each slice's position along the slice normal (mm), or None when the header lacks it."""
    try:
        orient = np.asarray(dss[0].ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(orient[:3], orient[3:])
        return np.array(
            [float(np.dot(np.asarray(ds.ImagePositionPatient, np.float64), normal)) for ds in dss]
        )
    except (AttributeError, TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- Pillow, NIfTI


def _read_pillow(p: Path) -> RadiologyImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            fmt = im.format or p.suffix.lstrip(".").upper()
            mode = im.mode
            if mode in ("L", "I", "F") or mode.startswith("I;16"):
                arr = np.asarray(im)
            else:  # RGB, RGBA, P, LA, 1, CMYK: ITU-R 601-2 luma
                arr = np.asarray(im.convert("L"))
            dpi = im.info.get("dpi")
    except (UnidentifiedImageError, OSError) as e:
        raise RadiologyReadError(f"{p}: not a readable image: {e}") from e
    pixels = arr.astype(np.float32)
    win, src = ((128.0, 256.0), "bit depth") if arr.dtype == np.uint8 else (None, "data range")
    meta: dict[str, Any] = {"mode": mode, "window_source": src}
    if dpi:
        meta["dpi"] = tuple(float(d) for d in dpi)
    return RadiologyImage(
        pixels=pixels,
        modality=fmt,
        spacing=None,  # a PNG's dpi is a print size, not the detector's pixel pitch
        patient_id=None,
        study_id=None,
        acquired_at=None,
        view=None,
        source_format=fmt.lower(),
        path=p,
        window=win,
        metadata=meta,
    )


def _read_nifti(p: Path) -> RadiologyImage:
    import nibabel as nib

    try:
        img = nib.load(p)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib errors...
        raise RadiologyReadError(f"{p}: not a readable NIfTI file: {type(e).__name__}: {e}") from e
    zooms = tuple(float(z) for z in img.header.get_zooms())
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim not in (2, 3):
        raise RadiologyReadError(
            f"{p}: a {data.ndim}-D NIfTI image {data.shape}; give a 2-D image or a 3-D volume "
            f"(for a time series, save one volume, e.g. nibabel's img.slicer[..., t])"
        )
    space_unit = img.header.get_xyzt_units()[0] or "unknown"
    to_mm = _NIFTI_TO_MM.get(space_unit, 1.0)
    nd = data.ndim
    # NIfTI stores (x, y, z) with x along the rows of memory; (D, H, W) is (z, y, x)
    pixels = np.ascontiguousarray(data.transpose(tuple(range(nd))[::-1]), dtype=np.float32)
    spacing = tuple(z * to_mm for z in zooms[:nd][::-1])
    descrip = img.header.get("descrip")
    meta = {
        "affine": np.asarray(img.affine).tolist(),
        "axis_order": "zyx" if nd == 3 else "yx",
        "space_unit": space_unit,
        "descrip": descrip.item().decode(errors="replace").strip() if descrip is not None else "",
        "window_source": "data range",
    }
    return RadiologyImage(
        pixels=pixels,
        modality="NIfTI",
        spacing=spacing,
        patient_id=None,
        study_id=None,
        acquired_at=None,
        view=None,
        source_format="nifti",
        path=p,
        window=None,
        metadata=meta,
    )


# ------------------------------------------------------------------------------------ resize


def _resize(img: RadiologyImage, size: tuple[int, ...]) -> RadiologyImage:
    """Resize with Pillow's anti-aliased bilinear filter per slice (float32 kept)."""
    from PIL import Image

    px = img.pixels
    if len(size) == 3 and px.ndim == 2:
        raise ConfigError(f"size={size}: a 2-D image {px.shape} takes size=(H, W)")
    h, w = size[-2:]
    old = px.shape

    def one(sl: np.ndarray) -> np.ndarray:
        if sl.shape == (h, w):
            return sl
        im = Image.fromarray(np.ascontiguousarray(sl, dtype=np.float32))
        return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)

    if px.ndim == 2:
        out = one(px)
    else:
        out = np.stack([one(s) for s in px])
        if len(size) == 3 and size[0] != out.shape[0]:
            from scipy.ndimage import zoom

            out = zoom(out, (size[0] / out.shape[0], 1, 1), order=1, mode="nearest")
            out = out.astype(np.float32, copy=False)
    spacing = img.spacing
    if spacing is not None:
        spacing = tuple(s * o / n for s, o, n in zip(spacing, old, out.shape, strict=True))
    meta = dict(img.metadata)
    meta["original_shape"] = old
    return replace(img, pixels=out, spacing=spacing, metadata=meta)


__all__ = [
    "RadiologyImage",
    "RadiologyReadError",
    "dicom_datetime",
    "radiology_to_unit",
    "read_dicom_dataset",
    "read_radiology",
    "window_range",
]
