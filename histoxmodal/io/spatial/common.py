"""Helpers shared by the spatial readers: the AnnData contract, images, pixel sizes, checks."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import MissingSpatialFileError as MissingSpatialFileError
from histoxmodal.errors import SpatialFormatError as SpatialFormatError

log = logging.getLogger(__name__)

#: longest side of the ``hires`` / ``lowres`` images stored in ``uns['spatial']``
HIRES_MAX_SIDE = 2000
LOWRES_MAX_SIDE = 600
#: two pixel-size sources further apart than this are reported
MPP_TOLERANCE = 0.10


#: the columns of Space Ranger's ``tissue_positions`` table (Visium's CSV, Visium HD's parquet)
TISSUE_POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it exists, else a ``FileNotFoundError`` naming what it should hold."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))
    return path


def absolute(path: str | Path) -> str:
    """``path`` as an absolute, normalised path string, recorded so that it still names the
    file from another working folder. Symlinks are kept, not resolved: a link's name and suffix
    may be what says which reader opens it."""
    return os.path.abspath(os.fspath(path))


def unique_gene_names(names: Sequence[str], source: str) -> list[str]:
    """Make gene names unique (``X``, ``X-1``, ``X-2``, ...), warning about how many repeat."""
    import pandas as pd

    idx = pd.Index([str(n) for n in names])
    if idx.is_unique:
        return list(idx)
    dup = idx[idx.duplicated()].unique()
    warnings.warn(
        f"{source}: {len(dup)} gene names occur more than once (e.g. {', '.join(dup[:5])}); "
        f"made unique by appending -1, -2, ... (var['gene_ids'] keeps the original ids)",
        UserWarning,
        stacklevel=3,
    )
    seen: dict[str, int] = {}
    out = []
    for n in idx:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}-{k}")
        seen[n] = k + 1
    return out


#: the largest count the stored matrices hold (int32)
MAX_COUNT = int(np.iinfo(np.int32).max)


def counts_problem(x: Any) -> tuple[str, str] | None:
    """Why the (sparse or dense) matrix ``x`` is not raw counts, or ``None`` when it is.

    Raw counts are finite, non-negative whole numbers that fit in int32. Every stored value is
    checked (a sparse matrix's nonzeros only), so one bad cell anywhere is found.

    Returns
    -------
    tuple of (kind, text) or None
        ``kind`` is one of ``"type"``, ``"nonfinite"``, ``"negative"``, ``"too_large"``,
        ``"fraction"`` (values that look normalised); ``text`` says it in words, e.g. "holds
        negative values (as low as -7); counts cannot be negative".
    """
    import scipy.sparse as sp

    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if data.size == 0:
        return None
    if data.dtype.kind not in "iufb":
        return "type", f"holds {data.dtype} values, not numbers"
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            return "nonfinite", f"holds {int(bad.sum())} NaN or infinite value(s)"
    lo, hi = data.min(), data.max()
    if lo < 0:
        return "negative", f"holds negative values (as low as {lo:.6g}); counts cannot be negative"
    if hi > MAX_COUNT:
        return "too_large", (
            f"holds values up to {hi:.6g}, beyond the largest count stored ({MAX_COUNT})"
        )
    if data.dtype.kind == "f":
        frac = np.mod(data, 1) != 0
        if frac.any():
            return "fraction", (
                f"holds non-integer values ({int(frac.sum())} of {data.size} stored values, "
                f"e.g. {data[frac][0]:.6g}); this looks normalised"
            )
    return None


def to_counts_csr(x: Any):
    """A CSR matrix of ``x``, int32 when it holds raw counts (:func:`counts_problem`), else with
    its own dtype: values that are not counts are never cast (truncated, wrapped)."""
    import scipy.sparse as sp

    m = sp.csr_matrix(x)
    if counts_problem(m) is None:
        m = m.astype(np.int32)
    return m


def counts_are_raw(x: Any) -> bool:
    """True when the (sparse or dense) matrix holds raw counts: finite, non-negative whole
    numbers that fit in int32 (see :func:`counts_problem`)."""
    return counts_problem(x) is None


def is_blank(img: np.ndarray) -> bool:
    """A placeholder image: (almost) one flat value everywhere (std under one 8-bit level).

    Float images in ``[0, 1]`` (as scanpy stores them in ``uns['spatial']``) are measured in
    the same 8-bit levels, so a real float image is not taken for a blank one.
    """
    if img.size == 0:
        return True
    a = np.asarray(img, np.float32)
    if np.issubdtype(np.asarray(img).dtype, np.floating) and float(np.nanmax(a)) <= 1.0:
        a = a * 255.0
    return bool(float(a.std()) < 1.0)


def shrink(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most ``max_side``; returns the image and its scale."""
    import cv2

    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s == 1.0:
        return img, 1.0
    out = cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )
    return out, out.shape[1] / w


def images_from_full(path: Path) -> tuple[dict[str, np.ndarray], dict[str, float], tuple[int, int]]:
    """``hires`` and ``lowres`` images and their scale factors from a full-resolution image.

    Read through :func:`histoxmodal.open_slide`, from a low-resolution level where one exists
    (a JPEG is decoded at 1/4 or 1/8 scale), never holding the full image just for this.
    """
    from histoxmodal.io.slide import open_slide

    with open_slide(path, allow_implausible_mpp=True) as s:
        W, H = s.dimensions
        hires = s.get_thumbnail(max_size=min(HIRES_MAX_SIDE, max(W, H)))
    lowres, _ = shrink(hires, LOWRES_MAX_SIDE)
    scal = {
        keys.SCALEF_HIRES: hires.shape[1] / W,
        keys.SCALEF_LOWRES: lowres.shape[1] / W,
    }
    return {"hires": hires, "lowres": lowres}, scal, (W, H)


