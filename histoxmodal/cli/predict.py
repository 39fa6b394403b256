"""``histoxmodal predict`` and ``histoxmodal fit-head``."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import EXIT_FAILED, EXIT_OK, format_table


def run_predict(args: argparse.Namespace) -> int:
    from histoxmodal.deps import require_extra

    require_extra("torch", "histoxmodal predict")
    from histoxmodal.workflows.expression_map import predict_slides

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
    )
    rows = [("slide", "status", "pseudo-spots", "mpp", "time")]
    for r in results:
        n = "-" if r.n_tiles is None else str(r.n_tiles)
        rows.append((r.name, r.status, n, f"{r.mpp:.4g}" if r.mpp else "-", f"{r.seconds:.1f}s"))
    print(format_table(rows))
    for r in results:
        if r.failed:
            print(f"{r.status}: {r.name}: {r.reason}")
    print(f"maps in {Path(args.out).resolve()}")
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK


def run_fit_head(args: argparse.Namespace) -> int:
    from histoxmodal.deps import require_extra

    require_extra("torch", "histoxmodal fit-head")
    from histoxmodal.workflows.predict import HeadInputs, check_spatial, fit_expression_head
    from histoxmodal.workflows.run import Run

    run = Run.load(args.run)
    check_spatial(run)
    h = run.config.head
    inputs = HeadInputs(
        h.context_um if args.context_um is None else args.context_um,
        h.centre if args.centre is None else args.centre,
        h.smooth_um if args.smooth_um is None else args.smooth_um,
    )
    fit_expression_head(run, head=args.head, genes=list(run.genes), inputs=inputs)
    reads = (
        f"centre={inputs.centre}, context_um={inputs.context_um:g}, smooth_um={inputs.smooth_um:g}"
    )
    print(
        f"saved {run.path / 'heads' / f'expression_{args.head}'} ({len(run.genes)} genes; "
        f"reads {reads})"
    )
    return EXIT_OK
