"""``histoxmodal tile`` and ``histoxmodal demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histoxmodal.cli.main import EXIT_FAILED, EXIT_OK, format_table


def spec_from_args(args: argparse.Namespace):
    """The :class:`~histoxmodal.tiling.spec.TileSpec` described by the command-line options."""
    from histoxmodal.tiling.spec import TileSpec

    if args.tile_um is not None:
        return TileSpec.from_um(
            args.tile_um, tile_px=args.tile_px, overlap_px=args.overlap, min_tissue=args.min_tissue
        )
    return TileSpec(
        tile_px=args.tile_px,
        target_mpp=args.mpp_target,
        overlap_px=args.overlap,
        min_tissue=args.min_tissue,
    )


def format_summary(results) -> str:
    """A plain-text table of slide results, then the full reason of each slide not ``ok``."""
    rows = [("slide", "status", "tiles", "mpp (source)", "time")]
    for r in results:
        mpp = f"{r.mpp:.4g} ({r.mpp_source})" if r.mpp else (r.mpp_source or "-")
        n = "-" if r.n_tiles is None else str(r.n_tiles)
        rows.append((r.name, r.status, n, mpp, f"{r.seconds:.1f}s"))
    lines = [format_table(rows)]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    total = sum(r.n_tiles or 0 for r in results)
    lines.append(
        f"{len(results)} slides: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; {total} tiles"
    )
    for r in results:
        if r.status in ("failed", "empty"):
            lines.append(f"{r.status}: {r.name}: {r.reason}")
    return "\n".join(lines)


def run_tile(args: argparse.Namespace) -> int:
    from histoxmodal.tiling.job import parse_shard, tile_slides

    if args.workers < 1:
        from histoxmodal.errors import ConfigError

        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    spec = spec_from_args(args)
    results = tile_slides(
        args.slides,
        args.out,
        spec,
        workers=args.workers,
        shard=parse_shard(args.shard),
        mpp=args.mpp,
        allow_implausible_mpp=args.allow_implausible_mpp,
        save_tiles=args.save_tiles,
        overwrite=args.overwrite,
        reader=args.reader,
    )
    print(format_summary(results))
    print(f"outputs in {Path(args.out).resolve()}")
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    from histoxmodal._deps import require_extra
    from histoxmodal.testing import make_synthetic_slide

    require_extra("wsi", "the demo")
    from histoxmodal.tiling.job import tile_slides
    from histoxmodal.tiling.spec import TileSpec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide_path = out / "synthetic_slide.tif"
    if not slide_path.exists():
        print(
            f"generating a {args.size} px synthetic slide (0.25 µm/px) in {slide_path} ...",
            file=sys.stderr,
        )
        tmp = slide_path.with_suffix(".tif.partial")
        make_synthetic_slide(tmp, width=args.size, height=args.size * 3 // 4, seed=0)
        tmp.replace(slide_path)
    results = tile_slides(
        [slide_path], out / "tiles", TileSpec(), workers=args.workers, save_tiles=True
    )
    print(format_summary(results))
    r = results[0]
    print(
        f"overlay: {Path(r.out_dir) / 'overlay.png'}\n"
        f"tiles:   {Path(r.out_dir) / 'tiles.h5'} (load with histoxmodal.load_tiles)"
    )
    return EXIT_FAILED if r.failed else EXIT_OK
