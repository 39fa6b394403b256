"""``histoxmodal pretrain-genes``: the command line of
:func:`histoxmodal.workflows.pretrain_genes.pretrain_genes`."""

from __future__ import annotations

import argparse

from histoxmodal.cli.common import EXIT_OK


def run_pretrain_genes(args: argparse.Namespace) -> int:
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
