"""Per-slide tiling outputs: ``coords.h5`` (CLAM/TRIDENT-compatible), the tile store, the overlay.

``coords.h5`` holds dataset ``coords`` (``(n, 2)`` int64 level-0 ``(x, y)``) whose attributes
follow both CLAM and TRIDENT: ``patch_level`` and ``patch_size`` are the level and the size at
that level to pass to ``read_region`` so that it returns exactly the tile's field of view (CLAM's
meaning; equal to the output tile size when the target resolution is a pyramid level, which is
TRIDENT's meaning), ``patch_size_level0`` is the side in level-0 pixels, and ``target_mpp``,
``level0_mpp``, ``tile_px``, ``overlap`` and magnifications are recorded too. Dataset
``tissue_fraction`` holds each tile's tissue fraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoxmodal.tiling.spec import TileGeometry

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader
    from histoxmodal.tiling.tissue import TissueMask


def coords_attrs(slide: SlideReader, geometry: TileGeometry, name: str) -> dict[str, object]:
    """The attributes written on the ``coords`` dataset."""
    spec = geometry.spec
    level_dim = slide.level_dimensions[geometry.read_level]
    return {
        "patch_size": geometry.read_px,
        "patch_level": geometry.read_level,
        "patch_size_level0": geometry.tile_px_level0,
        "downsample": [geometry.read_downsample, geometry.read_downsample],
        "level_dim": list(level_dim),
        "downsampled_level_dim": list(level_dim),
        "tile_px": spec.tile_px,
        "target_mpp": spec.target_mpp,
        "effective_mpp": geometry.effective_mpp,
        "level0_mpp": geometry.mpp,
        "target_magnification": 10.0 / spec.target_mpp,
        "level0_magnification": 10.0 / geometry.mpp,
        "overlap": spec.tile_px - spec.step_px,
        "step_size_level0": geometry.step_level0,
        "name": name,
    }


def write_coords(
    path: Path, coords: np.ndarray, fraction: np.ndarray, attrs: dict[str, object]
) -> None:
    """Write ``coords.h5``: datasets ``coords`` and ``tissue_fraction``; attributes on coords."""
    import h5py

    with h5py.File(path, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for k, v in attrs.items():
            d.attrs[k] = v
        f.create_dataset("tissue_fraction", data=np.asarray(fraction, np.float32))


def write_tiles(
    path: Path, coords: np.ndarray, tile_px: int, batches, attrs: dict[str, object]
) -> int:
    """Write the tile store ``tiles.h5``: dataset ``tiles`` ``(n, tile_px, tile_px, 3)`` uint8.

    One HDF5 chunk per tile, so ``f["tiles"][i]`` reads a single tile from disk. Pixels are stored
    uncompressed: they were already decoded from the slide, and recompressing would cost more
    than reading them.

    Returns
    -------
    int
        Number of tiles written.
    """
    import h5py

    n = len(coords)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        d = f.create_dataset(
            "tiles",
            shape=(n, tile_px, tile_px, 3),
            dtype=np.uint8,
            chunks=(1, tile_px, tile_px, 3) if n else None,
        )
        for k, v in attrs.items():
            d.attrs[k] = v
        i = 0
        for batch in batches:
            d[i : i + len(batch)] = batch
            i += len(batch)
    return i


def write_overlay(
    path: Path, thumbnail: np.ndarray, tissue: TissueMask, coords: np.ndarray, size_level0: int
) -> None:
    """A PNG of ``thumbnail`` with the tissue mask tinted green and the kept tiles outlined.

    Parameters
    ----------
    thumbnail
        ``(h, w, 3)`` RGB image of the whole slide (any size; the mask is resampled to it).
    tissue
        The mask, whose ``downsample`` maps it to level 0.
    coords, size_level0
        Kept tiles, level-0 ``(x, y)`` and side.
    """
    import cv2

    img = thumbnail.copy()
    oh, ow = img.shape[:2]
    mask = cv2.resize(tissue.mask.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST)
    green = np.array([0, 200, 90], np.float32)
    sel = mask.astype(bool)
    img[sel] = (img[sel] * 0.65 + green * 0.35).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (0, 140, 60), 2)
    mh, mw = tissue.mask.shape
    sx, sy = ow / (mw * tissue.downsample[0]), oh / (mh * tissue.downsample[1])
    for x, y in np.asarray(coords).reshape(-1, 2):
        p0 = (int(x * sx), int(y * sy))
        p1 = (int((x + size_level0) * sx), int((y + size_level0) * sy))
        cv2.rectangle(img, p0, p1, (30, 60, 220), 1)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write the overlay PNG {path}")
