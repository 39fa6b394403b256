"""The tiles of one ``features`` input, batched for the encoder, and the files they are written to.

:func:`open_tiles` gives a slide's tile grid (tiled here at the encoder's µm/px and size) or a
``histoxmodal tile`` folder's tiles (``tiles.h5``, or the pixels read again from the slide its
manifest names); :func:`stain_normalised` normalises their stain (``--stain-normalize``, a
run's ``stain.json``); :func:`prefetch` and :func:`as_batches` feed them to the encoder;
:func:`write_h5` (TRIDENT/CLAM layout) and :func:`write_h5ad` write the features.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, DataError
from histoxmodal.io.discovery import slide_identity
from histoxmodal.version import __version__
from histoxmodal.workflows.extractor import Extractor

log = logging.getLogger(__name__)

#: batches the producer thread may hold ready ahead of the encoder
PREFETCH_BATCHES = 4
#: a tile folder's µm/px may differ this much (relative) from the encoder's without a warning
MPP_TOLERANCE = 0.05


def prefetch(it: Iterable[Any], depth: int = PREFETCH_BATCHES) -> Iterator[Any]:
    """Iterate ``it`` in a background thread, up to ``depth`` items ahead, so decoding overlaps
    the consumer; an exception in the thread is raised here, and closing the generator stops
    the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in it:
                if not put((None, x)):
                    return
        except BaseException as exc:  # handed to the consumer
            put((exc, None))
            return
        put((None, done))

    t = threading.Thread(target=work, daemon=True, name="histoxmodal-features-prefetch")
    t.start()
    try:
        while True:
            exc, x = q.get()
            if exc is not None:
                raise exc
            if x is done:
                return
            yield x
    finally:
        stop.set()
        t.join(timeout=10)


def as_batches(arrays: Iterable[np.ndarray], batch_size: int, pin: bool) -> Iterator[dict]:
    """uint8 ``(b, H, W, 3)`` arrays of any length -> ``{"image": (batch_size, 3, H, W)}``."""
    import torch

    def make(a: np.ndarray) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
        return {keys.BATCH_IMAGE: x.pin_memory() if pin else x}

    held: list[np.ndarray] = []
    n = 0
    for a in arrays:
        held.append(a)
        n += len(a)
        while n >= batch_size:
            cat = np.concatenate(held) if len(held) > 1 else held[0]
            yield make(cat[:batch_size])
            rest = cat[batch_size:]
            held, n = ([rest] if len(rest) else []), len(rest)
    if n:
        yield make(np.concatenate(held) if len(held) > 1 else held[0])


def stain_normalised(arrays: Iterable[np.ndarray], stain) -> Iterator[np.ndarray]:
    """Each uint8 ``(b, H, W, 3)`` array of ``arrays`` normalised by ``stain`` (a fitted
    :class:`~histoxmodal.data.stain.StainNormalizer`), tile by tile; the tiles it cannot
    normalise (background, pen) stay raw and are counted by ``stain``."""
    for a in arrays:
        yield stain.apply_many(a)


def _store_chunks(tiles, n: int, chunk: int) -> Iterator[np.ndarray]:
    for i in range(0, n, chunk):
        yield np.asarray(tiles[i : i + chunk])


@dataclass
class SlideTiles:
    """The tiles of one input: ``(n, 2)`` level-0 corners, ``(n,)`` tissue fractions, the
    ``coords.h5`` attributes, their pixel sizes and sides, the slide read, and the pixels as an
    iterable of uint8 ``(b, tile_px, tile_px, 3)`` arrays."""

    coords: np.ndarray
    fraction: np.ndarray
    coords_attrs: dict[str, Any]
    effective_mpp: float
    level0_mpp: float
    mpp_source: str
    tile_px: int
    tile_px_level0: int
    slide: str
    arrays: Iterable[np.ndarray] = field(default_factory=list)


def _h5_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, dict | list) and not (
        isinstance(v, list) and all(isinstance(x, int | float) for x in v)
    ):
        return json.dumps(v)
    return v


def file_attrs(ex: Extractor, t: SlideTiles, name: str, precision: str, device: str) -> dict:
    ident = ex.identity
    return {
        "name": name,
        "slide": t.slide,
        "encoder": ident["encoder"],
        "architecture": ident["architecture"],
        "weights_sha256": ident["weights_sha256"],
        # "random" when the tower ran untrained (random_weights): never an empty field
        "weights": ident.get("weights") or "random",
        "run": ident["run"],
        "projection": ident["projection"],
        "dim": ex.dim,
        "mpp": t.effective_mpp,
        "level0_mpp": t.level0_mpp,
        "mpp_source": t.mpp_source,
        "tile_px": t.tile_px,
        "tile_um": t.tile_px * t.effective_mpp,
        "patch_size_level0": t.tile_px_level0,
        "input_size": ident["input_size"],
        "precision": precision,
        "device": device,
        "histoxmodal_version": __version__,
    }


def write_h5(path: Path, feats: np.ndarray, t: SlideTiles, attrs: dict) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = _h5_value(v)
        f.create_dataset("features", data=np.asarray(feats, np.float32))
        d = f.create_dataset("coords", data=np.asarray(t.coords, np.int64).reshape(-1, 2))
        for k, v in t.coords_attrs.items():
            d.attrs[k] = _h5_value(v)
        f.create_dataset("tissue_fraction", data=np.asarray(t.fraction, np.float32))


