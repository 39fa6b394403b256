"""Tiling whole slides to disk: one folder of outputs per slide, resumable and atomic.

``tile_slide`` handles one slide; ``tile_slides`` a list of slides and folders, in parallel,
optionally one shard of a SLURM array. What tiling computes for one slide is :class:`TileJob`;
the batch-job protocol (staging folders renamed into place, resume, locks, shards, signals,
failures recorded and the others going on) is :mod:`histoxmodal.workflows.jobs`, shared with
``features`` and ``predict``.

Writes ``OUT/<name>/``: ``coords.h5``, ``manifest.json``, ``overlay.png``, ``tissue.geojson``
and, with ``save_tiles``, ``tiles.h5`` (read back with
:func:`~histoxmodal.tiling.outputs.load_tiles`). A slide that fails gets a ``manifest.json`` with
``status: failed`` and the reason (and nothing else). One process at a time tiles a slide (a
lock ``OUT/.locks/<name>.lock``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.deps import require_extra
from histoxmodal.errors import ConfigError
from histoxmodal.io.discovery import output_name, safe_name
from histoxmodal.io.mpp import SlideMpp, mpp_params
from histoxmodal.keys import STATUS_EMPTY, STATUS_OK
from histoxmodal.progress import progress
from histoxmodal.tiling.spec import TileSpec
from histoxmodal.tiling.tissue import TissueParams
from histoxmodal.workflows.jobs import (
    Done,
    FolderOutput,
    JobItem,
    SlideJob,
    SlideResult,
    run_jobs,
    run_one,
)

#: longest side of ``overlay.png`` in pixels
OVERLAY_MAX_SIDE = 1536


def user_mpp(
    mpp: float | None = None, *, override: bool = False, csv: str | Path | None = None
) -> SlideMpp | None:
    """The pixel sizes a user gives for a set of slides, for ``tile_slides(mpp=...)``.

    ``mpp`` fills in slides without a pixel size (all slides with ``override``); ``csv`` (columns
    ``slide, mpp``) names single slides, over their metadata. ``None`` when nothing is given.
    """
    if override and mpp is None:
        raise ConfigError("--mpp-override needs --mpp UM, the pixel size that replaces metadata")
    if csv is not None:
        return SlideMpp.from_csv(csv, default=mpp, override=override)
    return None if mpp is None else SlideMpp(mpp, override)


#: how many times finer than a slide's own pixels tiles may be without ``allow_upsample``
MAX_UPSAMPLE = 2.0


def check_upsample(target_mpp: float, slide_mpp: float, *, allow: bool = False) -> None:
    """Refuse tiles more than :data:`MAX_UPSAMPLE` times finer than the slide's pixels (e.g.
    ``--mpp-target 0.0001`` makes millions of one-pixel tiles) unless ``allow``."""
    if allow or target_mpp * MAX_UPSAMPLE >= slide_mpp:
        return
    raise ConfigError(
        f"tiles at {target_mpp:g} µm/px (--mpp-target, or --tile-um / --tile-px) are "
        f"{slide_mpp / target_mpp:.3g}x finer than the slide's own {slide_mpp:.4g} µm/px: they "
        "would be upsampled, interpolated pixels; "
        f"give --mpp-target >= {slide_mpp / MAX_UPSAMPLE:.4g} (at most {MAX_UPSAMPLE:g}x finer), "
        "or pass --allow-upsample (allow_upsample=True) to tile it anyway"
    )


def _params(
    spec: TileSpec,
    tissue: TissueParams,
    mpp: float | SlideMpp | None,
    save_tiles: bool,
    reader: str | None,
    geojson_in: Path | None = None,
) -> dict[str, object]:
    from histoxmodal.tiling.annotations import file_digest

    params: dict[str, object] = {
        "spec": spec.as_dict(),
        "tissue": asdict(tissue),
        "mpp": mpp_params(mpp),
        "save_tiles": save_tiles,
        "reader": reader,
    }
    if geojson_in is not None:  # only then, so earlier manifests still match
        params["geojson_in"] = {"path": str(geojson_in), "sha256": file_digest(geojson_in)}
    return params


@dataclass
class TileJob(SlideJob):
    """Tiling one slide: detect tissue (or read annotations), lay the grid, write the outputs.

    The attributes are :func:`tile_slide`'s options; ``annotations`` are the polygons read from
    ``geojson_in``.
    """

    spec: TileSpec = field(default_factory=TileSpec)
    tissue: TissueParams = field(default_factory=TissueParams)
    mpp: float | SlideMpp | None = None
    allow_implausible_mpp: bool = False
    allow_upsample: bool = False
    save_tiles: bool = False
    reader: str | None = None
    geojson_in: Path | None = None
    workers: int = 1
    annotations: list | None = None

    noun = "tiles"
    skip_reason = "already tiled with these parameters"
    layout = FolderOutput((keys.TILE_MANIFEST_FILE, keys.TILE_COORDS_FILE, keys.TILE_STORE_FILE))

    def __post_init__(self) -> None:
        if self.geojson_in is not None:
            from histoxmodal.tiling.annotations import read_geojson_polygons

            self.geojson_in = Path(self.geojson_in).expanduser().resolve()
            # a malformed file is refused (bad data, exit 1) before any slide
            self.annotations = read_geojson_polygons(self.geojson_in)
        self._params = _params(
            self.spec, self.tissue, self.mpp, self.save_tiles, self.reader, self.geojson_in
        )

    def params(self, item: JobItem) -> dict[str, Any]:
        return self._params

    def compute(self, item: JobItem, staging: Path, record: dict[str, Any]) -> Done:
        from histoxmodal.io.slide import open_slide

        with open_slide(
            item.path, mpp=self.mpp, reader=self.reader,
            allow_implausible_mpp=self.allow_implausible_mpp,
        ) as s:  # fmt: skip
            record.update(s.describe())
            geom = self.spec.resolve(s)  # needs the slide's pixel size, and says so without one
            check_upsample(self.spec.target_mpp, geom.mpp, allow=self.allow_upsample)
            w, h = s.dimensions
            if geom.tile_px_level0 > min(w, h):
                raise ConfigError(
                    f"a tile is {geom.tile_px_level0} px at level 0 "
                    f"({geom.tile_px_level0 * geom.mpp:.0f} µm), larger than the slide "
                    f"({w} x {h} px); choose a smaller --tile-px or --tile-um"
                )
            mpp, mpp_source = s.mpp, s.mpp_info.source
            grid, coords, frac, mask, left_out = self._lay_grid(s, geom)
            record.update(self._write(s, geom, item.name, staging, grid, coords, frac, mask,
                                      left_out))  # fmt: skip
        status = STATUS_OK if len(coords) else STATUS_EMPTY
        reason = ""
        if status == STATUS_EMPTY:
            reason = record["reason"] = (
                "no tissue detected (or no tile reached min_tissue); see overlay.png"
            )
        return Done(status, len(coords), mpp, mpp_source, reason)

    def _lay_grid(self, s, geom) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, np.ndarray]:
        """The full grid, the kept tiles' corners and tissue fractions, the mask, and which grid
        tiles touch tissue but were left out."""
        from histoxmodal.tiling.annotations import annotation_mask, points_in_polygons
        from histoxmodal.tiling.grid import grid_coords, tile_grid
        from histoxmodal.tiling.tissue import detect_tissue

        size0 = geom.tile_px_level0
        grid = grid_coords(s.dimensions, size0, geom.step_level0)
        if self.annotations is None:
            mask = detect_tissue(s, self.tissue)
            coords, frac = tile_grid(s.dimensions, geom, mask)
            grid_frac = mask.fraction(grid, size0)
            left_out = (grid_frac > 0) & ~(grid_frac >= self.spec.min_tissue)
        else:
            mask = annotation_mask(self.annotations, s.dimensions, source=self.geojson_in)
            inside = points_in_polygons(grid + size0 / 2.0, self.annotations)
            coords = grid[inside]
            frac = mask.fraction(coords, size0).astype(np.float32)
            left_out = ~inside & (mask.fraction(grid, size0) > 0)
        return grid, coords, frac, mask, left_out

    def _write(self, s, geom, name, tmp, grid, coords, frac, mask, left_out) -> dict[str, Any]:
        """Write ``coords.h5``, ``tissue.geojson``, ``overlay.png`` (and ``tiles.h5``) into
        ``tmp``; return the manifest's fields describing them."""
        from histoxmodal.tiling.extract import iter_tiles
        from histoxmodal.tiling.outputs import (
            coords_attrs,
            overlay_thumbnail,
            write_coords,
            write_overlay,
            write_tiles,
        )

        spec, size0 = self.spec, geom.tile_px_level0
        attrs = coords_attrs(s, geom, name)
        write_coords(tmp / keys.TILE_COORDS_FILE, coords, frac, attrs)
        mask.write_geojson(tmp / keys.TILE_GEOJSON_FILE)
        thumb = overlay_thumbnail(s, mask, OVERLAY_MAX_SIDE)
        rule = (
            f"centres inside {len(self.annotations)} annotations of {self.geojson_in.name}"
            if self.annotations is not None
            else f"min tissue {spec.min_tissue:.0%}, {mask.provenance.get('method')}"
        )
        caption = (
            f"{name}: {len(coords)} tiles of {spec.tile_px} px at {geom.effective_mpp:.3g} "
            f"µm/px ({size0 * geom.mpp:.0f} µm); level-0 {geom.mpp:.4g} µm/px "
            f"({s.mpp_info.source})\n"
            f"tissue {mask.area_um2(geom.mpp) / 1e6:.2f} mm²; tiles kept: {rule}; "
            f"{int(left_out.sum())} touching tissue excluded"
        )
        write_overlay(
            tmp / keys.TILE_OVERLAY_FILE, thumb, mask, coords, size0,
            excluded=grid[left_out], mpp=geom.mpp, caption=caption,
        )  # fmt: skip
        files = [keys.TILE_COORDS_FILE, keys.TILE_GEOJSON_FILE, keys.TILE_OVERLAY_FILE]
        if self.save_tiles:
            batches = iter_tiles(s, geom, coords, workers=self.workers)
            n_batches = -(-len(coords) // 32)
            write_tiles(
                tmp / keys.TILE_STORE_FILE, coords, spec.tile_px,
                progress(batches, total=n_batches, desc=name, unit="batch"), attrs,
            )  # fmt: skip
            files.append(keys.TILE_STORE_FILE)
        return {
            "target_mpp": spec.target_mpp,
            "effective_mpp": geom.effective_mpp,
            "tile_px": spec.tile_px,
            "tile_px_level0": geom.tile_px_level0,
            "step_px_level0": geom.step_level0,
            "overlap_px": spec.tile_px - spec.step_px,
            "read_level": geom.read_level,
            "read_px": geom.read_px,
            "min_tissue": spec.min_tissue,
            "n_tiles": len(coords),
            "tissue_threshold": (mask.threshold if np.isfinite(mask.threshold) else None),
            "tissue": mask.provenance,
            "tissue_area_mm2": mask.area_um2(geom.mpp) / 1e6,
            "tissue_regions": len(mask.polygons),
            "files": files,
        }


def tile_slide(
    slide: str | Path,
    out_dir: str | Path,
    spec: TileSpec | None = None,
    *,
    mpp: float | SlideMpp | None = None,
    allow_implausible_mpp: bool = False,
    allow_upsample: bool = False,
    tissue: TissueParams | None = None,
    save_tiles: bool = False,
    workers: int = 1,
    overwrite: bool = False,
    reader: str | None = None,
    name: str | None = None,
    geojson_in: str | Path | None = None,
) -> SlideResult:
    """Detect tissue, lay the tile grid and write the outputs of one slide.

    Writes ``out_dir/<name>/``: ``coords.h5``, ``manifest.json``, ``overlay.png``,
    ``tissue.geojson`` and, with ``save_tiles``, ``tiles.h5``.

    Parameters
    ----------
    slide
        Path of the slide.
    out_dir
        Folder that receives one sub-folder per slide.
    spec
        Tile geometry; default ``TileSpec()`` (224 px at 0.5 µm/px, 50 % tissue).
    mpp
        Level-0 µm/px, overriding the slide's metadata; or a
        :class:`~histoxmodal.io.mpp.SlideMpp` (per slide from a CSV; a fallback that fills in
        only slides without a pixel size unless ``override``). ``manifest.json`` records the
        value used and where it came from (``mpp_source``, ``mpp_detail``).
    allow_implausible_mpp
        Accept a pixel size outside 0.1-10 µm/px.
    allow_upsample
        Accept a ``spec.target_mpp`` more than :data:`MAX_UPSAMPLE` times finer than the slide's
        level-0 µm/px (tiles of interpolated pixels); without it such a slide fails with the
        reason.
    tissue
        Tissue-detection settings.
    save_tiles
        Also store the tile pixels in ``tiles.h5``.
    workers
        Threads reading tile pixels.
    overwrite
        Redo a slide that already has finished output.
    reader
        Force a slide-reader backend.
    name
        Output folder name; default the slide's file stem.
    geojson_in
        A GeoJSON of annotations in level-0 pixels (QuPath's export, or an edited
        ``tissue.geojson``): instead of tissue detection, the grid tiles whose centres fall
        inside a Polygon/MultiPolygon are kept (:mod:`histoxmodal.tiling.annotations`).

    Returns
    -------
    SlideResult
        ``status`` is ``ok``, ``empty`` (no tissue), ``skipped`` (already done) or ``failed``
        (``reason`` says why), or ``busy`` (another process holds the slide's lock). Known
        errors are recorded, not raised.

    Raises
    ------
    Interrupted
        SIGINT or SIGTERM arrived (under :func:`tile_slides`); the slide leaves nothing behind.
    """
    job = TileJob(
        spec or TileSpec(), tissue or TissueParams(), mpp, allow_implausible_mpp, allow_upsample,
        save_tiles, reader, geojson_in, workers,
    )  # fmt: skip
    slide = Path(slide).expanduser()
    item = JobItem(slide, safe_name(name) if name else output_name(slide))
    return run_one(job, item, out_dir, overwrite=overwrite)


def tile_slides(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    spec: TileSpec | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    on_result: Callable[[SlideResult], None] | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> list[SlideResult]:
    """Tile many slides; see :func:`tile_slide` for the outputs and keyword arguments.

    Parameters
    ----------
    inputs
        Slide files and folders of slides.
    out_dir
        Output folder (one sub-folder per slide).
    spec
        Tile geometry.
    workers
        Parallelism: with several slides, up to ``workers`` processes each tiling one slide;
        with one slide, ``workers`` threads reading its tiles.
    shard
        ``(K, N)``: process only slides ``K, K+N, K+2N, ...`` of the sorted list (0-based K),
        for SLURM arrays.
    on_result
        Called with each :class:`SlideResult` as it completes (for progress reporting).

    Returns
    -------
    list[SlideResult]
        One per slide (and per missing input), in sorted slide order.

    Raises
    ------
    ConfigError
        No slide found in the inputs, or two slides would write to the same output folder.
    """
    require_extra("wsi", "tiling")
    job = TileJob(spec or TileSpec(), workers=max(1, workers), **kwargs)
    return run_jobs(
        job, inputs, out_dir, shard=shard, processes=workers, overwrite=overwrite,
        on_result=on_result,
    )  # fmt: skip
