"""``histoxmodal features``: tile features of slides with an image encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import (
    add_stain_options,
    format_job_summary,
    format_stain_summary,
    positive_int,
)

NAME = "features"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal features`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="tile features of slides with an image encoder (TRIDENT/CLAM layout)",
        description="Tile slides on the fly at the encoder's own µm/px and input size (or read "
        "a `histoxmodal tile` output) and write DIR/<slide>.h5 with datasets features (n_tiles, "
        "dim) and coords (n_tiles, 2, level-0 x, y) and attributes naming the encoder, weights "
        "checksum, mpp and tile size; --format anndata writes DIR/<slide>.h5ad. A rerun skips "
        "finished slides; a failed slide is recorded in DIR/<slide>.json and the rest go on.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="SLIDE|TILES_DIR",
        help="slide files, folders of slides, or folders written by histoxmodal tile",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    e = p.add_argument_group("encoder (one of --encoder or --run)")
    e.add_argument(
        "--encoder", metavar="NAME",
        help="registered image encoder (histoxmodal models) or timm:<architecture>",
    )  # fmt: skip
    e.add_argument(
        "--weights", metavar="PATH",
        help="local weights of --encoder (file or snapshot folder); a foundation model needs "
        "them",
    )  # fmt: skip
    e.add_argument(
        "--random-weights", action="store_true",
        help="run --encoder untrained on purpose (tests, speed benchmarks); outputs say "
        "weights: random",
    )  # fmt: skip
    e.add_argument("--run", metavar="RUN", help="a trained run folder: its image tower")
    e.add_argument("--projection", action="store_true", help="with --run: the projected embedding")
    add_stain_options(e, "every tile (with --encoder; a --run applies its own stain.json)")
    r = p.add_argument_group("run")
    r.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="B",
        help="tiles per forward pass (default 64)",
    )
    r.add_argument(
        "--workers", type=positive_int, default=2, metavar="N",
        help="threads decoding and resizing tiles (default 2)",
    )  # fmt: skip
    r.add_argument(
        "--device", default="auto", help="cuda, cuda:N, cpu or auto (default: a GPU if any)"
    )
    r.add_argument(
        "--precision", default="auto",
        help="auto (bf16/fp16 autocast on a GPU, fp32 on CPU), 32, bf16 or 16",
    )  # fmt: skip
    r.add_argument(
        "--shard", default=None, metavar="K/N",
        help="process shard K of N (0-based) of the sorted slide list, or 'auto' from SLURM",
    )  # fmt: skip
    r.add_argument(
        "--format",
        choices=("h5", "anndata"),
        default="h5",
        help="h5: DIR/<slide>.h5 (TRIDENT/CLAM layout), anndata: DIR/<slide>.h5ad",
    )
    r.add_argument(
        "--overwrite", action="store_true",
        help="replace features made from another file or with another encoder",
    )  # fmt: skip
    s = p.add_argument_group("slides tiled here")
    s.add_argument(
        "--mpp", type=float, default=None, metavar="UM",
        help="level-0 µm/px of the slides, overriding their metadata",
    )  # fmt: skip
    s.add_argument(
        "--min-tissue", type=float, default=0.5, metavar="FRAC",
        help="least tissue fraction of a kept tile (default 0.5)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """``histoxmodal features``: the workflow, then the summary table; exit 1 when a slide
    failed."""
    from histoxmodal.workflows.features import extract_features
    from histoxmodal.workflows.job_control import stain_summary
    from histoxmodal.workflows.jobs import exit_code

    results = extract_features(
        args.inputs,
        args.out,
        encoder=args.encoder,
        weights=args.weights,
        run=args.run,
        projection=args.projection,
        format=args.format,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        shard=args.shard,
        mpp=args.mpp,
        min_tissue=args.min_tissue,
        overwrite=args.overwrite,
        random_weights=args.random_weights,
        stain_normalize=args.stain_normalize,
        stain_target=args.stain_target,
    )
    print(format_job_summary(results, rate=True))
    stain = format_stain_summary(stain_summary(results))
    if stain:
        print(stain)
    if args.encoder and not args.weights:
        print(
            f"weights: random: {args.encoder} ran untrained (seeded); these features measure "
            "nothing learned"
        )
    print(f"features in {Path(args.out).resolve()}")
    return exit_code(results)
