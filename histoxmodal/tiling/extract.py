"""Reading tile pixels: a slide, a geometry and coordinates in; batches of RGB tiles out."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from histoxmodal.tiling.spec import TileGeometry

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader


def read_tile_batch(slide: SlideReader, geometry: TileGeometry, coords: np.ndarray) -> np.ndarray:
    """Read the tiles at ``coords`` into one ``(n, tile_px, tile_px, 3)`` uint8 array."""
    import cv2

    t = geometry.spec.tile_px
    out = np.empty((len(coords), t, t, 3), np.uint8)
    size = (geometry.read_px, geometry.read_px)
    for i, (x, y) in enumerate(coords):
        region = slide.read_region((int(x), int(y)), geometry.read_level, size)
        if geometry.needs_resize:
            interp = cv2.INTER_AREA if geometry.read_px > t else cv2.INTER_LINEAR
            cv2.resize(region, (t, t), dst=out[i], interpolation=interp)
        else:
            out[i] = region
    return out


def iter_tiles(
    slide: SlideReader,
    geometry: TileGeometry,
    coords: np.ndarray,
    *,
    batch_size: int = 32,
    workers: int = 1,
) -> Iterator[np.ndarray]:
    """Yield tiles in order, in batches of ``batch_size``.

    With ``workers > 1`` batches are read by that many threads: OpenSlide, tifffile's codecs and
    OpenCV release the GIL while decoding, so threads scale on cores without copying pixels
    between processes. At most ``2 * workers`` batches are in flight, so memory is bounded.

    Yields
    ------
    np.ndarray
        ``(b, tile_px, tile_px, 3)`` uint8, ``b <= batch_size``; together they follow ``coords``.
    """
    coords = np.asarray(coords).reshape(-1, 2)
    if workers > 1:  # at least four batches per worker, so no thread idles at the end
        batch_size = max(1, min(batch_size, -(-len(coords) // (4 * workers))))
    chunks = [coords[i : i + batch_size] for i in range(0, len(coords), batch_size)]
    if workers <= 1:
        for chunk in chunks:
            yield read_tile_batch(slide, geometry, chunk)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="histoxmodal-tiles") as pool:
        pending: deque = deque()
        it = iter(chunks)
        for chunk in it:
            pending.append(pool.submit(read_tile_batch, slide, geometry, chunk))
            if len(pending) >= 2 * workers:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(read_tile_batch, slide, geometry, nxt))
