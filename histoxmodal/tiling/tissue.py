"""Tissue detection on a low-resolution image of the slide.

Methods, selected by name (``detect_tissue(slide, method=...)`` or ``TissueParams(method=...)``):

``"background-hysteresis"`` (the default)
    The glass colour is estimated at the slide border; each pixel's colour distance from it
    (CIELAB ΔE) is smoothed at a physical scale and thresholded with hysteresis: strong seeds
    (Otsu's threshold, floored at ``min_contrast`` and at the border's noise) grow into weak
    connected tissue (``hysteresis_low`` of the strong threshold), so pale stroma joins the section.
    Pen marks (strongly saturated green/blue, near-black) are removed; closing, hole filling
    (fat enclosed by tissue is tissue) and small-object removal work in µm and µm².
``"saturation-otsu"``
    The former default: HSV saturation, Otsu's threshold with a floor, the same clean-up. It
    treats pale stroma and fat as background (her2st B4 recall 0.80 against the spot table).
``"deep:<name>"``
    A registered deep segmenter (:data:`TISSUE_SEGMENTERS`, e.g. ``"deep:unet"``) built
    from local ``weights=``; the torch code lives in :mod:`histoxmodal.encoders.tissue`.

The result is a :class:`TissueMask` with polygons in level-0 pixels that export to GeoJSON
(QuPath opens it) and a JSON-able :attr:`TissueMask.provenance` (method, parameters, thresholds).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from histoxmodal.errors import ConfigError
from histoxmodal.registry import Registry
from histoxmodal.reprs import fmt_mpp, safe_repr

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader

log = logging.getLogger(__name__)

DEFAULT_METHOD = "background-hysteresis"


@dataclass(frozen=True)
class TissueParams:
    """Tissue-detection settings, in physical units so they mean the same on every scanner.

    Parameters
    ----------
    method
        Detection method: ``"background-hysteresis"`` (default), ``"saturation-otsu"`` (the
        former default), or ``"deep:<name>"`` (see :func:`detect_tissue`).
    detect_mpp
        µm/px of the image the mask is computed on (8 µm/px: a 25 mm section is ~3,000 px);
        slides smaller than 1,024 mask pixels at that size are detected finer.
    max_side
        Cap on the mask's longer side in pixels, so memory stays bounded on any slide size.
    min_saturation
        ``saturation-otsu``: floor on the saturation threshold (0-255), so glass and faint dust
        stay out even when Otsu's threshold on an almost empty slide would be tiny.
    min_contrast
        ``background-hysteresis``: floor on the strong threshold, in ΔE from the glass colour
        (a blank slide stays blank).
    hysteresis_low
        ``background-hysteresis``: the weak threshold as a fraction of the strong one; weak
        pixels are tissue only when connected to a strong seed.
    lightness_weight
        ``background-hysteresis``: weight of the lightness difference against the colour
        difference; 1 is plain CIE76 ΔE. Below 1 grey things (fiducials, shadows) count less,
        but pale haze around a section grows into the mask (her2st, measured).
    smooth_um
        ``background-hysteresis``: Gaussian smoothing (FWHM-like width, µm) of the distance
        image before thresholding.
    remove_pen
        ``background-hysteresis``: remove strongly saturated green/blue and near-black pixels
        (pen marks, scanner borders) before thresholding.
    close_um
        Closing radius (µm) that joins tissue fragments split by thin gaps.
    open_um
        Opening radius (µm) that removes specks.
    min_area_um2
        Objects smaller than this (µm²) are dropped (dust, debris).
    max_hole_um2
        Holes smaller than this (µm²) are filled (fat enclosed by tissue, small tears); larger
        ones (lumina, big fat) are kept as holes.
    """

    method: str = DEFAULT_METHOD
    detect_mpp: float = 8.0
    max_side: int = 4096
    min_saturation: int = 20
    min_contrast: float = 4.0
    hysteresis_low: float = 0.6
    lightness_weight: float = 1.0
    smooth_um: float = 8.0
    remove_pen: bool = True
    close_um: float = 32.0
    open_um: float = 16.0
    min_area_um2: float = 10_000.0
    max_hole_um2: float = 100_000.0

    def __post_init__(self) -> None:
        if not self.detect_mpp > 0:
            raise ConfigError(f"detect_mpp={self.detect_mpp} must be positive (µm/px)")
        if self.max_side < 64:
            raise ConfigError(f"max_side={self.max_side} must be at least 64 pixels")
        if not 0 < self.hysteresis_low <= 1:
            raise ConfigError(
                f"hysteresis_low={self.hysteresis_low} must be in (0, 1] (a fraction of the "
                f"strong threshold; 1 disables hysteresis)"
            )
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(
                f"method={self.method!r} must be a method name, one of "
                f"{', '.join(TISSUE_METHODS.list())} or 'deep:<name>'"
            )


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
        The method's threshold: saturation (0-255) for ``saturation-otsu``, the strong ΔE
        for ``background-hysteresis``, the probability for a deep segmenter.
    provenance
        How the mask was made, JSON-able: ``method``, ``params`` (every setting that applies),
        the thresholds and colours measured on this slide, ``mask_mpp``, ``downsample``, and
        for a deep segmenter its weights file and SHA-256. Record it beside the mask.
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    polygons: list[dict[str, object]] = field(default_factory=list)
    thumbnail: np.ndarray | None = None
    threshold: float = float("nan")
    provenance: dict[str, Any] = field(default_factory=dict)
    _integral: np.ndarray | None = field(default=None, repr=False)

    @safe_repr
    def __repr__(self) -> str:
        h, w = self.mask.shape[:2]
        mask_mpp = self.provenance.get("mask_mpp")
        scale = f"at {fmt_mpp(mask_mpp)}" if mask_mpp else f"at /{self.downsample[0]:.3g}"
        n = len(self.polygons)
        method = self.provenance.get("method")
        how = f", method={method!r}" if method else ""
        return (
            f"TissueMask({w}×{h} px {scale}, tissue {100 * self.area_fraction:.1f} %, "
            f"{n} region{'' if n == 1 else 's'}{how})"
        )

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


#: Classic detectors: ``name -> fn(rgb, mask_mpp, params) -> (mask, info)``, ``info`` JSON-able
#: with at least ``"threshold"``.
TISSUE_METHODS: Registry[Callable[..., tuple[np.ndarray, dict[str, Any]]]] = Registry(
    "tissue detection method"
)
#: Deep segmenters: ``name -> factory(*, weights=None, **kwargs) -> TissueSegmenter``. Entries
#: are registered by :mod:`histoxmodal.encoders.tissue` (torch); see :func:`detect_tissue`.
TISSUE_SEGMENTERS: Registry[Callable[..., TissueSegmenter]] = Registry("tissue segmenter")
#: Modules that register deep segmenters, imported only when a ``"deep:"`` method is asked for.
#: Named as strings on purpose: tiling never imports torch, so the provider is found at run
#: time, the way a plugin is (the import-linter contracts see no import of it from here).
SEGMENTER_PROVIDERS = ("histoxmodal.encoders.tissue",)


@runtime_checkable
class TissueSegmenter(Protocol):
    """A model that maps an RGB image to a tissue probability, at a stated pixel size."""

    #: µm/px of the images the model expects.
    mpp: float

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB -> ``(h, w)`` float tissue probability in [0, 1]."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: name, architecture, weights path and SHA-256."""
        ...


