"""The tile grid: level-0 tile origins on a regular lattice, filtered by tissue fraction."""

from __future__ import annotations

import numpy as np

from histoxmodal.tiling.spec import TileGeometry
from histoxmodal.tiling.tissue import TissueMask


def grid_coords(dimensions: tuple[int, int], size_level0: int, step_level0: int) -> np.ndarray:
    """All tile origins of a lattice anchored at ``(0, 0)`` whose tiles lie inside the slide.

    Tiles are ordered row by row (top to bottom, left to right). Partial tiles at the right and
    bottom edges are not produced.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` int64 level-0 ``(x, y)``.
    """
    W, H = dimensions
    xs = np.arange(0, W - size_level0 + 1, step_level0, dtype=np.int64)
    ys = np.arange(0, H - size_level0 + 1, step_level0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def tile_grid(
    dimensions: tuple[int, int],
    geometry: TileGeometry,
    tissue: TissueMask | None,
    *,
    min_tissue: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile origins whose tissue fraction reaches ``min_tissue``.

    Parameters
    ----------
    dimensions
        Level-0 ``(width, height)`` of the slide.
    geometry
        The resolved tile geometry (:meth:`TileSpec.resolve`).
    tissue
        The tissue mask; ``None`` keeps every tile (fraction reported as 1).
    min_tissue
        Overrides ``geometry.spec.min_tissue``.

    Returns
    -------
    coords
        ``(n, 2)`` int64 level-0 top-left ``(x, y)``, row-major order.
    fraction
        ``(n,)`` float32 tissue fraction of each kept tile.
    """
    thr = geometry.spec.min_tissue if min_tissue is None else min_tissue
    coords = grid_coords(dimensions, geometry.tile_px_level0, geometry.step_level0)
    if tissue is None:
        return coords, np.ones(len(coords), np.float32)
    frac = tissue.fraction(coords, geometry.tile_px_level0)
    keep = frac >= thr if thr > 0 else np.ones(len(coords), bool)
    return coords[keep], frac[keep].astype(np.float32)
