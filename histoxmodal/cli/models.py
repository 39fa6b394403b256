"""``histoxmodal models``: the registered image encoders and gene towers."""

from __future__ import annotations

import argparse

from histoxmodal.cli.common import EXIT_OK, format_table

NAME = "models"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal models`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="list the registered image encoders (dim, mpp, input size, weights, licence)",
        description="The image encoders histoxmodal features can run. Weights are read from "
        "local files only: download them once from the source shown, then pass --weights.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'uni*'")
    p.add_argument("--tests", action="store_true", help="also list the tiny test_* towers")


def run(args: argparse.Namespace) -> int:
    """``histoxmodal models``: the registered image encoders, then the gene towers."""
    from histoxmodal.workflows.extractor import list_gene_models, list_models

    models = list_models(args.pattern, include_tests=args.tests)
    genes = list_gene_models(args.pattern, include_tests=args.tests)
    if not models and not genes:
        import difflib

        from histoxmodal.errors import ConfigError

        names = [m["name"] for m in list_models("*", include_tests=True)]
        names += [m["name"] for m in list_gene_models("*", include_tests=True)]
        close = difflib.get_close_matches(str(args.pattern).strip("*?"), names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        tests = "" if args.tests else " (test models are listed with --tests)"
        raise ConfigError(
            f"no registered model matches {args.pattern!r}{hint}; `histoxmodal models` lists "
            f"all {len(names)}{tests}"
        )
    if genes:
        rows = [("gene tower", "architecture", "dim", "input", "licence", "weights")]
        for m in genes:
            rows.append(
                (m["name"], m["architecture"], str(m["dim"] or "?"), m["input"],
                 m["licence"] or "-", m["weights"])
            )  # fmt: skip
        gene_table = format_table(rows)
    if not models:
        print(gene_table)
        return EXIT_OK
    rows = [("name", "architecture", "dim", "mpp", "input", "licence", "weights")]
    for m in models:
        rows.append(
            (
                m["name"], m["architecture"], str(m["dim"] or "?"), f"{m['mpp']:g}",
                str(m["input_size"]), m["licence"] or "-", m["weights"],
            )
        )  # fmt: skip
    print(format_table(rows))
    print(
        "Any timm architecture also works: --encoder timm:<name> (random or --weights). "
        "Weights are read from local files only."
    )
    if genes:
        print()
        print(gene_table)
        print(
            "Gene towers are chosen in a training config (model.gene_encoder); saved models "
            "are given as model.gene_weights=DIR."
        )
    return EXIT_OK
