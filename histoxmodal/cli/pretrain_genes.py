"""``histoxmodal pretrain-genes``: the command line of
:func:`histoxmodal.workflows.pretrain_genes.pretrain_genes`."""

from __future__ import annotations

import argparse

from histoxmodal.cli.common import EXIT_OK, add_src, positive_int

NAME = "pretrain-genes"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal pretrain-genes`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="pretrain a gene model (scVI, DRVI) on every section with counts",
        description="Train scVI or DRVI on every section of --src that has counts, paired with "
        "an image or not (her2st: all 35 sections, 30 of them without an image), with "
        "--batch-key as the batch its decoder corrects. Writes OUT/model.pt in the library's "
        "own format, OUT/genes.txt and OUT/gene_model.json (sections, source hashes, "
        "versions). A training config uses it with model.gene_encoder=gene_drvi (or gene_scvi) "
        "and model.gene_weights=OUT.",
    )
    add_src(p, "the sections: a her2st-layout folder, or .h5ad file(s) with --recipe h5ad",
             required=True)  # fmt: skip
    p.add_argument("--recipe", choices=["her2st", "h5ad"], default="her2st",
                    help="how --src is read (default her2st)")  # fmt: skip
    p.add_argument("--model", choices=["drvi", "scvi"], default="drvi",
                    help="the gene model (default drvi; needs histoxmodal[drvi])")  # fmt: skip
    p.add_argument("--batch-key", default="patient", metavar="COLUMN",
                    help="obs column of the batches (default patient)")  # fmt: skip
    p.add_argument("--genes", type=positive_int, default=2000, metavar="N",
                    help="highly variable genes to model (default 2000)")  # fmt: skip
    p.add_argument("--max-epochs", type=positive_int, default=None, metavar="N",
                    help="epochs (default: drvi 60, scvi 100; measured to finish her2st in "
                    "under 15 minutes on 2 cores)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="the gene model folder")
    p.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its last epoch")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier gene model")


def run(args: argparse.Namespace) -> int:
    """``histoxmodal pretrain-genes``: the workflow, then how to use the gene model."""
    from histoxmodal.progress import progress_enabled
    from histoxmodal.workflows.pretrain_genes import pretrain_genes

    r = pretrain_genes(
        args.src,
        args.out,
        recipe=args.recipe,
        model=args.model,
        batch_key=args.batch_key,
        n_genes=args.genes,
        max_epochs=args.max_epochs,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
        enable_progress_bar=progress_enabled(),
    )
    resumed = f", resumed at epoch {r.resumed_from}" if r.resumed_from is not None else ""
    print(
        f"{r.model}: {r.n_spots} spots of {r.n_sections} sections, {len(r.genes)} genes, "
        f"{r.epochs} epochs in {r.seconds:.0f} s{resumed}\n"
        f"wrote {r.out}\n"
        f"use it with: --set model.gene_encoder=gene_{r.model} --set model.gene_weights={r.out}"
    )
    return EXIT_OK
