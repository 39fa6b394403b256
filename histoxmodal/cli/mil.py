"""``histoxmodal mil train`` and ``histoxmodal mil predict``."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    format_table,
    learning_rate,
    positive_int,
    random_seed,
)

NAME = "mil"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal mil`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="slide-level mutation/clinical heads on tile features (train, predict)",
        description="Multiple-instance learning on histoxmodal features output: cross-validation "
        "grouped by patient and stratified by label (AUROC, balanced accuracy, 95 % CI over "
        "folds x seeds), a head fitted on every slide, attention maps; then calls on new slides.",
    )
    msub = p.add_subparsers(dest="mil", required=True, metavar="ACTION")
    mt = msub.add_parser("train", help="cross-validate and fit a MIL head on labelled slides")
    mt.add_argument("features", metavar="FEATURES_DIR", help="histoxmodal features --out folder")
    mt.add_argument("--labels", required=True, metavar="CSV", help="CSV: slide, patient, targets")
    mt.add_argument("--target", required=True, help="the label column to learn, e.g. KRAS")
    mt.add_argument("--out", required=True, metavar="MIL_RUN", help="MIL run folder to create")
    mt.add_argument("--model", default="abmil", choices=("abmil", "mean"),
                    help="gated-attention MIL or mean pooling (default abmil)")  # fmt: skip
    mt.add_argument("--folds", type=positive_int, default=5, help="CV folds (default 5)")
    mt.add_argument("--seeds", type=random_seed, nargs="+", default=[0, 1, 2], metavar="S",
                    help="CV repeats, one per distinct seed in [0, 2**32-1] (default 0 1 2)",
                    )  # fmt: skip
    mt.add_argument("--epochs", type=positive_int, default=None, help="training epochs")
    mt.add_argument("--lr", type=learning_rate, default=None, help="learning rate, in (0, 1)")
    mt.add_argument("--overwrite", action="store_true", help="replace an existing MIL run")
    mp = msub.add_parser("predict", help="call new slides with a trained MIL run")
    mp.add_argument("run", metavar="MIL_RUN", help="folder written by histoxmodal mil train")
    mp.add_argument("features", metavar="FEATURES_DIR", help="features of the slides to call")
    mp.add_argument("--out", required=True, metavar="CSV",
                    help="calls CSV (attention maps in <stem>_attention/)")  # fmt: skip


def _fmt(summary: dict) -> str:
    if summary["mean"] is None:
        return "-"
    lo, hi = summary["ci95"]
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{summary['mean']:.3f}{ci}"


def run(args: argparse.Namespace) -> int:
    """Dispatch ``histoxmodal mil train|predict``."""
    from histoxmodal.deps import require_extra

    require_extra("torch", f"histoxmodal mil {args.mil}")
    from histoxmodal.workflows.mil import predict_mil, train_mil

    if args.mil == "train":
        m = train_mil(
            args.features,
            args.labels,
            args.target,
            args.out,
            model=args.model,
            folds=args.folds,
            seeds=args.seeds,
            epochs=args.epochs,
            lr=args.lr,
            overwrite=args.overwrite,
        )
        rows = [("metric", "mean [95 % CI]", "chance")]
        for k in ("auroc", "balanced_accuracy"):
            rows.append((k, _fmt(m[k]), f"{m['chance'][k]:.3f}"))
        print(f"{m['target']}: {m['n_slides']} slides, {m['n_patients']} patients, "
              f"{args.folds} folds x {len(args.seeds)} seeds, {args.model}")  # fmt: skip
        print(format_table(rows))
        left = {k: len(v) for k, v in m["excluded"].items() if v}
        if left:
            print("left out: " + ", ".join(f"{n} {k}" for k, n in left.items()))
        print(f"MIL run in {Path(args.out).resolve()}")
        return EXIT_OK
    results = predict_mil(args.run, args.features, args.out)
    rows = [("slide", "status", "predicted", "tiles")]
    for r in results:
        rows.append((r.slide, r.status, r.predicted or "-", str(r.n_tiles)))
    print(format_table(rows))
    for r in results:
        if r.failed:
            print(f"failed: {r.slide}: {r.reason}")
    print(f"calls in {Path(args.out).resolve()}")
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK
