"""``histoxmodal tile``: detect tissue and tile slides at a physical resolution."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import format_job_summary, fraction, positive_float

NAME = "tile"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal tile`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="detect tissue and tile slides at a physical resolution",
        description="Detect tissue and tile whole-slide images. Writes OUT/<slide name>/ with "
        "coords.h5, manifest.json, overlay.png, tissue.geojson (and tiles.h5 with "
        "--save-tiles). Finished slides are skipped when the run is restarted.",
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders of slides")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_tile_options(p)
    r = p.add_argument_group("run")
    r.add_argument(
        "--save-tiles",
        action="store_true",
        help="also store tile pixels in tiles.h5 (readable by index)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="parallel workers: processes over slides, or threads within one slide",
    )
    r.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="process shard K of N (0-based) of the sorted slide list, or 'auto' "
        "from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT",
    )
    r.add_argument(
        "--overwrite", action="store_true", help="redo slides that already have finished output"
    )


def _add_tile_options(p: argparse.ArgumentParser) -> None:
    """The ``tile geometry`` and ``slide`` option groups."""
    g = p.add_argument_group("tile geometry")
    g.add_argument(
        "--mpp-target",
        type=positive_float,
        default=0.5,
        metavar="UM",
        help="µm per pixel of the tiles, > 0 (default 0.5, about 20x); more than 2x finer than "
        "a slide's own pixel size needs --allow-upsample",
    )
    g.add_argument(
        "--allow-upsample",
        action="store_true",
        help="tile at a --mpp-target more than 2x finer than a slide's own µm/px (interpolated "
        "pixels; refused per slide without this flag)",
    )
    g.add_argument(
        "--tile-px", type=int, default=224, metavar="PX", help="tile side in pixels (default 224)"
    )
    g.add_argument(
        "--tile-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="tile side in µm instead of --mpp-target (target = tile-um / tile-px)",
    )
    g.add_argument(
        "--overlap",
        type=int,
        default=0,
        metavar="PX",
        help="overlap between neighbouring tiles in tile pixels (default 0)",
    )
    g.add_argument(
        "--min-tissue",
        type=fraction,
        default=0.5,
        metavar="FRAC",
        help="minimum tissue fraction of a kept tile, in [0, 1] (default 0.5; 0 keeps all)",
    )
    g.add_argument(
        "--geojson-in",
        default=None,
        metavar="FILE",
        help="tile only inside these annotations instead of the detected tissue: a GeoJSON of "
        "Polygon/MultiPolygon features in level-0 pixels (QuPath's export, or an edited "
        "tissue.geojson); a tile is kept when its centre falls inside one",
    )
    s = p.add_argument_group("slide")
    s.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        metavar="UM",
        help="level-0 µm per pixel of slides without a pixel size in their metadata "
        "(JPEG/PNG, stripped TIFFs); slides with one keep it unless --mpp-override",
    )
    s.add_argument(
        "--mpp-override",
        action="store_true",
        help="--mpp replaces the metadata of every slide, not only of slides without one",
    )
    s.add_argument(
        "--mpp-csv",
        default=None,
        metavar="FILE",
        help="CSV with columns slide,mpp (file name, stem or path; as TRIDENT): the pixel "
        "size of the slides it lists, over their metadata and --mpp",
    )
    s.add_argument(
        "--allow-implausible-mpp",
        action="store_true",
        help="accept a pixel size outside 0.1-10 µm/px",
    )
    s.add_argument(
        "--reader",
        default=None,
        choices=["openslide", "tifffile", "pillow"],
        help="force a slide-reader backend (default: chosen per file)",
    )


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


def run(args: argparse.Namespace) -> int:
    """``histoxmodal tile``: the workflow, then the summary table; exit 1 when a slide failed."""
    from histoxmodal.workflows.jobs import exit_code, parse_shard
    from histoxmodal.workflows.tile import tile_slides, user_mpp

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
    print(format_job_summary(results))
    print(f"outputs in {Path(args.out).resolve()}")
    return exit_code(results)
