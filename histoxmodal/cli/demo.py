"""``histoxmodal demo``: parse, run :func:`histoxmodal.workflows.demo.demo`, print the summary."""

from __future__ import annotations

import argparse
import sys

from histoxmodal.cli.common import EXIT_FAILED, EXIT_OK, add_src, format_job_summary, format_table

NAME = "demo"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal demo`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="the whole path on generated data: slides, tiles, paired dataset, training, report",
        description="Generate slides with typed tissue regions and Visium-like spots whose "
        "expression follows the tissue, then tile, build the paired dataset, train a small "
        "contrastive model and evaluate it on a held-out sample, writing DIR/report/report.html "
        "(about a minute on 2 CPU cores; rerunning resumes). With --src PATH the same path runs "
        "on a "
        "her2st folder.",
    )
    p.add_argument(
        "--out",
        default="histoxmodal_demo",
        metavar="DIR",
        help="output folder (default ./histoxmodal_demo)",
    )
    add_src(p, "a her2st-layout folder instead of generated data")
    p.add_argument(
        "--medical",
        action="store_true",
        help="the medical path instead: a generated radiograph + ECG + report cohort, Symile "
        "vs pairwise CLIP, zero-shot accuracy (DIR/metrics.json, DIR/report.html)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    p.add_argument(
        "--patients", type=int, default=1000, metavar="N", help="--medical cohort size (1000)"
    )
    p.add_argument("--workers", type=int, default=1, metavar="N", help="tiling processes")
    p.add_argument(
        "--max-epochs", type=int, metavar="N", help="training epochs (default: the config's)"
    )


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """``histoxmodal demo``: the demo workflow, then its metrics beside the baselines."""
    from histoxmodal.deps import require_extra
    from histoxmodal.progress import progress_enabled
    from histoxmodal.workflows.demo import MEDICAL_LOSSES, demo

    extras = ("torch", "medical") if args.medical else ("wsi", "spatial", "torch")
    for extra in extras:
        require_extra(extra, "the demo")
    r = demo(
        args.out,
        data=args.src,
        medical=args.medical,
        seed=args.seed,
        workers=args.workers,
        max_epochs=args.max_epochs,
        patients=args.patients,
        echo=_echo,
        progress_bar=progress_enabled(),
    )
    if r.get("failed"):
        print(format_job_summary(r["failed"]))
        return EXIT_FAILED
    metrics = r["metrics"]
    if r["kind"] == "cohort":
        rows = [("zero-shot: pick the report among 10, given radiograph + ECG", "accuracy")]
        for loss in MEDICAL_LOSSES:
            rows.append((loss, f"{metrics[f'zero_shot.{loss}.report.accuracy@k10']:.3f}"))
        rows.append(("chance", "0.100"))
    else:
        # the classic baseline beside every learned number: hand-crafted colour/texture
        # features + ridge on the same rows (the demo's tissue is easy: both score high)
        rows = [("metric (held-out sample)", "value", "hand-crafted baseline", "chance")]
        for key in (
            "retrieval.full.i2g.recall@5",
            "retrieval.full.g2i.recall@5",
            "expression.ridge.pearson_pooled_mean",
            "expression.mlp.pearson_pooled_mean",
            "expression.retrieval.pearson_pooled_mean",
        ):
            if key in metrics:
                base, chance = metrics.get(f"{key}_baseline"), metrics.get(f"{key}_chance")
                rows.append(
                    (
                        key,
                        f"{metrics[key]:.3f}",
                        "-" if base is None else f"{base:.3f}",
                        "-" if chance is None else f"{chance:.3f}",
                    )
                )
    print(format_table(rows))
    if r.get("n_tiles") is not None:
        print(f"tiles:   {r['tiles']} ({r['n_tiles']} tiles; overlay.png per slide)")
    print(f"report:  {r['report'].resolve()}")
    print(f"metrics: {r['metrics_file'].resolve()}")
    return EXIT_OK
