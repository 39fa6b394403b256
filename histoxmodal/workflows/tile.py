"""Tiling whole slides to disk: one folder of outputs per slide, resumable and atomic.

``tile_slide`` handles one slide; ``tile_slides`` a list of slides and folders, in parallel,
optionally one shard of a SLURM array. Every slide's folder is built in a hidden staging folder
and renamed into place when complete, so a killed run never leaves an output that looks finished,
and a restarted run skips the slides whose ``manifest.json`` says ``ok`` with the same parameters.
A slide that fails gets a ``manifest.json`` with ``status: failed`` and the reason (and nothing
else); the others go on.

A slide is identified by the path given, its size and modification time (``source`` in the
manifest): a different file under an old name is refused, not skipped. One process at a time
tiles a slide (a lock ``OUT/.locks/<name>.lock``); a second one skips it with a clear line.
SIGINT and SIGTERM stop the run (:class:`Interrupted`): worker processes are terminated, the
slides in progress leave nothing behind, and a rerun resumes. Workers also exit by themselves
when the parent dies (``kill -9``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.deps import require_extra
from histoxmodal.errors import ConfigError, HistoxmodalError, Interrupted
from histoxmodal.fileutil import clean_stale, publish_dir, staging_dir, write_json_atomic
from histoxmodal.io.mpp import SlideMpp, mpp_params
from histoxmodal.progress import progress
from histoxmodal.reprs import THUMBNAIL_PX, fmt_mpp, html_card, safe_html, safe_repr
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

#: folder of ``OUT`` that holds one lock file per slide being tiled
LOCK_DIR = ".locks"

#: ``status`` values of a slide's manifest; ``empty`` means read fine but no tissue found
STATUS_OK, STATUS_EMPTY, STATUS_FAILED, STATUS_SKIPPED = "ok", "empty", "failed", "skipped"
#: another process holds the slide's lock: its output is not finished yet
STATUS_BUSY = "busy"


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

    @classmethod
    def busy(cls, slide, name: str, lock_file: str, what: str, out_dir: str = "") -> SlideResult:
        """The result of a slide whose lock another process holds: ``what`` (its tiles, maps,
        features) is not finished, and the command must not exit 0 as if it were."""
        return cls(
            str(slide), name, STATUS_BUSY,
            reason=f"in progress in another process (it holds {lock_file}); its {what} "
            "not finished: rerun when that process is done",
            out_dir=out_dir,
        )  # fmt: skip

    @property
    def failed(self) -> bool:
        """Whether the slide has no finished output: it failed, or another process is still
        working on it (``busy``); a pipeline must not go on as if it were done."""
        return self.status in (STATUS_FAILED, STATUS_BUSY)


#: characters an output name may not hold (path separators, NUL and control characters)
_UNSAFE = re.compile(r"[\x00-\x1f/\\]+")


def safe_name(name: str) -> str:
    """``name`` made safe as one folder inside ``--out``: separators and control characters
    become ``_``, leading dots are dropped (no hidden names, never ``.`` or ``..``), and an empty
    result becomes ``slide``."""
    return _UNSAFE.sub("_", name).lstrip(".").strip() or "slide"


def output_name(path: str | Path) -> str:
    """The output folder name of a slide: its file name (the path given, not a symlink's target)
    without suffix (``x.ome.tif`` -> ``x``), made safe with :func:`safe_name` (``..svs`` ->
    ``slide``)."""
    name = Path(path).name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return safe_name(name[: -len(suf)])
    return safe_name(Path(name).stem)


def slide_identity(path: str | Path) -> dict[str, object]:
    """What identifies a slide file between runs: the absolute path given, the file it resolves
    to, its size and modification time (ns)."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    st = p.stat()
    return {
        "path": str(p),
        "resolved": str(p.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


#: set by the signal handlers of :func:`tile_slides`; an error raised while it is set is an
#: interruption, never a failed slide
_stop = threading.Event()


def _on_signal(signum: int, frame: object) -> None:
    _stop.set()
    raise Interrupted(signum)


class _StopOnSignals:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread while tiling runs."""

    def __enter__(self) -> _StopOnSignals:
        _stop.clear()
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, _on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _worker_init() -> None:
    """In each pool worker: leave SIGINT to the parent (which terminates the pool), and exit as
    soon as the parent is gone, so a ``kill -9`` of the parent leaves no worker behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="histoxmodal-parent-watch").start()


def _terminate(pool) -> None:
    """Stop a ``ProcessPoolExecutor`` now: its workers are terminated, not waited for."""
    stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    procs = list((getattr(pool, "_processes", None) or {}).values())
    if stop is not None:
        stop()
    else:
        for proc in procs:
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
    pool.shutdown(wait=False, cancel_futures=True)


def check_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and make sure files can be written there.

    Raises
    ------
    ConfigError
        ``out_dir`` is a file, cannot be created, or is not writable.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    return out


def find_slides(inputs: Iterable[str | Path]) -> tuple[list[Path], list[SlideResult]]:
    """Expand files and folders into slide files, sorted and de-duplicated.

    Folders are searched (not recursively) for :data:`SLIDE_SUFFIXES`. The ``.dcm`` files of one
    folder form one DICOM WSI, represented by the first of them.

    Returns
    -------
    slides
        Absolute slide paths as given (a symlink stays a symlink, so it names its own output).
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
    for p in sorted({Path(os.path.abspath(q)) for q in found}):
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
    mpp: float | None,
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


def foreign_folder(final: Path, markers: tuple[str, ...]) -> str | None:
    """Why ``final`` (one item's output folder inside ``--out``) may not be replaced, or None.

    An existing non-empty folder holding none of the command's own files (``markers``: its
    manifest, its main outputs) was not written by it (a lab's own folder that happens to bear
    the slide's name): publishing over it would delete it.
    """
    if not final.exists():
        return None
    if not final.is_dir():
        return f"{final} is a file, not an output folder; move it or choose another --out"
    if any((final / m).is_file() for m in markers) or not any(final.iterdir()):
        return None
    return (
        f"{final} is a folder histoxmodal did not write (none of {', '.join(markers)}); it is "
        "left as it is: move it or choose another --out"
    )


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
        (``reason`` says why). Known errors are recorded, not raised; ``skipped`` also when
        another process holds the slide's lock.

    Raises
    ------
    Interrupted
        SIGINT or SIGTERM arrived (under :func:`tile_slides`); the slide leaves nothing behind.
    """
    from filelock import FileLock, Timeout

    spec = spec or TileSpec()
    tissue = tissue or TissueParams()
    t0 = time.perf_counter()
    slide = Path(slide).expanduser()
    name = safe_name(name) if name else output_name(slide)
    out_dir = Path(out_dir)
    final = out_dir / name
    annotations = None
    if geojson_in is not None:
        from histoxmodal.tiling.annotations import read_geojson_polygons

        geojson_in = Path(geojson_in).expanduser().resolve()
        annotations = read_geojson_polygons(geojson_in)  # a malformed file is a usage error
    params = _params(spec, tissue, mpp, save_tiles, reader, geojson_in)
    try:
        source = slide_identity(slide)
    except OSError:
        source = None  # reported as failed below, by the reader
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / LOCK_DIR).mkdir(exist_ok=True)
    lock = FileLock(out_dir / LOCK_DIR / f"{name}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return SlideResult.busy(slide, name, lock.lock_file, "tiles are", str(final))
    try:
        return _tile_locked(
            slide, name, out_dir, spec, tissue, params, source, t0,
            mpp=mpp, allow_implausible_mpp=allow_implausible_mpp, save_tiles=save_tiles,
            workers=workers, overwrite=overwrite, reader=reader, allow_upsample=allow_upsample,
            annotations=(annotations, geojson_in),
        )  # fmt: skip
    finally:
        lock.release()


def _same_source(previous: dict, source: dict | None) -> bool:
    recorded = previous.get("source")
    if recorded is None:  # written before slides were identified: the resolved path only
        return source is not None and previous.get("slide") == source["resolved"]
    keys_ = ("path", "size", "mtime_ns")
    return source is not None and all(recorded.get(k) == source[k] for k in keys_)


def _tile_locked(
    slide: Path,
    name: str,
    out_dir: Path,
    spec: TileSpec,
    tissue: TissueParams,
    params: dict,
    source: dict | None,
    t0: float,
    *,
    mpp: float | None,
    allow_implausible_mpp: bool,
    save_tiles: bool,
    workers: int,
    overwrite: bool,
    reader: str | None,
    annotations: tuple[list | None, Path | None] = (None, None),
    allow_upsample: bool = False,
) -> SlideResult:
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.annotations import annotation_mask, points_in_polygons
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.grid import grid_coords, tile_grid
    from histoxmodal.tiling.outputs import (
        coords_attrs,
        overlay_thumbnail,
        write_coords,
        write_overlay,
        write_tiles,
    )
    from histoxmodal.tiling.tissue import detect_tissue

    final = out_dir / name
    foreign = foreign_folder(
        final, (keys.TILE_MANIFEST_FILE, keys.TILE_COORDS_FILE, keys.TILE_STORE_FILE)
    )
    if foreign:  # --overwrite included: only our own output is ever replaced
        return SlideResult(str(slide), name, STATUS_FAILED, reason=foreign, out_dir=str(final))
    previous = _read_manifest(final)
    if (
        previous is not None
        and not overwrite
        and previous.get("status") in (STATUS_OK, STATUS_EMPTY)
    ):
        if not _same_source(previous, source):
            was = previous.get("source") or {"path": previous.get("slide")}
            return SlideResult(
                str(slide),
                name,
                STATUS_FAILED,
                reason=(
                    f"{final} holds the tiles of another slide, or of this file before it "
                    f"changed ({was.get('path')}, {was.get('size', '?')} bytes); pass "
                    f"--overwrite (overwrite=True) to replace it, or choose another --out"
                ),
                out_dir=str(final),
            )
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
    clean_stale(out_dir, name)
    tmp = staging_dir(final)
    manifest: dict[str, object] = {
        "slide": source["resolved"] if source else str(slide),
        "source": source,
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
            geom = spec.resolve(s)  # needs the slide's pixel size, and says so without one
            check_upsample(spec.target_mpp, geom.mpp, allow=allow_upsample)
            w, h = s.dimensions
            if geom.tile_px_level0 > min(w, h):
                raise ConfigError(
                    f"a tile is {geom.tile_px_level0} px at level 0 "
                    f"({geom.tile_px_level0 * geom.mpp:.0f} µm), larger than the slide "
                    f"({w} x {h} px); choose a smaller --tile-px or --tile-um"
                )
            polygons, geojson_path = annotations
            size0 = geom.tile_px_level0
            grid = grid_coords(s.dimensions, size0, geom.step_level0)
            if polygons is None:
                mask = detect_tissue(s, tissue)
                coords, frac = tile_grid(s.dimensions, geom, mask)
                grid_frac = mask.fraction(grid, size0)
                left_out = (grid_frac > 0) & ~(grid_frac >= spec.min_tissue)
            else:
                mask = annotation_mask(polygons, s.dimensions, source=geojson_path)
                inside = points_in_polygons(grid + size0 / 2.0, polygons)
                coords = grid[inside]
                frac = mask.fraction(coords, size0).astype(np.float32)
                left_out = ~inside & (mask.fraction(grid, size0) > 0)
            attrs = coords_attrs(s, geom, name)
            write_coords(tmp / keys.TILE_COORDS_FILE, coords, frac, attrs)
            mask.write_geojson(tmp / keys.TILE_GEOJSON_FILE)
            thumb = overlay_thumbnail(s, mask, OVERLAY_MAX_SIDE)
            rule = (
                f"centres inside {len(polygons)} annotations of {geojson_path.name}"
                if polygons is not None
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
                    "tissue_threshold": (mask.threshold if np.isfinite(mask.threshold) else None),
                    "tissue": mask.provenance,
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
    except BaseException as exc:
        if _stop.is_set() or not isinstance(exc, Exception):
            # an interruption (also when a library turned it into another error): nothing is
            # recorded for this slide, and the run stops
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception):
                raise Interrupted(signal.SIGINT) from exc
            raise
        known = isinstance(exc, HistoxmodalError | OSError)
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        manifest.update({"status": STATUS_FAILED, "reason": reason})
        result.status, result.reason = STATUS_FAILED, reason
        # a failed slide leaves its manifest (and the traceback of an unexpected error) only
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if not known:
            (tmp / keys.TILE_ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
            log.error("%s: unexpected error, traceback in %s", slide, final / keys.TILE_ERROR_LOG)
    result.seconds = time.perf_counter() - t0
    manifest["seconds"] = round(result.seconds, 3)
    try:
        write_json_atomic(tmp / keys.TILE_MANIFEST_FILE, manifest)
        publish_dir(tmp, final)
    except OSError as exc:  # e.g. the disk is full: keep what was there, report the slide
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC or result.status != STATUS_FAILED:
            result.status = STATUS_FAILED
            result.reason = f"could not write {final}: {exc}"
        else:
            result.reason += f" (and its manifest could not be written: {exc})"
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
    if kwargs.get("geojson_in") is not None:
        from histoxmodal.tiling.annotations import read_geojson_polygons

        read_geojson_polygons(kwargs["geojson_in"])  # a bad file stops the run before any slide
    slides, results = find_slides(inputs)
    if not slides and not results:
        raise ConfigError(
            f"no slides found in {', '.join(map(str, inputs))}; give slide files or folders "
            f"holding files with suffixes {' '.join(SLIDE_SUFFIXES)}"
        )
    out_dir = check_out_dir(out_dir)
    if shard is not None:
        k, n = shard
        slides = slides[k::n]
    names: dict[str, Path] = {}
    for p in slides:
        other = names.setdefault(output_name(p), p)
        if other != p:
            raise ConfigError(
                f"{other} and {p} would both write to {out_dir / output_name(p)}; "
                f"rename one or tile them into different --out folders"
            )
    for r in results:
        if on_result:
            on_result(r)
    with _StopOnSignals():
        if workers <= 1 or len(slides) <= 1:
            for p in progress(
                slides, total=len(slides), desc="slides", unit="slide", log_items=True
            ):
                r = tile_slide(p, out_dir, spec, workers=max(1, workers), **kwargs)
                results.append(r)
                if on_result:
                    on_result(r)
        else:
            results.extend(_tile_in_processes(slides, out_dir, spec, workers, on_result, kwargs))
    results.sort(key=lambda r: (r.name, r.slide))
    return results


def _clean_if_free(out_dir: Path, name: str) -> None:
    """Remove the staging folders of ``name`` unless another process holds its lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(out_dir / LOCK_DIR / f"{name}.lock", timeout=0)
    try:
        with lock:
            clean_stale(out_dir, name)
    except Timeout:
        pass


def _tile_in_processes(
    slides: list[Path],
    out_dir: Path,
    spec: TileSpec,
    workers: int,
    on_result: Callable[[SlideResult], None] | None,
    kwargs: dict,
) -> list[SlideResult]:
    """Slides in worker processes. On an interruption or error the workers are terminated at
    once and the staging folders of the unfinished slides removed."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    n_proc = min(workers, len(slides))
    threads = max(1, workers // n_proc)
    pool = ProcessPoolExecutor(n_proc, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    results: list[SlideResult] = []
    futs = {
        pool.submit(_tile_one, (p, out_dir, spec, {**kwargs, "workers": threads})): p
        for p in slides
    }
    try:
        for fut in progress(
            as_completed(futs), total=len(futs), desc="slides", unit="slide", log_items=True
        ):
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
    except BaseException:
        _terminate(pool)
        done = {r.name for r in results}
        for p in slides:
            if output_name(p) not in done:
                _clean_if_free(out_dir, output_name(p))
        raise
    pool.shutdown()
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
    folder
        The slide's output folder (``OUT/<slide name>``) when opened with :func:`load_tiles`.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict[str, object]
    manifest: dict[str, object]
    tiles: object | None = None
    folder: Path | None = None
    _file: object | None = None

    def _fact(self, key: str, default: object = None) -> object:
        return self.attrs.get(key, self.manifest.get(key, default))

    @safe_repr
    def __repr__(self) -> str:
        n = len(self.coords)
        name = self.manifest.get("name") or self.attrs.get("name") or "?"
        area = self.manifest.get("tissue_area_mm2")
        tissue = f", tissue {area:.2f} mm²" if isinstance(area, int | float) else ""
        stored = ", pixels stored" if self.tiles is not None else ""
        return (
            f"TileSet({n} tile{'' if n == 1 else 's'} of {self._fact('tile_px', '?')} px at "
            f"{fmt_mpp(self._fact('effective_mpp'))}, slide={name!r}{tissue}{stored})"
        )

    @safe_html
    def _repr_html_(self) -> str:
        """A table of the tile set's facts and its overlay (at most 256 px), for Jupyter."""
        m = self.manifest
        tile_px, size0 = self._fact("tile_px"), self._fact("patch_size_level0")
        mpp = self._fact("effective_mpp")
        tissue = m.get("tissue") if isinstance(m.get("tissue"), dict) else {}
        rows: list[tuple[str, object]] = [
            ("slide", m.get("slide", "?")),
            ("tiles", len(self.coords)),
            ("tile", f"{tile_px} px at {fmt_mpp(mpp)} (target {fmt_mpp(m.get('target_mpp'))})"),
        ]
        if isinstance(tile_px, int | float) and isinstance(mpp, int | float):
            rows.append(("tile side", f"{tile_px * mpp:.0f} µm ({size0} level-0 px)"))
        if isinstance(m.get("tissue_area_mm2"), int | float):
            rows.append(
                ("tissue", f"{m['tissue_area_mm2']:.2f} mm², {m.get('tissue_regions')} region(s)")
            )
        rule = f"min tissue {m.get('min_tissue')}"
        rows.append(("kept", f"{rule}, {tissue.get('method', m.get('tissue_source', '?'))}"))
        rows.append(("pixels", "stored (tiles.h5)" if self.tiles is not None else "not stored"))
        if self.folder is not None:
            rows.append(("folder", str(self.folder)))
        return html_card(repr(self), rows, self._thumbnail())

    def _thumbnail(self) -> np.ndarray | None:
        """``overlay.png`` (tile outlines already drawn) or the slide's thumbnail with outlines."""
        from PIL import Image, ImageDraw

        if self.folder is not None and (self.folder / keys.TILE_OVERLAY_FILE).is_file():
            with Image.open(self.folder / keys.TILE_OVERLAY_FILE) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                return np.asarray(im)
        slide = self.manifest.get("slide")
        if not slide or not Path(str(slide)).is_file():
            return None
        from histoxmodal.io.slide import open_slide

        reader = self.manifest.get("reader")
        with open_slide(str(slide), reader=reader, allow_implausible_mpp=True) as sl:
            thumb = sl.get_thumbnail(THUMBNAIL_PX)
            ds = sl.dimensions[0] / thumb.shape[1]
        im = Image.fromarray(thumb)
        draw = ImageDraw.Draw(im)
        side = float(self._fact("patch_size_level0") or 0) / ds
        for x, y in np.asarray(self.coords, dtype=np.float64) / ds:
            draw.rectangle([x, y, x + side, y + side], outline=(31, 119, 180))
        return np.asarray(im)

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
    ts = TileSet(coords, frac, attrs, manifest, folder=folder)
    store = folder / keys.TILE_STORE_FILE
    if store.exists():
        ts._file = h5py.File(store, "r")
        ts.tiles = ts._file["tiles"]  # type: ignore[index]
    return ts
