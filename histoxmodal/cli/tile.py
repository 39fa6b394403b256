"""``histoxmodal tile``."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import EXIT_FAILED, EXIT_OK, format_table


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
        if r.status in ("failed", "empty", "busy"):
            lines.append(f"{r.status}: {r.name}: {r.reason}")
    return "\n".join(lines)


def run_tile(args: argparse.Namespace) -> int:
    from histoxmodal.workflows.tile import parse_shard, tile_slides, user_mpp

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
        mpp=user_mpp(args.mpp, override=args.mpp_override, csv=args.mpp_csv),
        allow_implausible_mpp=args.allow_implausible_mpp,
        allow_upsample=args.allow_upsample,
        save_tiles=args.save_tiles,
        overwrite=args.overwrite,
        reader=args.reader,
        geojson_in=args.geojson_in,
    )
    print(format_summary(results))
    print(f"outputs in {Path(args.out).resolve()}")
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK
