"""Spot-centred patches: a fixed physical field of view around each spot, at a fixed size; and
the grid of pseudo-spots laid over a slide's tissue for whole-slide maps (``pseudo_spots``,
``window_px``)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader


def patch_windows(centres: np.ndarray, mpp: float, patch_um: float) -> tuple[np.ndarray, int]:
    """Level-0 top-left corners and side of the square windows centred on ``centres``.

    The side is ``round(patch_um / mpp)`` level-0 pixels and the corner
    ``round(centre - side / 2)``, so the window's centre is within half a pixel of the spot.
    """
    side = max(1, round(patch_um / mpp))
    corners = np.round(np.asarray(centres, np.float64) - side / 2.0).astype(np.int64)
    return corners, side


def spot_patches(
    slide: SlideReader,
    centres: np.ndarray,
    *,
    patch_um: float = 112.0,
    patch_px: int = 224,
    batch_size: int = 64,
    workers: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield spot-centred patches in order, in batches.

    Parameters
    ----------
    slide
        The image the centres refer to (its level-0 pixels), with a known pixel size.
    centres
        ``(n, 2)`` float ``(x, y)`` in level-0 pixels.
    patch_um
        Field of view in µm (112 µm: HEST's 224 px at 0.5 µm/px).
    patch_px
        Output size in pixels; the window is resampled from the best pyramid level.
    workers
        Reading threads.

    Yields
    ------
    patches
        ``(b, patch_px, patch_px, 3)`` uint8; areas beyond the image are white.
    at_border
        ``(b,)`` bool: the window reaches past the image edge (padded, not dropped).
    """
    mpp = slide.require_mpp()
    corners, side = patch_windows(centres, mpp, patch_um)
    W, H = slide.dimensions
    border = (
        (corners[:, 0] < 0)
        | (corners[:, 1] < 0)
        | (corners[:, 0] + side > W)
        | (corners[:, 1] + side > H)
    )
    target = patch_um / patch_px

    def read(i0: int) -> tuple[np.ndarray, np.ndarray]:
        sel = slice(i0, min(len(corners), i0 + batch_size))
        out = np.empty((sel.stop - sel.start, patch_px, patch_px, 3), np.uint8)
        for j, (x, y) in enumerate(corners[sel]):
            out[j] = slide.read_region_at_mpp((int(x), int(y)), patch_px, target)
        return out, border[sel]

    starts = range(0, len(corners), batch_size)
    if workers <= 1:
        for i0 in starts:
            yield read(i0)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(read, starts)


def window_px(patch_um: float, mpp: float) -> int:
    """Side in level-0 pixels of a pseudo-spot window of ``patch_um`` µm: whole pixels, so
    windows laid at the same rounded pitch tile the slide without gaps (and the maps drawn from
    them show no seam)."""
    return max(1, round(patch_um / mpp))


def pseudo_spots(
    slide, mask, *, patch_um: float, grid_um: float, min_tissue: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of a square grid of pseudo-spots over the tissue.

    Windows of ``patch_um`` are laid every ``grid_um`` from the slide's corner; those whose
    tissue fraction (in ``mask``) reaches ``min_tissue`` are kept.

    Returns
    -------
    centres
        ``(n, 2)`` float64 level-0 ``(x, y)``.
    tissue_fraction
        ``(n,)`` float32.
    """
    from histoxmodal.tiling.grid import grid_coords

    mpp = slide.require_mpp()
    side = window_px(patch_um, mpp)
    step = window_px(grid_um, mpp)
    corners = grid_coords(slide.dimensions, side, step)
    frac = mask.fraction(corners, side) if len(corners) else np.zeros(0, np.float32)
    keep = frac >= min_tissue
    return corners[keep] + side / 2.0, frac[keep].astype(np.float32)
