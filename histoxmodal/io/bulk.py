"""Bulk expression tables with sample classes: GSEA's ``.txt``/``.gct`` (NAME, DESCRIPTION, one
column per sample) and ``.cls`` (class per sample), e.g. the NCI-60 p53 data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoxmodal.errors import DataError


def read_expression_table(path: str | Path):
    """Read a GSEA expression table into AnnData (samples x genes).

    Accepts ``.gct`` (two header lines, then NAME/DESCRIPTION columns) and the same layout
    without the two ``.gct`` header lines. Duplicated gene names are made unique.
    """
    import anndata as ad
    import pandas as pd

    from histoxmodal.io.spatial.common import unique_gene_names

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"expression table not found: {p}")
    skip = 2 if p.read_text(errors="replace")[:5].startswith("#1.2") else 0
    df = pd.read_csv(p, sep="\t", skiprows=skip)
    if list(df.columns[:2]) != ["NAME", "DESCRIPTION"]:
        raise DataError(
            f"{p}: expected columns NAME, DESCRIPTION, then one per sample; got "
            f"{list(df.columns[:3])}"
        )
    genes = unique_gene_names(df["NAME"].astype(str), str(p))
    x = df.iloc[:, 2:].to_numpy(np.float64).T
    a = ad.AnnData(x)
    a.obs_names = [str(c) for c in df.columns[2:]]
    a.var_names = genes
    return a


def read_cls(path: str | Path, n_samples: int | None = None) -> np.ndarray:
    """Class labels of a GSEA ``.cls`` file (one name per sample), checked against its header."""
    lines = Path(path).read_text().split("\n")
    head = lines[0].split()
    labels = np.array(lines[2].split())
    if len(labels) != int(head[0]) or (n_samples is not None and len(labels) != n_samples):
        raise DataError(
            f"{path}: {len(labels)} labels, header says {head[0]}"
            + (f", table has {n_samples} samples" if n_samples else "")
        )
    return labels


def read_nci60_p53(bulk_dir: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The NCI-60 p53 set from ``bulk_dir/P53.txt`` and ``bulk_dir/P53.cls``.

    Returns
    -------
    intensities, genes, mutant
        ``(50, 10100)`` MAS5 microarray intensities, the ``(10100,)`` gene names, and ``(50,)``
        True for p53-mutant lines (``P53.cls``: 33 MUT, 17 WT, in column order).
    """
    d = Path(bulk_dir)
    a = read_expression_table(d / "P53.txt")
    labels = read_cls(d / "P53.cls", a.n_obs)
    return np.asarray(a.X, np.float64), list(a.var_names), labels == "MUT"
