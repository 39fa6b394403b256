"""``histoxmodal embed``: image and gene embeddings of a dataset with a trained run."""

from __future__ import annotations

import argparse

from histoxmodal.cli.common import EXIT_OK, add_data, positive_int

NAME = "embed"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal embed`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME, help="image and gene embeddings of a dataset with a trained run"
    )
    p.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    add_data(p)
    p.add_argument("--out", required=True, metavar="FILE", help="output .h5ad (+ .npy beside)")
    p.add_argument(
        "--batch-size", type=positive_int, default=128, help="spots per forward pass (default 128)"
    )


def run(args: argparse.Namespace) -> int:
    """``histoxmodal embed``: the workflow, then where the embeddings went."""
    from histoxmodal.workflows.embed import embed

    a = embed(args.run, args.data, args.out, batch_size=args.batch_size)
    print(f"wrote {a.n_obs} image and gene embeddings to {args.out}")
    return EXIT_OK
