"""``histoxmodal predict``: whole-slide expression maps of new slides with a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import (
    format_job_summary,
    format_stain_summary,
    fraction,
    positive_float,
    positive_int,
)

NAME = "predict"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal predict`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="whole-slide expression maps of new slides with a trained run",
        description="Detect tissue, lay pseudo-spots (the run's field of view every --grid-um) "
        "over it, embed them with the run's image tower and predict every gene of the run's "
        "saved expression head. Writes OUT/<slide>/prediction.h5ad (scanpy/squidpy-ready), a "
        "heatmap PNG per --genes gene and manifest.json; a rerun skips finished slides.",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--grid-um", type=positive_float, default=None, metavar="UM",
        help="pseudo-spot pitch in µm, > 0 (default: the run's patch field of view); below a "
        "quarter of it needs --allow-dense-grid",
    )  # fmt: skip
    p.add_argument(
        "--allow-dense-grid", action="store_true",
        help="allow a --grid-um below a quarter of the patch, or over 2 million grid windows "
        "on a slide",
    )  # fmt: skip
    p.add_argument(
        "--genes", default=None, metavar="G1,G2", help="genes to draw as heatmaps (default: "
        "the 4 most variable predicted); every gene is predicted either way",
    )  # fmt: skip
    p.add_argument("--mpp", type=positive_float, default=None, metavar="UM", help="level-0 µm/px")
    p.add_argument("--head", default=None, help="saved head name (default expression_ridge)")
    p.add_argument(
        "--min-tissue", type=fraction, default=0.5, metavar="FRAC",
        help="least tissue fraction of a pseudo-spot, in [0, 1] (default 0.5)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=64, help="patches per pass")
    p.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="process shard K of N (0-based) of the sorted slide list, or 'auto' "
        "from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT",
    )
    p.add_argument("--overwrite", action="store_true", help="redo finished slides")


def run(args: argparse.Namespace) -> int:
    """``histoxmodal predict``: the workflow, then a table of slides; exit 1 when a slide
    failed."""
    from histoxmodal.deps import require_extra

    require_extra("torch", "histoxmodal predict")
    from histoxmodal.workflows.expression_map import predict_slides
    from histoxmodal.workflows.job_control import stain_summary
    from histoxmodal.workflows.jobs import exit_code, parse_shard

    genes = [g.strip() for g in args.genes.split(",") if g.strip()] if args.genes else None
    results = predict_slides(
        args.run,
        args.slides,
        args.out,
        head=args.head,
        grid_um=args.grid_um,
        allow_dense_grid=args.allow_dense_grid,
        min_tissue=args.min_tissue,
        genes=genes,
        mpp=args.mpp,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        shard=parse_shard(args.shard),
    )
    print(format_job_summary(results, unit="pseudo-spots"))
    # patches normalised with the run's stain.json, when it has one
    stain = format_stain_summary(stain_summary(results), unit="pseudo-spots")
    if stain:
        print(stain)
    print(f"maps in {Path(args.out).resolve()}")
    return exit_code(results)