def reconcile_mpp(candidates: list[tuple[float, str]], where: str) -> tuple[float, str]:
    """Pick the first pixel size of ``candidates`` (ordered by trust); warn on disagreement.

    Parameters
    ----------
    candidates
        ``(µm per pixel, source description)``, most trusted first; ``None`` values are skipped.
    where
        The sample or file, for messages.
    """
    cands = [(float(v), s) for v, s in candidates if v is not None and math.isfinite(v) and v > 0]
    if not cands:
        raise SpatialFormatError(
            f"{where}: no pixel size could be determined; pass mpp= (µm per full-resolution "
            f"pixel) to the reader or --mpp to histoxmodal build"
        )
    best, src = cands[0]
    for v, s in cands[1:]:
        if abs(v - best) / best > MPP_TOLERANCE:
            warnings.warn(
                f"{where}: pixel sizes disagree by {100 * abs(v - best) / best:.0f}%: "
                f"{best:.4g} µm/px ({src}) vs {v:.4g} µm/px ({s}); using {best:.4g} from {src}",
                UserWarning,
                stacklevel=3,
            )
    return best, src


def check_coords_in_image(
    xy: np.ndarray,
    size: tuple[int, int],
    where: str,
    scalefactors: dict[str, float] | None = None,
    tolerance_px: float = 2.0,
) -> None:
    """Raise when spot centres fall outside the full-resolution image, with a diagnosis.

    The usual cause is a scale mix-up: full-resolution coordinates against the hires or lowres
    image (or the reverse); the message names the scale factor that fixes it.
    """
    W, H = size
    if len(xy) == 0:
        return
    xmax, ymax = float(np.max(xy[:, 0])), float(np.max(xy[:, 1]))
    xmin, ymin = float(np.min(xy[:, 0])), float(np.min(xy[:, 1]))
    if (
        xmin >= -tolerance_px
        and ymin >= -tolerance_px
        and xmax <= W + tolerance_px
        and ymax <= H + tolerance_px
    ):
        # inside, but squeezed into the top-left corner: scaled-image coordinates?
        for key, name in ((keys.SCALEF_HIRES, "hires"), (keys.SCALEF_LOWRES, "lowres")):
            f = (scalefactors or {}).get(key)
            if f and 0 < f < 0.5 and xmax <= W * f * 1.05 and ymax <= H * f * 1.05:
                warnings.warn(
                    f"{where}: all spots lie within the top-left {100 * f:.0f}% of the image "
                    f"({W} x {H} px); are they {name}-image coordinates? If so divide them by "
                    f"{key}={f:.5g}",
                    UserWarning,
                    stacklevel=3,
                )
                break
        return
    msg = (
        f"{where}: spot coordinates (x up to {xmax:.0f}, y up to {ymax:.0f}) exceed the "
        f"image ({W} x {H} px)."
    )
    ratio = max(xmax / W, ymax / H)
    for key, name in ((keys.SCALEF_HIRES, "hires"), (keys.SCALEF_LOWRES, "lowres")):
        f = (scalefactors or {}).get(key)
        if f and 0 < f < 1 and ratio * f <= 1.02 and ratio * f > 0.5:
            msg += (
                f" They look like full-resolution coordinates against the {name} image: "
                f"multiply the coordinates by {key}={f:.5g} or give the full-resolution "
                f"image."
            )
            break
    else:
        msg += (
            " Are they in another image's pixels (hires/lowres, or a different scan)? "
            "Scale them by the matching scale factor or pass the image they refer to."
        )
    raise SpatialFormatError(msg)


def finalize(
    adata,
    *,
    sample: str,
    patient: str | None,
    batch: str | None,
    images: dict[str, np.ndarray],
    scalefactors: dict[str, float],
    metadata: dict[str, Any],
):
    """Apply the AnnData contract of :mod:`histoxmodal.keys` in place and return ``adata``."""
    import pandas as pd

    adata.obs[keys.OBS_SAMPLE] = pd.Categorical([sample] * adata.n_obs)
    adata.obs[keys.OBS_PATIENT] = pd.Categorical([patient or sample] * adata.n_obs)
    adata.obs[keys.OBS_BATCH] = pd.Categorical([batch or sample] * adata.n_obs)
    adata.obs_names = [f"{sample}:{b}" for b in adata.obs_names]
    problem = counts_problem(adata.X)
    raw = problem is None
    if raw:
        adata.X = to_counts_csr(adata.X)
    else:
        warnings.warn(
            f"{sample}: X {problem[1]}, so it does not hold raw integer counts; its values "
            f"are kept unchanged (not cast to integers) and flagged (metadata counts_are_raw "
            f"= False); `histoxmodal build` refuses such a sample",
            UserWarning,
            stacklevel=3,
        )
    metadata = {**metadata, "counts_are_raw": raw}
    adata.uns[keys.UNS_SPATIAL] = {
        sample: {"images": images, "scalefactors": scalefactors, "metadata": metadata}
    }
    return adata


def library_id(adata) -> str:
    """The single library id of a one-sample AnnData (``uns['spatial']`` key)."""
    libs = list(adata.uns.get(keys.UNS_SPATIAL, {}))
    if len(libs) != 1:
        raise SpatialFormatError(
            f"expected one library in uns['spatial'], found {len(libs)}: {libs}; select one "
            f"sample first (adata[adata.obs['sample'] == ...])"
        )
    return libs[0]
