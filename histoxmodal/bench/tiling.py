"""``histoxmodal bench tiling``: tile extraction and tissue detection.

1. Extraction: tiles/s of :func:`histoxmodal.iter_tiles` with 1 and 2 workers against a plain
   OpenSlide loop (``read_region`` + ``convert("RGB")`` + resize when the target resolution is
   not a pyramid level) over the same tiles. Each pass opens the slide with a fresh, private
   OpenSlide tile cache so no method profits from tiles another one decoded.
2. Whole command: wall time of ``histoxmodal tile SLIDE --save-tiles --workers 1`` in a fresh
   process against a plain OpenSlide loop over the same tiles in a fresh process (both pay
   the interpreter's start and their imports), rounds interleaved. By default on a generated
   20x slide of about 1,400 tiles.
3. Detection: time of open + tissue detection + grid on generated slides of growing size, and
   the peak memory it adds (measured in a fresh subprocess per size).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPENSLIDE_CACHE_BYTES = 32 * 1024 * 1024


def _fresh_cache(osr) -> None:
    import openslide

    osr.set_cache(openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES))


def _plain_pass(path: Path, level: int, read_px: int, tile_px: int, coords: np.ndarray) -> float:
    import openslide
    from PIL import Image

    osr = openslide.OpenSlide(str(path))
    _fresh_cache(osr)
    t0 = time.perf_counter()
    for x, y in coords:
        img = osr.read_region((int(x), int(y)), level, (read_px, read_px)).convert("RGB")
        if read_px != tile_px:
            img = img.resize((tile_px, tile_px), Image.Resampling.BOX)
        np.asarray(img)
    dt = time.perf_counter() - t0
    osr.close()
    return dt


def _ours_pass(path: Path, geometry, coords: np.ndarray, workers: int) -> float:
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.extract import iter_tiles

    slide = open_slide(path, mpp=geometry.mpp)
    _fresh_cache(slide._osr)
    t0 = time.perf_counter()
    n = 0
    for batch in iter_tiles(slide, geometry, coords, workers=workers):
        n += len(batch)
    dt = time.perf_counter() - t0
    slide.close()
    if n != len(coords):
        raise RuntimeError(f"read {n} tiles, expected {len(coords)}")
    return dt


def check_bench_slide(path: str | Path) -> Path:
    """Make sure ``path`` is a slide OpenSlide opens, before anything is generated.

    Raises
    ------
    ConfigError
        The file is missing or not one OpenSlide reads.
    DataError
        The file is not a readable slide (the reader's own error, kept).
    """
    from histoxmodal.errors import ConfigError, HistoxmodalError
    from histoxmodal.io.slide import open_slide

    path = Path(path).expanduser()
    try:
        with open_slide(path) as slide:
            backend = slide.name
    except (HistoxmodalError, OSError) as exc:  # keeps the kind: a bad slide stays bad data
        kind = type(exc) if isinstance(exc, HistoxmodalError) else ConfigError
        raise kind(f"bench tiling: {exc}") from exc
    if backend != "openslide":
        raise ConfigError(
            f"bench tiling: {path} is read by the {backend} reader; the extraction benchmark "
            "compares against OpenSlide, so give a slide OpenSlide opens (.svs, .ndpi, "
            "a tiled pyramidal .tif, ...)"
        )
    return path


def bench_extraction(
    path: Path, *, repeats: int = 5, min_seconds: float = 1.0, max_tiles: int = 2000
) -> dict[str, object]:
    """Tiles/s of the plain loop and of ``iter_tiles`` with 1 and 2 workers, with ratios."""
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.tiling.tissue import detect_tissue

    with open_slide(path) as slide:
        if slide.name != "openslide":
            raise ValueError(
                f"{path}: the extraction benchmark compares against OpenSlide, "
                f"which cannot open this file"
            )
        geom = TileSpec().resolve(slide)
        coords, _ = tile_grid(slide.dimensions, geom, detect_tissue(slide))
    coords = coords[:max_tiles]
    if len(coords) == 0:
        raise ValueError(f"{path}: no tissue tiles to read")
    methods = {
        "plain_openslide": lambda: _plain_pass(
            path, geom.read_level, geom.read_px, geom.spec.tile_px, coords
        ),
        "histoxmodal_1_worker": lambda: _ours_pass(path, geom, coords, 1),
        "histoxmodal_2_workers": lambda: _ours_pass(path, geom, coords, 2),
    }
    names = list(methods)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % 3 :] + names[: r % 3]  # rotate so no method always runs first
        for name in order:
            n, elapsed = 0, 0.0
            while elapsed < min_seconds or n == 0:
                elapsed += methods[name]()
                n += len(coords)
            rates[name].append(n / elapsed)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["plain_openslide"]
    return {
        "slide": str(path),
        "tiles": len(coords),
        "tile_px": geom.spec.tile_px,
        "read_level": geom.read_level,
        "read_px": geom.read_px,
        "tiles_per_s": med,
        "ratio_1_worker": med["histoxmodal_1_worker"] / base,
        "ratio_2_workers": med["histoxmodal_2_workers"] / base,
        "rounds": rates,
    }


_PLAIN_CHILD = r"""
import sys
import h5py, numpy as np, openslide
from PIL import Image

with h5py.File(sys.argv[2], "r") as f:
    coords, attrs = f["coords"][:], dict(f["coords"].attrs)
level, read_px, tile_px = int(attrs["patch_level"]), int(attrs["patch_size"]), int(attrs["tile_px"])
osr = openslide.OpenSlide(sys.argv[1])
for x, y in coords:
    img = osr.read_region((int(x), int(y)), level, (read_px, read_px)).convert("RGB")
    if read_px != tile_px:
        img = img.resize((tile_px, tile_px), Image.Resampling.BOX)
    np.asarray(img)
"""

#: the whole command's bar against the plain loop (wall time; lower is better)
WHOLE_TARGET = 1.3


def bench_whole_command(path: Path, *, repeats: int = 5) -> dict[str, object]:
    """Wall seconds of ``histoxmodal tile --save-tiles --workers 1`` and of a plain OpenSlide
    loop over the tiles it kept, each in a fresh process, interleaved; median ratio."""
    import shutil

    import h5py

    cmd = [sys.executable, "-m", "histoxmodal.cli.main", "tile", str(path), "--save-tiles"]
    cmd += ["--workers", "1", "-q", "--out"]
    with tempfile.TemporaryDirectory(prefix="histoxmodal-bench-whole-") as td:
        first = Path(td) / "first"
        subprocess.run([*cmd, str(first)], check=True, capture_output=True)
        coords = next(first.glob("*/coords.h5"))
        with h5py.File(coords, "r") as f:
            n_tiles = len(f["coords"])
        times: dict[str, list[float]] = {"plain_openslide": [], "histoxmodal_tile": []}
        for r in range(repeats):
            for name in sorted(times, reverse=bool(r % 2)):  # alternate which runs first
                out = Path(td) / "out"
                shutil.rmtree(out, ignore_errors=True)
                run = [*cmd, str(out)] if name == "histoxmodal_tile" else [
                    sys.executable, "-c", _PLAIN_CHILD, str(path), str(coords)
                ]  # fmt: skip
                t0 = time.perf_counter()
                subprocess.run(run, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "slide": str(path),
        "tiles": n_tiles,
        "seconds": med,
        "ratio": med["histoxmodal_tile"] / med["plain_openslide"],
        "rounds": times,
    }


_DETECT_CHILD = r"""
import json, sys, time
from pathlib import Path
from histoxmodal.io.slide import open_slide
from histoxmodal.tiling.grid import tile_grid
from histoxmodal.tiling.spec import TileSpec
from histoxmodal.tiling.tissue import detect_tissue
import cv2, numpy, openslide  # imported before the baseline is taken

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
before = status("VmRSS")
t0 = time.perf_counter()
slide = open_slide(sys.argv[1])
mask = detect_tissue(slide)
coords, _ = tile_grid(slide.dimensions, TileSpec().resolve(slide), mask)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_extra_mb": status("VmHWM") - before,
                  "n_tiles": len(coords), "mask_shape": list(mask.mask.shape)}))
