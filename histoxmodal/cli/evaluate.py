"""``histoxmodal evaluate``: metrics.json and an HTML report of a trained run on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import EXIT_OK, add_data, positive_int

NAME = "evaluate"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal evaluate`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="metrics.json and an HTML report of a trained run on a dataset",
        description="Retrieval (whole test set and in-batch), expression prediction with a "
        "ridge head on the image embeddings, and batch mixing. Without --split the "
        "whole dataset is the test set and the head is fitted on the run's "
        "training spots. On a cohort dataset (radiograph/ECG/report): zero-shot accuracy "
        "of each modality given the others and Recall@k per pair, on the held-out patients.",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    add_data(p)
    p.add_argument("--split", default=None, metavar="FILE", help="split file with the test rows")
    p.add_argument(
        "--fold",
        default=None,
        metavar="K|NAME",
        help="fold of --split (default: the run's own fold when it trained on that split, else 0)",
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score test spots the run trained on (refused by default: inflated scores); the "
        "count is stamped in metrics.json and the report",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder: metrics.json and report.html"
    )
    p.add_argument(
        "--in-batch-size",
        type=positive_int,
        default=128,
        metavar="B",
        help="batch size of the in-batch retrieval metrics (default 128)",
    )


def run(args: argparse.Namespace) -> int:
    """``histoxmodal evaluate``: the workflow, then every metric and the report's path."""
    from histoxmodal.workflows.evaluate import evaluate

    r = evaluate(
        args.run,
        args.data,
        args.out,
        split=args.split,
        fold=args.fold,
        in_batch_size=args.in_batch_size,
        allow_overlap=args.allow_overlap,
    )
    for k, v in r["metrics"].items():
        print(f"{k:<52} {v:.4f}" if isinstance(v, float) else f"{k:<52} {v}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return EXIT_OK
