"""``histoxmodal mil train`` and ``histoxmodal mil predict``."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import EXIT_FAILED, EXIT_OK, format_table


def _fmt(summary: dict) -> str:
    if summary["mean"] is None:
        return "-"
    lo, hi = summary["ci95"]
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{summary['mean']:.3f}{ci}"


def run_mil(args: argparse.Namespace) -> int:
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
