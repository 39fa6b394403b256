"""``histoxmodal embed``: the embeddings of every spot of a dataset with a trained run."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.workflows.run import Run


def embed(run: str | Path | Run, dataset: str | Path, out: str | Path, *, batch_size: int = 128):
    """Image and gene embeddings of every spot of ``dataset`` with a trained spatial run.

    Writes ``out`` (``.h5ad``: the dataset's AnnData with ``obsm['X_image']`` and
    ``obsm['X_gene']`` ``(n_spots, embed_dim)``) and ``<out stem>_image.npy`` /
    ``_gene.npy`` beside it, each atomically. Returns the AnnData.
    """
    from histoxmodal.data.store import load_paired

    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            f"--out {out} is a folder; embed writes one .h5ad file (and .npy files beside it): "
            f"give a file name such as --out {out / 'embeddings.h5ad'}"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    run = run if isinstance(run, Run) else Run.load(run)
    if not run.run_kind.image_to_expression:
        raise ConfigError(
            f"{run.path} is a {run.kind} run; `embed` writes spot embeddings of a paired "
            "dataset. For a cohort use histoxmodal.Run.load(RUN).embed(DATA)"
        )
    run.check_genes(dataset)
    adata, _ = load_paired(dataset)
    z = run.embed(dataset, batch_size=batch_size)
    adata.obsm["X_image"], adata.obsm["X_gene"] = z["image"], z["gene"]
    out = Path(out)
    # HDF5 can crash the process (not raise) when the disk fills mid-write: check first
    need = (Path(dataset) / keys.PAIRED_ADATA_FILE).stat().st_size + 2 * sum(
        v.nbytes for v in z.values()
    )
    free = shutil.disk_usage(out.parent).free
    if free < 1.2 * need:
        raise OSError(
            errno.ENOSPC,
            f"about {need / 1e6:.0f} MB are needed and {free / 1e6:.0f} MB are free",
            str(out.parent),
        )
    tmp = out.with_name(f".{out.name}.partial")
    adata.write_h5ad(tmp)
    os.replace(tmp, out)
    for name in ("image", "gene"):
        target = out.with_name(f"{out.stem}_{name}.npy")
        tmp = target.with_name(f".{target.stem}.partial.npy")
        np.save(tmp, z[name])
        os.replace(tmp, target)
    return adata