def _disk(radius_px: float) -> np.ndarray | None:
    import cv2

    r = round(radius_px)
    if r < 1:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Connected-component labels of a bool mask (0 = background), int32.

    OpenCV's labelling, not ``skimage.measure.label``: the same components (tested against
    it), and detection then never imports SciPy, which skimage's labelling, filters and colour
    conversion pull in (0.3 s of a 1.6 s ``histoxmodal tile`` run on a 1,400-tile slide).
    """
    import cv2

    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity)
    return labels


def _drop_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected objects of fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels = _components(mask, 8)
    keep = np.bincount(labels.ravel()) >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill 4-connected background components of fewer than ``max_px`` pixels that do not
    touch the image border (``skimage.morphology.remove_small_holes`` would also fill notches
    cut by the border)."""
    if max_px <= 1 or mask.all():
        return mask
    # a background frame joins every border-touching component into one (label at [0, 0])
    padded = _components(np.pad(~mask, 1, constant_values=True), 4)
    fill = np.bincount(padded.ravel()) < max_px
    fill[0] = False  # the tissue itself
    fill[padded[0, 0]] = False
    return mask | fill[padded[1:-1, 1:-1]]


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65; L in [0, 100]) of uint8 sRGB, float32: OpenCV's conversion, within 0.4 ΔE
    of ``skimage.color.rgb2lab`` and about ten times faster."""
    import cv2

    return cv2.cvtColor(np.asarray(rgb, np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with edge replication and a kernel truncated at 4 sigma: the result of
    ``skimage.filters.gaussian(image, sigma, preserve_range=True)`` (to 1e-12), via OpenCV."""
    import cv2

    r = int(4.0 * sigma + 0.5)
    return cv2.GaussianBlur(image, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REPLICATE)


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of a float image over ``nbins`` bins between its minimum and maximum,
    as ``skimage.filters.threshold_otsu`` computes it (tested against it).

    Written out because OpenCV's Otsu takes 8- or 16-bit images only (it would quantise the
    colour distance) and skimage's import brings SciPy into tiling (see :func:`_components`).
    """
    values = np.asarray(image, np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=nbins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.cumsum(hist * centres) / w1
        m2 = (np.cumsum((hist * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def hysteresis_threshold(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixels above ``low`` whose 4-connected component reaches above ``high``: the mask
    ``skimage.filters.apply_hysteresis_threshold`` returns (tested against it)."""
    labels = _components(image > low, 4)
    seeded = np.zeros(int(labels.max()) + 1, bool)
    seeded[labels[image > high]] = True
    seeded[0] = False
    return seeded[labels]