"""


def bench_detection(path: Path, *, repeats: int = 3) -> dict[str, object]:
    """Open + tissue detection + grid: median seconds, and peak extra memory (fresh process)."""
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.tiling.tissue import detect_tissue

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open_slide(path) as slide:
            mask = detect_tissue(slide)
            coords, _ = tile_grid(slide.dimensions, TileSpec().resolve(slide), mask)
        times.append(time.perf_counter() - t0)
        dims = slide.dimensions
    child = subprocess.run(
        [sys.executable, "-c", _DETECT_CHILD, str(path)], capture_output=True, text=True, check=True
    )
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "slide": str(path),
        "dimensions": list(dims),
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "n_tiles": len(coords),
        "mask_shape": list(mask.mask.shape),
        "peak_extra_mb": mem["peak_extra_mb"],
    }


def _generate(folder: Path, side: int) -> Path:
    from histoxmodal.testing import make_synthetic_slide

    path = folder / f"synthetic_{side}.tif"
    t0 = time.perf_counter()
    make_synthetic_slide(
        path, width=side, height=side, tile=512, quality=70, texture_variants=8, seed=1
    )
    print(
        f"  generated {path.name} ({path.stat().st_size / 1e6:.0f} MB) in "
        f"{time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    return path


def _generate_20x(folder: Path) -> Path:
    """A 24,000 x 18,000 px slide at 0.5 µm/px (20x): about 1,400 tissue tiles of 224 px read
    straight from level 0, the case where everything but extraction weighs most."""
    from histoxmodal.testing import make_synthetic_slide

    path = folder / "synthetic_20x.tif"
    make_synthetic_slide(
        path, width=24_000, height=18_000, mpp=0.5, tile=512, quality=70, texture_variants=8
    )
    return path


def run_tiling_bench(
    slide: str | Path | None = None,
    *,
    repeats: int = 5,
    min_seconds: float = 1.0,
    large: int = 100_000,
    max_tiles: int = 2000,
    json_path: str | Path | None = None,
) -> int:
    """Run the benchmark and print a report; returns the CLI exit code."""
    report: dict[str, object] = {"machine": {"python": sys.version.split()[0]}}
    user_slide = bool(slide)
    if slide:
        slide = check_bench_slide(slide)  # before minutes of generating slides
    with tempfile.TemporaryDirectory(prefix="histoxmodal-bench-") as td:
        folder = Path(td)
        print("tiling benchmark (medians over interleaved rounds)", file=sys.stderr)
        sizes = [s for s in (large // 4, large // 2, large) if s > 0]
        generated = {s: _generate(folder, s) for s in sizes}
        slide = Path(slide) if slide else generated.get(large) or _generate(folder, 16384)
        ext = bench_extraction(slide, repeats=repeats, min_seconds=min_seconds, max_tiles=max_tiles)
        report["extraction"] = ext
        tps = ext["tiles_per_s"]
        print(
            f"\nextraction: {ext['slide']}\n  {ext['tiles']} tiles of {ext['tile_px']} px "
            f"(read {ext['read_px']} px at level {ext['read_level']})"
        )
        for k, v in tps.items():
            print(f"  {k:<24} {v:8.0f} tiles/s")
        print(f"  ratio 1 worker / plain   {ext['ratio_1_worker']:.2f}   (target >= 0.9)")
        print(f"  ratio 2 workers / plain  {ext['ratio_2_workers']:.2f}   (target >= 1.6)")
        whole_slide = Path(slide) if user_slide else _generate_20x(folder)
        whole = bench_whole_command(whole_slide, repeats=repeats)
        report["whole_command"] = whole
        print(
            f"\nwhole command: histoxmodal tile --save-tiles --workers 1 (fresh process) vs a "
            f"plain OpenSlide loop over the same {whole['tiles']} tiles (fresh process)\n"
            f"  {Path(whole['slide']).name}\n"
            f"  plain OpenSlide loop     {whole['seconds']['plain_openslide']:8.2f} s\n"
            f"  histoxmodal tile         {whole['seconds']['histoxmodal_tile']:8.2f} s\n"
            f"  ratio tile / plain       {whole['ratio']:.2f}   (target < {WHOLE_TARGET})"
        )
        det = [bench_detection(generated[s]) for s in sizes]
        if slide:
            det.insert(0, bench_detection(Path(slide)))
        report["detection"] = det
        if det:
            print(
                "\ntissue detection + grid (open, thumbnail from a low-resolution level, "
                "mask, polygons, grid)"
            )
            print(
                f"  {'slide':<28} {'size':>15} {'seconds':>8} {'peak MB':>8} {'mask':>11} "
                f"{'tiles':>7}"
            )
            for d in det:
                w, h = d["dimensions"]
                print(
                    f"  {Path(d['slide']).name:<28} {f'{w}x{h}':>15} "
                    f"{d['seconds_median']:8.2f} {d['peak_extra_mb']:8.0f} "
                    f"{'x'.join(map(str, d['mask_shape'])):>11} {d['n_tiles']:>7}"
                )
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=float))
    return 0
