"""Realistic synthetic pyramidal TIFFs: H&E-coloured tissue sections on glass.

The slide is written tile by tile (never held whole in memory) as a JPEG-compressed, tiled,
multi-resolution TIFF with the pixel size in its resolution tags, which OpenSlide opens as a
``generic-tiff`` slide and tifffile as a pyramid. Tissue is a few irregular sections with holes
(fat, lumina); stroma is pink with purple nuclei at a physically correct size, so tissue detection
and tiling behave as on a real scan. The ground-truth tissue mask is returned for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: level-0 pixels per cell of the analytic tissue mask
_MASK_CELL = 32


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`make_synthetic_slide` wrote.

    Attributes
    ----------
    path
        The TIFF file.
    width, height
        Level-0 size in pixels.
    mpp
        Level-0 µm per pixel, written in the resolution tags.
    level_dimensions
        ``(width, height)`` of each pyramid level.
    tissue_mask
        Ground truth, ``(ceil(height / cell), ceil(width / cell))`` bool, one cell per
        ``mask_cell`` level-0 pixels.
    mask_cell
        Level-0 pixels per mask cell.
    regions
        With ``regions=K``: the tissue type of every mask cell, ``(rows, cols)`` int8, -1 on
        glass, ``0 .. K-1`` indexing :data:`TISSUE_TYPES`.
    """

    path: Path
    width: int
    height: int
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    tissue_mask: np.ndarray
    mask_cell: int
    regions: np.ndarray | None = None

    @property
    def tissue_fraction(self) -> float:
        """Share of the slide's mask cells on tissue."""
        return float(self.tissue_mask.mean())

    def region_at(self, xy: np.ndarray) -> np.ndarray:
        """``(n,)`` tissue type (``regions`` value, -1 on glass) under level-0 points ``(n, 2)``
        ``(x, y)``; needs ``regions``."""
        if self.regions is None:
            raise ValueError("region_at needs a slide made with regions=K")
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        rows, cols = self.regions.shape
        c = np.clip((xy[:, 0] // self.mask_cell).astype(int), 0, cols - 1)
        r = np.clip((xy[:, 1] // self.mask_cell).astype(int), 0, rows - 1)
        return self.regions[r, c]


#: Tissue types of ``make_synthetic_slide(regions=K)``: stroma colour, nucleus density (x the
#: stroma's), nucleus radius (x 3.5 µm) and haematoxylin colour, so each reads differently in H&E.
TISSUE_TYPES: tuple[dict, ...] = (
    {
        "name": "stroma",
        "stroma": (232, 160, 200),
        "density": 1.0,
        "size": 1.0,
        "hema": (85, 55, 140),
    },
    {
        "name": "tumour",
        "stroma": (212, 148, 204),
        "density": 3.5,
        "size": 1.5,
        "hema": (70, 40, 130),
    },
    {
        "name": "immune",
        "stroma": (226, 170, 208),
        "density": 7.0,
        "size": 0.6,
        "hema": (45, 25, 95),
    },
    {
        "name": "adipose",
        "stroma": (246, 226, 234),
        "density": 0.15,
        "size": 0.8,
        "hema": (110, 80, 150),
    },
)

#: The morphology of ``make_synthetic_slide(lesion=...)``: a patch of the tumour with large,
#: crowded, hyperchromatic nuclei (its type index in ``SyntheticSlide.regions`` is
#: :data:`LESION`). Generated MIL cohorts put it on the positive slides only.
LESION_TYPE: dict = {
    "name": "lesion",
    "stroma": (196, 128, 188),
    "density": 5.0,
    "size": 2.2,
    "hema": (52, 18, 104),
}
LESION = len(TISSUE_TYPES)
_TYPE_TABLE = (*TISSUE_TYPES, LESION_TYPE)


def _region_field(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Tissue type per mask cell: a Voronoi partition of the tissue with noisy borders."""
    import cv2

    gh, gw = mask.shape
    n_seeds = 16 * k
    seeds = np.column_stack([rng.uniform(0, gw, n_seeds), rng.uniform(0, gh, n_seeds)])
    kinds = np.arange(n_seeds) % k
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    jitter = rng.standard_normal((2, gh, gw)).astype(np.float32)
    sigma = max(1.5, min(gw, gh) / 30)
    jitter = np.stack([cv2.GaussianBlur(j, (0, 0), sigma) for j in jitter])
    jitter *= 0.05 * min(gw, gh) / (jitter.std() + 1e-6)
    px, py = xx + jitter[0], yy + jitter[1]
    best = np.full((gh, gw), np.inf, np.float32)
    out = np.zeros((gh, gw), np.int8)
    for (sx, sy), kind in zip(seeds, kinds, strict=True):
        d = (px - sx) ** 2 + (py - sy) ** 2
        closer = d < best
        best[closer], out[closer] = d[closer], kind
    out[~mask] = -1
    return out


def _add_lesion(types: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``types`` with the ``share`` of tumour cells nearest a random tumour cell set to
    :data:`LESION` (one contiguous patch confined to the tumour)."""
    ys, xs = np.nonzero(types == 1)
    if len(ys) == 0:
        raise ValueError("lesion: this slide's regions have no tumour cells; change the seed")
    c = rng.integers(len(ys))
    d = (ys - ys[c]) ** 2 + (xs - xs[c]) ** 2
    keep = np.argsort(d, kind="stable")[: max(1, round(share * len(ys)))]
    out = types.copy()
    out[ys[keep], xs[keep]] = LESION
    return out


def _tissue_field(gw: int, gh: int, n_sections: int, rng: np.random.Generator) -> np.ndarray:
    """Analytic tissue mask on a coarse grid: irregular blobs with holes."""
    import cv2

    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    field = np.zeros((gh, gw), np.float32)
    for _ in range(n_sections):
        cx, cy = rng.uniform(0.2, 0.8) * gw, rng.uniform(0.2, 0.8) * gh
        ax = rng.uniform(0.12, 0.25) * gw
        ay = rng.uniform(0.12, 0.25) * gh
        th = rng.uniform(0, math.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(th) + dy * math.sin(th)) / ax
        v = (-dx * math.sin(th) + dy * math.cos(th)) / ay
        field = np.maximum(field, 1.0 - np.sqrt(u * u + v * v))
    # irregular borders: low-frequency noise
    noise = rng.standard_normal((gh, gw)).astype(np.float32)
    sigma = max(2.0, min(gw, gh) / 40)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    noise /= noise.std() + 1e-6
    mask = (field + 0.12 * noise) > 0.25
    # holes: fat vacuoles and a lumen or two
    for _ in range(int(4 + 2 * n_sections)):
        cx, cy = int(rng.uniform(0, gw)), int(rng.uniform(0, gh))
        if mask[cy, cx]:
            r = max(1, int(rng.uniform(0.005, 0.03) * min(gw, gh)))
            cv2.circle(mask.view(np.uint8), (cx, cy), r, 0, -1)
    return mask


def _render_tile(
    mask_crop: np.ndarray,
    shape: tuple[int, int],
    nucleus_px: float,
    rng: np.random.Generator,
    types: np.ndarray | None = None,
) -> np.ndarray:
    """Render one RGB tile: glass where the (smoothly upsampled) mask is off, H&E where on;
    ``types`` (tissue type per mask cell, same grid as ``mask_crop``) varies the H&E."""
    import cv2

    if types is not None:
        return _render_typed_tile(mask_crop, shape, nucleus_px, rng, types)

    th, tw = shape
    soft = cv2.resize(mask_crop.astype(np.float32), (tw, th), interpolation=cv2.INTER_LINEAR)
    glass = np.array([243, 241, 244], np.float32)
    tile = np.empty((th, tw, 3), np.float32)
    tile[:] = glass
    if soft.max() <= 0:
        tile += rng.normal(0, 1.5, (th, tw, 1)).astype(np.float32)
        return np.clip(tile, 0, 255).astype(np.uint8)
    stroma = np.array([232, 160, 200], np.float32)
    tex = rng.normal(0, 1, (max(2, th // 8), max(2, tw // 8))).astype(np.float32)
    tex = cv2.resize(tex, (tw, th), interpolation=cv2.INTER_CUBIC)
    he = stroma + tex[:, :, None] * np.array([8, 14, 10], np.float32)
    nuclei = np.zeros((th, tw), np.float32)
    if nucleus_px >= 1.0:
        n = int(th * tw / (nucleus_px * 6) ** 2 * 2)
        for cx, cy in zip(rng.integers(0, tw, n), rng.integers(0, th, n), strict=True):
            r = max(1, int(nucleus_px * rng.uniform(0.7, 1.3)))
            cv2.circle(nuclei, (int(cx), int(cy)), r, 1.0, -1)
        nuclei = cv2.GaussianBlur(nuclei, (0, 0), max(0.5, nucleus_px / 4))
    else:  # nuclei below one pixel: their stain darkens the stroma on average
        nuclei[:] = 0.25
    hema = np.array([85, 55, 140], np.float32)
    he = he * (1 - nuclei[:, :, None]) + hema * nuclei[:, :, None]
    tile = tile * (1 - soft[:, :, None]) + he * soft[:, :, None]
    tile += rng.normal(0, 2.0, (th, tw, 1)).astype(np.float32)
    return np.clip(tile, 0, 255).astype(np.uint8)


def _render_typed_tile(
    mask_crop: np.ndarray,
    shape: tuple[int, int],
    nucleus_px: float,
    rng: np.random.Generator,
    types: np.ndarray,
) -> np.ndarray:
    import cv2

    th, tw = shape
    soft = cv2.resize(mask_crop.astype(np.float32), (tw, th), interpolation=cv2.INTER_LINEAR)
    tile = np.empty((th, tw, 3), np.float32)
    tile[:] = np.array([243, 241, 244], np.float32)
    if soft.max() <= 0:
        tile += rng.normal(0, 1.5, (th, tw, 1)).astype(np.float32)
        return np.clip(tile, 0, 255).astype(np.uint8)
    tmap = cv2.resize(types.astype(np.int16), (tw, th), interpolation=cv2.INTER_NEAREST)
    tmap = np.maximum(tmap, 0)  # glass cells under soft edges take type 0's colours
    table = _TYPE_TABLE
    stroma = np.array([t["stroma"] for t in table], np.float32)[tmap]
    hema = np.array([t["hema"] for t in table], np.float32)[tmap]
    tex = rng.normal(0, 1, (max(2, th // 8), max(2, tw // 8))).astype(np.float32)
    tex = cv2.resize(tex, (tw, th), interpolation=cv2.INTER_CUBIC)
    he = stroma + tex[:, :, None] * np.array([8, 14, 10], np.float32)
    nuclei = np.zeros((th, tw), np.float32)
    for k in np.unique(tmap):
        t = table[int(k)]
        r_px = nucleus_px * t["size"]
        layer = np.zeros((th, tw), np.float32)
        if r_px >= 1.0:
            n = int(th * tw / (nucleus_px * 6) ** 2 * 2 * t["density"])
            xs, ys = rng.integers(0, tw, n), rng.integers(0, th, n)
            for cx, cy in zip(xs, ys, strict=True):
                if tmap[cy, cx] == k:
                    r = max(1, int(r_px * rng.uniform(0.7, 1.3)))
                    cv2.circle(layer, (int(cx), int(cy)), r, 1.0, -1)
            layer = cv2.GaussianBlur(layer, (0, 0), max(0.5, r_px / 4))
        else:  # nuclei below one pixel: their stain darkens the tissue on average
            layer[:] = min(0.8, 0.25 * t["density"] * t["size"] ** 2)
        nuclei = np.where(tmap == k, layer, nuclei)
    he = he * (1 - nuclei[:, :, None]) + hema * nuclei[:, :, None]
    tile = tile * (1 - soft[:, :, None]) + he * soft[:, :, None]
    tile += rng.normal(0, 2.0, (th, tw, 1)).astype(np.float32)
    return np.clip(tile, 0, 255).astype(np.uint8)


def make_synthetic_slide(
    path: str | Path,
    *,
    width: int = 8192,
    height: int = 6144,
    mpp: float = 0.25,
    tile: int = 256,
    level_downsample: int = 4,
    min_level_size: int = 1024,
    n_sections: int = 3,
    quality: int = 85,
    texture_variants: int = 0,
    tissue: bool = True,
    regions: int = 0,
    lesion: float = 0.0,
    seed: int = 0,
) -> SyntheticSlide:
    """Write a realistic synthetic whole-slide image as a pyramidal TIFF.

    Parameters
    ----------
    path
        Output ``.tif`` file (BigTIFF, so any size works).
    width, height
        Level-0 size in pixels.
    mpp
        Level-0 µm per pixel (0.25 is a 40x scan), stored in the resolution tags.
    tile
        TIFF tile size in pixels.
    level_downsample
        Downsample between consecutive levels; levels are added until the next would be smaller
        than ``min_level_size`` on its longer side.
    n_sections
        Number of tissue sections on the glass.
    quality
        JPEG quality of the tiles.
    texture_variants
        0 renders every tile (realistic, slower). ``K > 0`` pre-renders ``K`` interior tissue
        tiles and reuses them for level-0 tiles fully inside tissue, so gigapixel benchmark slides
        are written in seconds; tiles on tissue borders are always rendered.
    tissue
        ``False`` writes blank glass (a slide with no tissue).
    regions
        ``K > 0`` divides the tissue into regions of ``K`` types (:data:`TISSUE_TYPES`: stroma,
        tumour, immune infiltrate, adipose) with their own colour and nuclear density and size;
        the type map is returned, so spot expression can follow the tissue.
    lesion
        With ``regions >= 2``: the share of the tumour (type 1) turned into one contiguous
        :data:`LESION_TYPE` patch (the tumour cells nearest a random tumour cell), marked
        :data:`LESION` in ``regions``. 0 (default) leaves the tumour alone.
    seed
        Seed; the same arguments give the same file.

    Returns
    -------
    SyntheticSlide
        Paths, geometry and the ground-truth tissue mask.
    """
    import imagecodecs
    import tifffile

    path = Path(path)
    rng = np.random.default_rng(seed)
    gw, gh = math.ceil(width / _MASK_CELL), math.ceil(height / _MASK_CELL)
    mask = _tissue_field(gw, gh, n_sections, rng) if tissue else np.zeros((gh, gw), bool)
    if not 0 <= regions <= len(TISSUE_TYPES):
        raise ValueError(f"regions={regions}: expected 0 to {len(TISSUE_TYPES)}")
    types = _region_field(mask, regions, rng) if regions else None
    if lesion:
        if types is None or regions < 2 or not 0 < lesion < 1:
            raise ValueError(f"lesion={lesion} needs regions >= 2 and 0 < lesion < 1")
        types = _add_lesion(types, lesion, rng)
    dims = [(width, height)]
    while max(dims[-1]) // level_downsample >= min_level_size:
        w, h = dims[-1]
        dims.append((w // level_downsample, h // level_downsample))
    nucleus_um = 3.5  # radius of a typical nucleus
    res = 1e4 / mpp  # pixels per centimetre

    def encode(a: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(a, level=quality)

    def level_tiles(level: int):
        w, h = dims[level]
        ds = width / w
        step = tile * ds / _MASK_CELL  # mask cells per tile
        nucleus_px = nucleus_um / (mpp * ds)
        cache: dict[str, list[bytes]] = {}
        for ty in range(math.ceil(h / tile)):
            for tx in range(math.ceil(w / tile)):
                y0, x0 = int(ty * step), int(tx * step)
                y1 = max(y0 + 1, math.ceil((ty + 1) * step))
                x1 = max(x0 + 1, math.ceil((tx + 1) * step))
                # one cell of margin so the smooth upsampling matches across tile borders
                crop = mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1]
                trng = np.random.default_rng((seed, level, tx, ty))
                kind = "glass" if not crop.any() else "tissue" if crop.all() else "edge"
                if texture_variants and level == 0 and kind != "edge" and types is None:
                    variants = cache.setdefault(kind, [])
                    if len(variants) < (1 if kind == "glass" else texture_variants):
                        variants.append(
                            encode(_render_tile(crop[:1, :1], (tile, tile), nucleus_px, trng))
                        )
                    yield variants[(tx * 7 + ty * 13) % len(variants)]
                    continue
                # crop the upsampled mask to exactly this tile's span (with the margin removed)
                sub = _tile_mask(mask, x0, y0, x1, y1, step, tx, ty)
                tsub = None
                if types is not None:
                    tsub = _tile_mask(types + 1, x0, y0, x1, y1, step, tx, ty).astype(np.int8) - 1
                yield encode(_render_tile(sub, (tile, tile), nucleus_px, trng, tsub))

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level, (w, h) in enumerate(dims):
            tw.write(
                level_tiles(level),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                resolution=(res / (width / w), res / (height / h)),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,
                description="histoxmodal synthetic slide" if level == 0 else None,
                metadata=None,
            )
    return SyntheticSlide(path, width, height, mpp, tuple(dims), mask, _MASK_CELL, types)


def _tile_mask(
    mask: np.ndarray, x0: int, y0: int, x1: int, y1: int, step: float, tx: int, ty: int
) -> np.ndarray:
    """The mask cells under one tile, as floats, ready for smooth upsampling to the tile."""
    sub = mask[y0:y1, x0:x1].astype(np.float32)
    if sub.size == 0:
        return np.zeros((1, 1), np.float32)
    # pad partial tiles at the right/bottom edge so the upsampled mask keeps its scale
    ph = max(0, math.ceil(step) - sub.shape[0])
    pw = max(0, math.ceil(step) - sub.shape[1])
    if ph or pw:
        sub = np.pad(sub, ((0, ph), (0, pw)))
    return sub