def _cleanup(mask: np.ndarray, mask_mpp: float, params: TissueParams) -> np.ndarray:
    """Closing, opening, small-object removal and hole filling, all at physical scales."""
    import cv2

    mask = mask.astype(np.uint8)
    k = _disk(params.close_um / mask_mpp)
    if k is not None:
        # padded so tissue touching the image edge is not eroded by the border
        r = k.shape[0] // 2
        padded = cv2.copyMakeBorder(mask, r, r, r, r, cv2.BORDER_REPLICATE)
        mask = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, k)[r:-r, r:-r]
    k = _disk(params.open_um / mask_mpp)
    if k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
    px_area = mask_mpp * mask_mpp
    out = _drop_small_objects(mask.astype(bool), params.min_area_um2 / px_area)
    return _fill_small_holes(out, params.max_hole_um2 / px_area)


@TISSUE_METHODS.register("saturation-otsu")
def saturation_otsu(
    rgb: np.ndarray, mask_mpp: float, params: TissueParams
) -> tuple[np.ndarray, dict[str, Any]]:
    """HSV saturation above Otsu's threshold (floored at ``min_saturation``); the former default."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(hsv[:, :, 1], 5)
    # near-black pixels (scanner borders, folds in shadow) have meaningless saturation
    dark = hsv[:, :, 2] < 30
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(otsu), float(params.min_saturation))
    mask = (sat > thr) & ~dark
    return _cleanup(mask, mask_mpp, params), {"threshold": thr}


def border_pixels(image: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """The pixels of the outer ``frac`` of each side: ``(n, channels)``."""
    h, w = image.shape[:2]
    b = max(2, int(frac * min(h, w)))
    img = image.reshape(h, w, -1)
    parts = [img[:b], img[-b:], img[b:-b, :b], img[b:-b, -b:]]
    return np.concatenate([p.reshape(-1, img.shape[2]) for p in parts])


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pen marks and scanner borders: strongly saturated green to blue, or near-black.

    Haematoxylin at low resolution sits at hues 225-310° (navy to purple), eosin at 300-350°;
    marker ink is greener or bluer (60-215°) and far more saturated, or black.

    Returns
    -------
    np.ndarray
        ``(h, w)`` bool.
    """
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hue = hsv[:, :, 0].astype(np.float32) * (360.0 / 256.0)
    sat, val = hsv[:, :, 1], hsv[:, :, 2]
    coloured = (hue > 60) & (hue < 215) & (sat > 100)
    return coloured | (val < 30)


