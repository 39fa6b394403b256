"""Tissue detection on a low-resolution image of the slide.

Saturation thresholding (Otsu, with a floor so blank glass stays blank), morphological closing
and opening, removal of small objects, filling of small holes. The result is a :class:`TissueMask`
with polygons in level-0 pixels that export to GeoJSON (QuPath opens it).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoxmodal.errors import ConfigError

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    """Tissue-detection settings, in physical units so they mean the same on every scanner.

    Parameters
    ----------
    detect_mpp
        µm/px of the image the mask is computed on (8 µm/px: a 25 mm section is ~3,000 px);
        slides smaller than 1,024 mask pixels at that size are detected finer.
    max_side
        Cap on the mask's longer side in pixels, so memory stays bounded on any slide size.
    min_saturation
        Floor on the saturation threshold (0-255): glass and faint dust stay out even when
        Otsu's threshold on an almost empty slide would be tiny.
    close_um
        Closing radius (µm) that joins tissue fragments split by thin gaps.
    open_um
        Opening radius (µm) that removes specks.
    min_area_um2
        Objects smaller than this (µm²) are dropped (dust, debris).
    max_hole_um2
        Holes smaller than this (µm²) are filled; larger ones (lumina, big fat) are kept.
    """

    detect_mpp: float = 8.0
    max_side: int = 4096
    min_saturation: int = 20
    close_um: float = 32.0
    open_um: float = 16.0
    min_area_um2: float = 10_000.0
    max_hole_um2: float = 100_000.0

    def __post_init__(self) -> None:
        if not self.detect_mpp > 0:
            raise ConfigError(f"detect_mpp={self.detect_mpp} must be positive (µm/px)")
        if self.max_side < 64:
            raise ConfigError(f"max_side={self.max_side} must be at least 64 pixels")


@dataclass
class TissueMask:
    """A binary tissue mask on a downsampled grid of the slide.

    Attributes
    ----------
    mask
        ``(h, w)`` bool; pixel ``(i, j)`` covers level-0 ``[j*dx, (j+1)*dx) × [i*dy, (i+1)*dy)``.
    downsample
        ``(dx, dy)`` level-0 pixels per mask pixel.
    polygons
        One entry per tissue region: ``{"exterior": (n, 2) array, "holes": [(m, 2) arrays]}``,
        level-0 ``(x, y)`` coordinates.
    thumbnail
        ``(h, w, 3)`` RGB image the mask was computed on (for overlays).
    threshold
        Saturation threshold used (0-255).
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    polygons: list[dict[str, object]] = field(default_factory=list)
    thumbnail: np.ndarray | None = None
    threshold: float = float("nan")
    _integral: np.ndarray | None = field(default=None, repr=False)

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_um2(self, mpp: float) -> float:
        """Tissue area in µm² given the level-0 pixel size."""
        dx, dy = self.downsample
        return float(self.mask.sum()) * dx * dy * mpp * mpp

    def fraction(self, coords: np.ndarray, size_level0: int) -> np.ndarray:
        """Tissue fraction of square tiles.

        A tile at level-0 ``(x, y)`` of side ``s`` covers mask columns
        ``floor(x/dx + 0.5) .. max(c0 + 1, floor((x + s)/dx + 0.5))`` (and rows likewise),
        clipped to the mask; the fraction is the mean of the mask over that window.

        Parameters
        ----------
        coords
            ``(n, 2)`` level-0 ``(x, y)`` top-left corners.
        size_level0
            Tile side in level-0 pixels.

        Returns
        -------
        np.ndarray
            ``(n,)`` float in [0, 1].
        """
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        if self._integral is None:
            # int32 holds counts up to 2^31: far above a mask capped at max_side² pixels
            ii = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int32)
            np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int32), axis=1, out=ii[1:, 1:])
            self._integral = ii
        h, w = self.mask.shape
        dx, dy = self.downsample
        c0 = np.floor(coords[:, 0] / dx + 0.5).astype(np.int64)
        r0 = np.floor(coords[:, 1] / dy + 0.5).astype(np.int64)
        c1 = np.maximum(c0 + 1, np.floor((coords[:, 0] + size_level0) / dx + 0.5).astype(np.int64))
        r1 = np.maximum(r0 + 1, np.floor((coords[:, 1] + size_level0) / dy + 0.5).astype(np.int64))
        area = ((c1 - c0) * (r1 - r0)).astype(np.float64)
        c0, c1 = np.clip(c0, 0, w), np.clip(c1, 0, w)
        r0, r1 = np.clip(r0, 0, h), np.clip(r1, 0, h)
        ii = self._integral
        s = ii[r1, c1].astype(np.int64) - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return s / area

    def to_geojson(self, *, name: str = "Tissue") -> dict[str, object]:
        """A GeoJSON FeatureCollection of the tissue polygons in level-0 pixels (QuPath-ready)."""
        features = []
        for i, poly in enumerate(self.polygons):
            rings = [poly["exterior"], *poly["holes"]]  # type: ignore[misc]
            coords = []
            for ring in rings:
                pts = np.asarray(ring, dtype=float).round(1).tolist()
                if pts and pts[0] != pts[-1]:
                    pts.append(pts[0])
                coords.append(pts)
            features.append(
                {
                    "type": "Feature",
                    "id": f"tissue-{i}",
                    "geometry": {"type": "Polygon", "coordinates": coords},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": [0, 160, 80]},
                    },
                }
            )
        return {"type": "FeatureCollection", "features": features}

    def write_geojson(self, path: str | Path) -> None:
        """Write :meth:`to_geojson` to ``path``."""
        Path(path).write_text(json.dumps(self.to_geojson()), encoding="utf-8")


