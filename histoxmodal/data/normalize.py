"""Expression normalization and gene selection, defined once.

Build, training, evaluation and the heads all read expression through these functions, so the
matrix a gene tower trains on and the matrix a head is scored against are the same numbers for
the same spots (a test asserts it). The convention is scanpy's: the library size of a spot is its
total count over *every* gene of the dataset (``sc.pp.normalize_total`` before any subsetting),
counts are scaled to 10,000 per spot and ``log1p``-transformed; gene panels are chosen on the
training rows only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from histoxmodal.errors import ConfigError

#: the normalizations a gene tower can declare (``describe_encoder(name)["normalization"]``)
NORMALIZATIONS = ("log1p_cp10k", "log1p", "counts")
#: counts per spot after library-size scaling (CP10k)
TARGET_SUM = 1e4
#: the default, and the one every metric and head reports in
DEFAULT_NORMALIZATION = "log1p_cp10k"


def check_normalization(method: str) -> str:
    """Return ``method`` if it is one of :data:`NORMALIZATIONS`, else raise naming them."""
    if method not in NORMALIZATIONS:
        raise ConfigError(f"normalization={method!r}: expected one of {', '.join(NORMALIZATIONS)}")
    return method


def library_sizes(counts) -> np.ndarray:
    """``(n_spots,)`` total counts per row of a dense or sparse ``(n_spots, n_genes)`` matrix."""
    return np.asarray(counts.sum(axis=1), np.float64).ravel()


def normalize_counts(
    counts, method: str = DEFAULT_NORMALIZATION, *, library_size: np.ndarray | None = None
):
    """Normalize raw counts ``(n_spots, n_genes)``; sparse in, CSR out (same sparsity pattern).

    Parameters
    ----------
    counts
        Raw counts, dense or sparse.
    method
        ``log1p_cp10k``: ``log1p(counts * 1e4 / library_size)``; ``log1p``: ``log1p(counts)``;
        ``counts``: unchanged (as float).
    library_size
        ``(n_spots,)`` totals to scale by; default the row sums of ``counts``. Pass the totals
        over all genes when ``counts`` holds only a panel.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        ``(n_spots, n_genes)`` float64, dense when the input was dense.
    """
    import scipy.sparse as sp

    check_normalization(method)
    sparse = sp.issparse(counts)
    x = sp.csr_matrix(counts, dtype=np.float64, copy=True) if sparse else np.array(counts, float)
    if method == "log1p_cp10k":
        lib = library_sizes(x) if library_size is None else np.asarray(library_size, np.float64)
        if len(lib) != x.shape[0]:
            raise ConfigError(f"library_size has {len(lib)} entries for {x.shape[0]} rows")
        scale = TARGET_SUM / np.maximum(lib, 1.0)
        x = sp.csr_matrix(sp.diags(scale) @ x) if sparse else x * scale[:, None]
    if method != "counts":
        if sparse:
            x.data = np.log1p(x.data)
        else:
            x = np.log1p(x)
    return x


def expression_matrix(
    adata,
    genes: Sequence[str] | None = None,
    *,
    rows: np.ndarray | None = None,
    method: str = DEFAULT_NORMALIZATION,
) -> np.ndarray:
    """Dense normalized expression ``(n_rows, n_genes)`` of ``genes`` (default all) at ``rows``.

    The library size is taken over every gene of ``adata`` before the panel is cut out, so the
    values of a gene do not depend on which other genes are asked for.
    """
    import scipy.sparse as sp

    x = adata.X if rows is None else adata.X[np.asarray(rows)]
    lib = library_sizes(x)
    if genes is not None:
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise ConfigError(
                f"{len(missing)} genes are not in the data (e.g. {missing[:5]}); see var_names"
            )
        x = x[:, adata.var_names.get_indexer(list(genes))]
    out = normalize_counts(x, method, library_size=lib)
    return np.asarray(out.toarray() if sp.issparse(out) else out, np.float64)


def top_variable_genes(expression: np.ndarray, genes: Sequence[str], n: int = 50) -> list[str]:
    """The ``n`` genes with the highest variance of (normalized) ``expression``
    ``(n_spots, len(genes))``, in ``genes`` order; ties broken by position."""
    var = np.asarray(expression, np.float64).var(axis=0)
    order = np.argsort(-var, kind="stable")[:n]
    return [str(genes[i]) for i in sorted(order)]


def highly_variable_genes(
    adata,
    n: int | None,
    *,
    rows: np.ndarray | None = None,
    genes: Sequence[str] | None = None,
    flavor: str = "variance",
) -> list[str]:
    """The gene panel: the ``n`` most variable genes over ``rows`` (the training spots).

    Parameters
    ----------
    adata
        Raw counts ``(n_spots, n_genes)``.
    n
        Panel size; ``None`` (or at least the number of candidates) keeps every candidate.
    rows
        Spots the choice is made on (default all). Never include test spots.
    genes
        Candidate genes (default all of ``adata``), returned in this order.
    flavor
        ``variance``: variance of log1p-CP10k expression (library size over all genes);
        ``seurat``: scanpy's Seurat-flavour normalized dispersion on the same values.
    """
    candidates = list(adata.var_names) if genes is None else [str(g) for g in genes]
    if n is None or n >= len(candidates):
        return candidates
    if flavor not in ("variance", "seurat"):
        raise ConfigError(f"flavor={flavor!r}: expected 'variance' or 'seurat'")
    import scipy.sparse as sp

    x = adata.X if rows is None else adata.X[np.asarray(rows)]
    lib = library_sizes(x)
    x = normalize_counts(x[:, adata.var_names.get_indexer(candidates)], library_size=lib)
    if flavor == "variance":
        # variance without densifying: E[x^2] - E[x]^2 (a her2st cohort is 13k x 15k genes)
        mean = np.asarray(x.mean(axis=0)).ravel()
        sq = x.multiply(x) if sp.issparse(x) else x * x
        var = np.asarray(sq.mean(axis=0)).ravel() - mean**2
        order = np.argsort(-var, kind="stable")[:n]
        return [candidates[i] for i in sorted(order)]
    import anndata as ad
    import scanpy as sc

    b = ad.AnnData(x)
    b.var_names = candidates
    sc.pp.highly_variable_genes(b, n_top_genes=n, flavor="seurat")
    return [g for g, keep in zip(candidates, b.var["highly_variable"], strict=True) if keep]