@TISSUE_METHODS.register("background-hysteresis")
def background_hysteresis(
    rgb: np.ndarray, mask_mpp: float, params: TissueParams
) -> tuple[np.ndarray, dict[str, Any]]:
    """Colour distance from the border's glass colour, with hysteresis; the default."""
    # Lab and the colour difference in row stripes of about 1 Mpx: rgb2lab's float64
    # temporaries stay small (whole-image, they peaked at ~100 bytes per mask pixel: 1 GB for
    # a 25 mm slide at 8 µm/px); only the distance image is kept
    step = max(1, 1_000_000 // max(1, rgb.shape[1]))
    pen = pen_mask(rgb) if params.remove_pen else np.zeros(rgb.shape[:2], bool)
    # rgb2lab is per pixel: the border's Lab values need only the border's pixels
    ring = rgb_to_lab(border_pixels(rgb)[:, None, :])[:, 0, :].astype(np.float64)
    border = ring[~border_pixels(pen[..., None])[:, 0]]
    if len(border) == 0:
        border = ring
    # the brighter half of the border: tissue or a label cut by the border does not shift it
    bright = border[border[:, 0] >= np.median(border[:, 0])]
    bg = np.median(bright, axis=0)
    weight = np.array([params.lightness_weight, 1.0, 1.0])
    dist = np.empty(rgb.shape[:2], np.float64)
    for r in range(0, rgb.shape[0], step):
        diff = (rgb_to_lab(rgb[r : r + step]) - bg) * weight
        dist[r : r + step] = np.sqrt((diff * diff).sum(axis=-1))
    del diff
    dist[pen] = 0.0
    sigma = params.smooth_um / mask_mpp / 2.0
    if sigma > 0.3:
        dist = gaussian(dist, sigma)
    edge = border_pixels(dist[..., None])[:, 0]
    med = float(np.median(edge))
    noise = med + 3.0 * 1.4826 * float(np.median(np.abs(edge - med)))
    span = float(dist.max() - dist.min())
    otsu = otsu_threshold(dist) if span > 1e-6 else float(dist.max())
    high = max(otsu, params.min_contrast, noise)
    low = max(params.hysteresis_low * high, noise)
    mask = hysteresis_threshold(dist, low, high) & ~pen
    info = {
        "threshold": high,
        "low_threshold": low,
        "otsu": otsu,
        "border_noise": noise,
        "background_lab": [round(float(v), 2) for v in bg],
        "pen_fraction": float(pen.mean()),
    }
    return _cleanup(mask, mask_mpp, params), info


def _params_for(method: str, params: TissueParams) -> dict[str, Any]:
    """The settings that apply to ``method`` (provenance lists only what was used)."""
    shared = ("detect_mpp", "max_side", "close_um", "open_um", "min_area_um2", "max_hole_um2")
    own = {
        "saturation-otsu": ("min_saturation",),
        "background-hysteresis": (
            "min_contrast",
            "hysteresis_low",
            "lightness_weight",
            "smooth_um",
            "remove_pen",
        ),
    }.get(method, ())
    d = dataclasses.asdict(params)
    return {k: d[k] for k in (*shared, *own)}


def mask_from_image(
    rgb: np.ndarray,
    mask_mpp: float,
    params: TissueParams = TissueParams(),
    *,
    method: str | None = None,
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB image whose pixels are ``mask_mpp`` µm wide.

    Parameters
    ----------
    rgb
        ``(h, w, 3)`` uint8.
    mask_mpp
        µm per pixel of ``rgb``.
    params
        Settings; ``params.method`` unless ``method`` is given (a classic method name).

    Returns
    -------
    mask
        ``(h, w)`` bool.
    threshold
        The method's threshold (see :attr:`TissueMask.threshold`).
    """
    mask, info = TISSUE_METHODS.get(method or params.method)(rgb, mask_mpp, params)
    return mask, float(info["threshold"])


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


def _mask_grid(
    slide: SlideReader, mpp_target: float, max_side: int, *, exact: bool = False
) -> tuple[np.ndarray, float]:
    """The thumbnail tissue is detected on, and its level-0 downsample (``exact``: at
    ``mpp_target`` even on a small slide, as a model trained at that scale needs)."""
    mpp = slide.require_mpp()
    W, H = slide.dimensions
    # coarse enough to be fast, fine enough that small slides still get a ~1,000 px mask
    coarse = mpp_target / mpp if exact else min(mpp_target / mpp, max(W, H) / 1024)
    ds = max(1.0, coarse, max(W, H) / max_side)
    return slide.get_thumbnail(mpp=ds * mpp), ds


def create_tissue_segmenter(name: str, **kwargs: Any) -> TissueSegmenter:
    """Build a registered deep tissue segmenter, e.g. ``create_tissue_segmenter("unet",
    weights="grandqc_tissue.safetensors")``; needs the ``torch`` extra.

    Raises
    ------
    KeyError
        An unknown name, with the close matches and every registered name.
    """
    _load_segmenters()
    return TISSUE_SEGMENTERS.get(name)(**kwargs)


def list_tissue_segmenters(pattern: str = "*") -> list[str]:
    """Registered deep tissue segmenters matching a shell pattern (needs the ``torch`` extra)."""
    _load_segmenters()
    return TISSUE_SEGMENTERS.list(pattern)


def _load_segmenters() -> None:
    for module in SEGMENTER_PROVIDERS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"deep tissue segmenters need the torch extra ({exc}); pip install "
                f"'histoxmodal[torch]', or use method={DEFAULT_METHOD!r}"
            ) from exc


def detect_tissue(
    slide: SlideReader,
    params: TissueParams | None = None,
    *,
    method: str | TissueSegmenter | None = None,
    weights: str | Path | None = None,
    **segmenter_kwargs: Any,
) -> TissueMask:
    """Detect tissue on a low-resolution image of ``slide`` (never level 0 of a pyramid).

    Parameters
    ----------
    slide
        An opened slide with a known pixel size.
    params
        Detection settings; defaults suit H&E.
    method
        Overrides ``params.method``: ``"background-hysteresis"`` (default),
        ``"saturation-otsu"``, ``"deep:<name>"`` for a registered deep segmenter
        (:func:`list_tissue_segmenters`) built with ``weights=`` and ``segmenter_kwargs``, or
        an already built :class:`TissueSegmenter`.
    weights
        Local weights file of a ``"deep:"`` segmenter (``.safetensors``, or a state dict read
        with ``torch.load(weights_only=True)``). Never downloaded.

    Returns
    -------
    TissueMask
        Mask at about ``params.detect_mpp`` µm/px (coarser if ``max_side`` caps it; at the
        model's µm/px for a deep segmenter), with polygons, the thumbnail it was computed on
        and its :attr:`~TissueMask.provenance`.
    """
    params = params or TissueParams()
    chosen = params.method if method is None else method
    segmenter: TissueSegmenter | None = None
    if isinstance(chosen, str) and chosen.startswith("deep:"):
        segmenter = create_tissue_segmenter(chosen[5:], weights=weights, **segmenter_kwargs)
    elif not isinstance(chosen, str):
        if not isinstance(chosen, TissueSegmenter):
            raise TypeError(
                f"method={chosen!r}: expected a method name ({', '.join(TISSUE_METHODS.list())}"
                f", 'deep:<name>') or a TissueSegmenter (create_tissue_segmenter(...))"
            )
        segmenter = chosen
    elif weights is not None or segmenter_kwargs:
        raise ConfigError(
            f"weights= and segmenter options apply to 'deep:<name>' methods, not {chosen!r}"
        )
    else:
        try:
            TISSUE_METHODS.get(chosen)
        except KeyError as exc:
            raise ConfigError(f"{exc.args[0]}; or 'deep:<name>' for a deep segmenter") from None

    mpp = slide.require_mpp()
    W, H = slide.dimensions
    target = segmenter.mpp if segmenter is not None else params.detect_mpp
    thumb, _ = _mask_grid(slide, target, params.max_side, exact=segmenter is not None)
    th, tw = thumb.shape[:2]
    downsample = (W / tw, H / th)
    mask_mpp = math.sqrt(downsample[0] * downsample[1]) * mpp
    if segmenter is not None:
        prob = np.asarray(segmenter(thumb), dtype=np.float32)
        if prob.shape != (th, tw):
            raise ValueError(
                f"tissue segmenter returned shape {prob.shape} for a {th} x {tw} image; it must "
                f"return one probability per pixel"
            )
        thr = 0.5
        mask = _cleanup(prob > thr, mask_mpp, params)
        name = chosen if isinstance(chosen, str) else f"deep:{segmenter.describe().get('name')}"
        info: dict[str, Any] = {"threshold": thr, "segmenter": segmenter.describe()}
        used = _params_for(name, params)
        used.pop("detect_mpp")
    else:
        name = str(chosen)
        mask, info = TISSUE_METHODS.get(name)(thumb, mask_mpp, params)
        used = _params_for(name, params)
    thr = float(info.pop("threshold"))
    provenance = {
        "method": name,
        "params": used,
        "threshold": thr,
        **info,
        "mask_mpp": mask_mpp,
        "mask_shape": [int(th), int(tw)],
        "downsample": [float(downsample[0]), float(downsample[1])],
    }
    log.debug("%s: %s threshold %.2f, %.1f%% tissue", slide.path.name, name, thr, 100 * mask.mean())
    return TissueMask(mask, downsample, mask_polygons(mask, downsample), thumb, thr, provenance)