def _disk(radius_px: float) -> np.ndarray | None:
    import cv2

    r = round(radius_px)
    if r < 1:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def mask_from_image(
    rgb: np.ndarray, mask_mpp: float, params: TissueParams = TissueParams()
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB image whose pixels are ``mask_mpp`` µm wide.

    Returns
    -------
    mask
        ``(h, w)`` bool.
    threshold
        The saturation threshold used (0-255).
    """
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(hsv[:, :, 1], 5)
    # near-black pixels (scanner borders, folds in shadow) have meaningless saturation
    dark = hsv[:, :, 2] < 30
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(otsu), float(params.min_saturation))
    mask = ((sat > thr) & ~dark).astype(np.uint8)
    k = _disk(params.close_um / mask_mpp)
    if k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
    k = _disk(params.open_um / mask_mpp)
    if k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
    px_area = mask_mpp * mask_mpp
    # drop small objects
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] * px_area >= params.min_area_um2
    keep[0] = False
    mask = keep[labels]
    # fill small holes: background components that do not touch the border
    inv = (~mask).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    fill = (~touches) & (stats[:, cv2.CC_STAT_AREA] * px_area < params.max_hole_um2)
    fill[0] = False  # label 0 is the tissue itself
    mask = mask | (fill[labels] & inv.astype(bool))
    return mask, thr


def mask_polygons(mask: np.ndarray, downsample: tuple[float, float]) -> list[dict[str, object]]:
    """Outer boundaries and holes of a mask, scaled to level-0 ``(x, y)``."""
    import cv2

    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    scale = np.array(downsample, dtype=np.float64)
    polys: list[dict[str, object]] = []
    for i, cnt in enumerate(contours):
        if hierarchy[i][3] != -1 or len(cnt) < 3:
            continue  # holes are attached to their parent below
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(contours[child][:, 0, :] * scale)
            child = hierarchy[child][0]
        polys.append({"exterior": cnt[:, 0, :] * scale, "holes": holes})
    return polys


def detect_tissue(slide: SlideReader, params: TissueParams | None = None) -> TissueMask:
    """Detect tissue on a low-resolution image of ``slide`` (never level 0 of a pyramid).

    Parameters
    ----------
    slide
        An opened slide with a known pixel size.
    params
        Detection settings; defaults suit H&E.

    Returns
    -------
    TissueMask
        Mask at about ``params.detect_mpp`` µm/px (coarser if ``max_side`` caps it), with
        polygons and the thumbnail it was computed on.
    """
    params = params or TissueParams()
    mpp = slide.require_mpp()
    W, H = slide.dimensions
    # coarse enough to be fast, fine enough that small slides still get a ~1,000 px mask
    ds = max(1.0, min(params.detect_mpp / mpp, max(W, H) / 1024), max(W, H) / params.max_side)
    thumb = slide.get_thumbnail(mpp=ds * mpp)
    th, tw = thumb.shape[:2]
    downsample = (W / tw, H / th)
    mask_mpp = math.sqrt(downsample[0] * downsample[1]) * mpp
    mask, thr = mask_from_image(thumb, mask_mpp, params)
    log.debug("%s: tissue threshold %.1f, %.1f%% tissue", slide.path.name, thr, 100 * mask.mean())
    return TissueMask(mask, downsample, mask_polygons(mask, downsample), thumb, thr)