def write_h5ad(path: Path, feats: np.ndarray, t: SlideTiles, attrs: dict, name: str) -> None:
    import anndata as ad
    import pandas as pd

    coords = np.asarray(t.coords, np.int64).reshape(-1, 2)
    obs = pd.DataFrame(
        {"x": coords[:, 0], "y": coords[:, 1], "tissue_fraction": t.fraction},
        index=[f"{name}_{i}" for i in range(len(coords))],
    )
    a = ad.AnnData(X=np.asarray(feats, np.float32), obs=obs)
    a.obsm[keys.OBSM_SPATIAL] = coords.astype(np.float64) + t.tile_px_level0 / 2.0
    a.uns["features"] = {k: ("" if v is None else v) for k, v in attrs.items()}
    a.uns["features"]["coords_attrs"] = json.dumps(t.coords_attrs)
    a.write_h5ad(path)


def open_tiles(item, ex: Extractor, stack, *, mpp, min_tissue, tissue, workers) -> SlideTiles:
    """The tiles of one input (a :class:`~histoxmodal.workflows.jobs.JobItem` of kind
    ``slide`` or ``tiles``): geometry, coordinates and an iterator of pixel arrays (the slide or
    tile store stays open in ``stack``)."""
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.spec import TileSpec

    chunk = 32
    if item.kind == "slide":
        from histoxmodal.tiling.grid import tile_grid
        from histoxmodal.tiling.outputs import coords_attrs
        from histoxmodal.tiling.tissue import detect_tissue

        s = stack.enter_context(open_slide(item.path, mpp=mpp))
        spec = TileSpec(tile_px=ex.tile_px, target_mpp=ex.target_mpp, min_tissue=min_tissue)
        geom = spec.resolve(s)
        w, h = s.dimensions
        if geom.tile_px_level0 > min(w, h):
            raise ConfigError(
                f"a tile of {ex.identity['encoder']} is {geom.tile_px_level0} px at level 0 "
                f"({spec.tile_um:.0f} µm), larger than the slide ({w} x {h} px)"
            )
        mask = detect_tissue(s, tissue)
        coords, frac = tile_grid(s.dimensions, geom, mask)
        arrays = iter_tiles(s, geom, coords, batch_size=chunk, workers=workers)
        return SlideTiles(
            coords, frac, coords_attrs(s, geom, item.name), geom.effective_mpp, geom.mpp,
            s.mpp_info.source, spec.tile_px, geom.tile_px_level0, str(item.path), arrays,
        )  # fmt: skip
    from histoxmodal.tiling.outputs import load_tiles

    ts = stack.enter_context(load_tiles(item.path))
    man, attrs = ts.manifest, ts.attrs
    spec = TileSpec(**man["params"]["spec"])
    eff = float(man.get("effective_mpp") or attrs.get("effective_mpp") or spec.target_mpp)
    if abs(eff / ex.target_mpp - 1) > MPP_TOLERANCE:
        log.warning(
            "%s: tiles are %.3g µm/px but %s expects %.3g µm/px; features are extracted from "
            "these tiles as they are (re-tile with --mpp-target %.3g to match)",
            item.path, eff, ex.identity["encoder"], ex.target_mpp, ex.target_mpp,
        )  # fmt: skip
    source = man.get("source") or {}
    slide_path = source.get("path") or man.get("slide") or ""
    t = SlideTiles(
        ts.coords, ts.tissue_fraction, attrs, eff, float(man.get("mpp") or attrs["level0_mpp"]),
        str(man.get("mpp_source") or ""), spec.tile_px, int(attrs["patch_size_level0"]),
        str(slide_path),
    )  # fmt: skip
    if ts.tiles is not None:
        t.arrays = _store_chunks(ts.tiles, len(ts), chunk)
        return t
    # no tiles.h5: read the pixels again from the slide the tiles were cut from
    p = Path(slide_path)
    if not p.exists():
        raise FileNotFoundError(
            f"{item.path} has no {keys.TILE_STORE_FILE} and its slide {p} is gone; re-tile with "
            "--save-tiles, or put the slide back"
        )
    now = slide_identity(p)
    if source and (now["size"], now["mtime_ns"]) != (source.get("size"), source.get("mtime_ns")):
        raise DataError(
            f"{p} changed since it was tiled into {item.path} (size or modification time "
            "differ); re-tile it (`histoxmodal tile --overwrite`)"
        )
    params = man["params"]
    s = stack.enter_context(open_slide(p, mpp=params.get("mpp"), reader=params.get("reader")))
    geom = spec.resolve(s)
    if geom.tile_px_level0 != t.tile_px_level0:
        raise DataError(
            f"{item.path}: tiles of {t.tile_px_level0} px at level 0 in coords.h5, but the slide "
            f"now resolves them to {geom.tile_px_level0} px; re-tile it"
        )
    t.arrays = iter_tiles(s, geom, ts.coords, batch_size=chunk, workers=workers)
    return t
