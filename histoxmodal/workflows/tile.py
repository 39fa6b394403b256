"""Tiling whole slides to disk: one folder of outputs per slide, resumable and atomic.

``tile_slide`` handles one slide; ``tile_slides`` a list of slides and folders, in parallel,
optionally one shard of a SLURM array. Every slide's folder is built in a hidden staging folder
and renamed into place when complete, so a killed run never leaves an output that looks finished,
and a restarted run skips the slides whose ``manifest.json`` says ``ok`` with the same parameters.
A slide that fails gets a ``manifest.json`` with ``status: failed`` and the reason; the others
go on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.deps import require_extra
from histoxmodal.errors import ConfigError, HistoxmodalError
from histoxmodal.fileutil import clean_stale, publish_dir, staging_dir, write_json_atomic
from histoxmodal.progress import progress
from histoxmodal.tiling.spec import TileSpec
from histoxmodal.tiling.tissue import TissueParams
from histoxmodal.version import __version__

log = logging.getLogger(__name__)

#: file suffixes picked up when a folder is given
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".bif",
    ".czi",
    ".svslide",
    ".dcm",
    ".jpg",
    ".jpeg",
    ".png",
    ".btf",
)

#: longest side of ``overlay.png`` in pixels
OVERLAY_MAX_SIDE = 1536

#: ``status`` values of a slide's manifest; ``empty`` means read fine but no tissue found
STATUS_OK, STATUS_EMPTY, STATUS_FAILED, STATUS_SKIPPED = "ok", "empty", "failed", "skipped"


@dataclass
class SlideResult:
    """The outcome of tiling one slide (also summarised in its ``manifest.json``)."""

    slide: str
    name: str
    status: str
    n_tiles: int | None = None
    mpp: float | None = None
    mpp_source: str | None = None
    reason: str = ""
    seconds: float = 0.0
    out_dir: str = ""

    @property
    def failed(self) -> bool:
        return self.status == STATUS_FAILED


def output_name(path: str | Path) -> str:
    """The output folder name of a slide: its file name without suffix (``x.ome.tif`` -> ``x``)."""
    name = Path(path).name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def find_slides(inputs: Iterable[str | Path]) -> tuple[list[Path], list[SlideResult]]:
    """Expand files and folders into slide files, sorted and de-duplicated.

    Folders are searched (not recursively) for :data:`SLIDE_SUFFIXES`. The ``.dcm`` files of one
    folder form one DICOM WSI, represented by the first of them.

    Returns
    -------
    slides
        Slide paths, resolved.
    missing
        A failed :class:`SlideResult` for each input path that does not exist.
    """
    found: list[Path] = []
    missing: list[SlideResult] = []
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            missing.append(
                SlideResult(str(p), output_name(p), STATUS_FAILED, reason=f"file not found: {p}")
            )
            continue
        if p.is_dir():
            inside = sorted(
                q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_SUFFIXES
            )
            if not inside:
                log.warning(
                    "%s: no slides in this folder (looked for %s)", p, " ".join(SLIDE_SUFFIXES)
                )
            found.extend(inside)
        else:
            found.append(p)
    # one representative per DICOM folder: OpenSlide reads the whole series from any file
    out: list[Path] = []
    dicom_dirs: set[Path] = set()
    for p in sorted({q.resolve() for q in found}):
        if p.suffix.lower() == ".dcm":
            if p.parent in dicom_dirs:
                continue
            dicom_dirs.add(p.parent)
        out.append(p)
    return out, missing


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"K/N"`` (0-based K) or ``"auto"`` (from SLURM array variables) into ``(K, N)``."""
    if text is None:
        return None
    if text == "auto":
        try:
            tid = int(os.environ["SLURM_ARRAY_TASK_ID"])
            lo = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            n = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                "--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (run it as a "
                "SLURM array job), or give the shard explicitly, e.g. --shard 0/8"
            ) from exc
        return tid - lo, n
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise ConfigError(f"--shard {text!r}: expected K/N such as 0/8, or 'auto'") from exc
    if not (n >= 1 and 0 <= k < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= K < N (K counts from 0)")
    return k, n


def _params(
    spec: TileSpec, tissue: TissueParams, mpp: float | None, save_tiles: bool, reader: str | None
) -> dict[str, object]:
    return {
        "spec": spec.as_dict(),
        "tissue": asdict(tissue),
        "mpp": mpp,
        "save_tiles": save_tiles,
        "reader": reader,
    }


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / keys.TILE_MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tile_slide(
    slide: str | Path,
    out_dir: str | Path,
    spec: TileSpec | None = None,
    *,
    mpp: float | None = None,
    allow_implausible_mpp: bool = False,
    tissue: TissueParams | None = None,
    save_tiles: bool = False,
    workers: int = 1,
    overwrite: bool = False,
    reader: str | None = None,
    name: str | None = None,
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
        Level-0 µm/px, overriding the slide's metadata.
    allow_implausible_mpp
        Accept a pixel size outside 0.1-10 µm/px.
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

    Returns
    -------
    SlideResult
        ``status`` is ``ok``, ``empty`` (no tissue), ``skipped`` (already done) or ``failed``
        (``reason`` says why). Known errors are recorded, not raised.
    """
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.outputs import coords_attrs, write_coords, write_overlay, write_tiles
    from histoxmodal.tiling.tissue import detect_tissue

    spec = spec or TileSpec()
    tissue = tissue or TissueParams()
    t0 = time.perf_counter()
    slide = Path(slide).expanduser()
    name = name or output_name(slide)
    out_dir = Path(out_dir)
    final = out_dir / name
    params = _params(spec, tissue, mpp, save_tiles, reader)
    previous = _read_manifest(final)
    if (
        previous is not None
        and not overwrite
        and previous.get("status") in (STATUS_OK, STATUS_EMPTY)
    ):
        if previous.get("params") == params:
            return SlideResult(
                str(slide),
                name,
                STATUS_SKIPPED,
                previous.get("n_tiles"),
                previous.get("mpp"),
                previous.get("mpp_source"),
                "already tiled with these parameters",
                0.0,
                str(final),
            )
        return SlideResult(
            str(slide),
            name,
            STATUS_FAILED,
            reason=(
                f"{final} holds output made with other parameters; pass --overwrite "
                f"(overwrite=True) to replace it, or choose another --out"
            ),
            out_dir=str(final),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir, name)
    tmp = staging_dir(final)
    manifest: dict[str, object] = {
        "slide": str(slide.resolve()) if slide.exists() else str(slide),
        "name": name,
        "status": STATUS_FAILED,
        "histoxmodal_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
    }
    result = SlideResult(str(slide), name, STATUS_FAILED, out_dir=str(final))
    try:
        with open_slide(
            slide, mpp=mpp, reader=reader, allow_implausible_mpp=allow_implausible_mpp
        ) as s:
            manifest.update(s.describe())
            result.mpp, result.mpp_source = s.mpp, s.mpp_info.source
            geom = spec.resolve(s)
            mask = detect_tissue(s, tissue)
            coords, frac = tile_grid(s.dimensions, geom, mask)
            attrs = coords_attrs(s, geom, name)
            write_coords(tmp / keys.TILE_COORDS_FILE, coords, frac, attrs)
            mask.write_geojson(tmp / keys.TILE_GEOJSON_FILE)
            thumb = s.get_thumbnail(max_size=min(OVERLAY_MAX_SIDE, max(s.dimensions)))
            write_overlay(tmp / keys.TILE_OVERLAY_FILE, thumb, mask, coords, geom.tile_px_level0)
            files = [keys.TILE_COORDS_FILE, keys.TILE_GEOJSON_FILE, keys.TILE_OVERLAY_FILE]
            if save_tiles:
                batches = iter_tiles(s, geom, coords, workers=workers)
                n_batches = -(-len(coords) // 32)
                write_tiles(
                    tmp / keys.TILE_STORE_FILE,
                    coords,
                    spec.tile_px,
                    progress(batches, total=n_batches, desc=name, unit="batch"),
                    attrs,
                )
                files.append(keys.TILE_STORE_FILE)
            status = STATUS_OK if len(coords) else STATUS_EMPTY
            manifest.update(
                {
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
                    "tissue_threshold": mask.threshold,
                    "tissue_area_mm2": mask.area_um2(geom.mpp) / 1e6,
                    "tissue_regions": len(mask.polygons),
                    "files": files,
                    "status": status,
                }
            )
            if status == STATUS_EMPTY:
                manifest["reason"] = (
                    "no tissue detected (or no tile reached min_tissue); see overlay.png"
                )
            result.status, result.n_tiles = status, len(coords)
            result.reason = str(manifest.get("reason", ""))
    except (KeyboardInterrupt, SystemExit):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # recorded in the manifest; the batch carries on
        known = isinstance(exc, HistoxmodalError | FileNotFoundError)
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        manifest.update({"status": STATUS_FAILED, "reason": reason})
        result.status, result.reason = STATUS_FAILED, reason
        if not known:
            (tmp / keys.TILE_ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
            log.error("%s: unexpected error, traceback in %s", slide, final / keys.TILE_ERROR_LOG)
    result.seconds = time.perf_counter() - t0
    manifest["seconds"] = round(result.seconds, 3)
    write_json_atomic(tmp / keys.TILE_MANIFEST_FILE, manifest)
    publish_dir(tmp, final)
    return result


def _tile_one(args: tuple) -> SlideResult:
    slide, out_dir, spec, kwargs = args
    return tile_slide(slide, out_dir, spec, **kwargs)


def tile_slides(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    spec: TileSpec | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    on_result: Callable[[SlideResult], None] | None = None,
    **kwargs: object,
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
    spec = spec or TileSpec()
    slides, results = find_slides(inputs)
    if not slides and not results:
        raise ConfigError(
            f"no slides found in {', '.join(map(str, inputs))}; give slide files or folders "
            f"holding files with suffixes {' '.join(SLIDE_SUFFIXES)}"
        )
    if shard is not None:
        k, n = shard
        slides = slides[k::n]
    names: dict[str, Path] = {}
    for p in slides:
        other = names.setdefault(output_name(p), p)
        if other != p:
            raise ConfigError(
                f"{other} and {p} would both write to {Path(out_dir) / output_name(p)}; "
                f"rename one or tile them into different --out folders"
            )
    for r in results:
        if on_result:
            on_result(r)
    if workers <= 1 or len(slides) <= 1:
        for p in progress(slides, total=len(slides), desc="slides", unit="slide"):
            r = tile_slide(p, out_dir, spec, workers=max(1, workers), **kwargs)
            results.append(r)
            if on_result:
                on_result(r)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        n_proc = min(workers, len(slides))
        threads = max(1, workers // n_proc)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(n_proc, mp_context=ctx) as pool:
            futs = {
                pool.submit(_tile_one, (p, out_dir, spec, {**kwargs, "workers": threads})): p
                for p in slides
            }
            for fut in progress(as_completed(futs), total=len(futs), desc="slides", unit="slide"):
                p = futs[fut]
                try:
                    r = fut.result()
                except BrokenProcessPool:
                    r = SlideResult(
                        str(p),
                        output_name(p),
                        STATUS_FAILED,
                        reason="the worker process died (out of memory or a crash "
                        "in a decoder); rerun to retry this slide",
                    )
                results.append(r)
                if on_result:
                    on_result(r)
    results.sort(key=lambda r: (r.name, r.slide))
    return results


@dataclass
class TileSet:
    """The outputs of one tiled slide, opened for reading (see :func:`load_tiles`).

    Attributes
    ----------
    coords
        ``(n, 2)`` int64 level-0 ``(x, y)``.
    tissue_fraction
        ``(n,)`` float32.
    attrs
        Attributes of the ``coords`` dataset (patch size, level, mpp, ...).
    manifest
        The parsed ``manifest.json``.
    tiles
        ``(n, tile_px, tile_px, 3)`` uint8 HDF5 dataset read lazily by index, or ``None`` when the
        slide was tiled without ``save_tiles``.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict[str, object]
    manifest: dict[str, object]
    tiles: object | None = None
    _file: object | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.tiles is None:
            raise ValueError(
                "this slide was tiled without --save-tiles; read pixels from the slide with "
                "histoxmodal.iter_tiles, or re-run `histoxmodal tile --save-tiles --overwrite`"
            )
        return self.tiles[i]  # type: ignore[index]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None

    def __enter__(self) -> TileSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_tiles(folder: str | Path) -> TileSet:
    """Open the outputs ``histoxmodal tile`` wrote for one slide.

    Parameters
    ----------
    folder
        ``OUT/<slide name>``.

    Raises
    ------
    FileNotFoundError
        No finished output there.
    ValueError
        The slide failed; the message gives the recorded reason.
    """
    import h5py

    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no {keys.TILE_MANIFEST_FILE}; was it tiled?")
    if manifest.get("status") == STATUS_FAILED:
        raise ValueError(f"{folder}: tiling failed: {manifest.get('reason')}")
    with h5py.File(folder / keys.TILE_COORDS_FILE, "r") as f:
        coords = f["coords"][:]
        frac = f["tissue_fraction"][:]
        attrs = {
            k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f["coords"].attrs.items()
        }
    ts = TileSet(coords, frac, attrs, manifest)
    store = folder / keys.TILE_STORE_FILE
    if store.exists():
        ts._file = h5py.File(store, "r")
        ts.tiles = ts._file["tiles"]  # type: ignore[index]
    return ts
