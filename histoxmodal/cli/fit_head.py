"""``histoxmodal fit-head``: fit and save a run's expression head (for ``histoxmodal predict``)."""

from __future__ import annotations

import argparse

from histoxmodal.cli.common import EXIT_OK, non_negative_float

NAME = "fit-head"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal fit-head`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="fit and save a run's expression head (for histoxmodal predict)",
        description="Fit an expression head on the run's training spots, for every gene of its "
        "panel, and save it in RUN/heads/expression_<head>.",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    p.add_argument(
        "--head", default="ridge", choices=("ridge", "mlp", "retrieval"), help="head type"
    )
    p.add_argument(
        "--centre",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read section-centred embeddings (default: the run config's head.centre)",
    )
    p.add_argument(
        "--context-um",
        type=non_negative_float,
        default=None,
        metavar="UM",
        help="ridge/mlp: neighbour context radius in µm, 0 = off (default: head.context_um)",
    )
    p.add_argument(
        "--smooth-um",
        type=non_negative_float,
        default=None,
        metavar="UM",
        help="retrieval: smoothing radius in µm, 0 = off (default: head.smooth_um)",
    )


def run(args: argparse.Namespace) -> int:
    """``histoxmodal fit-head``: fit the head on the run's training spots and save it."""
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
