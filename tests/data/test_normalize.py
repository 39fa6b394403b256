"""One normalization for every consumer: training (PairedDataset), evaluation and heads
(expression_matrix) read the same numbers, equal to scanpy's normalize_total + log1p."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anndata")


@pytest.fixture()
def paired(tmp_path):
    pytest.importorskip("torch")
    from histoxmodal.testing.paired import make_paired_dataset

    return make_paired_dataset(tmp_path / "data", spots_per_sample=24, n_genes=40)


def _scanpy_log1p_cp10k(adata):
    import scanpy as sc

    a = adata.copy()
    a.X = a.X.astype(np.float64)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X)


def test_training_and_evaluation_see_identical_matrices(paired):
    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.store import load_paired

    adata, _ = load_paired(paired)
    panel = list(adata.var_names[3:15])  # a panel: the library size is still over every gene
    rows = np.array([0, 5, 7, 30, 47])
    ds = PairedDataset(paired, genes=panel, indices=rows)
    train_view = np.stack([ds[i]["expression"].numpy() for i in range(len(rows))])
    eval_view = expression_matrix(adata, panel, rows=rows)
    np.testing.assert_allclose(train_view, eval_view, rtol=1e-6, atol=1e-6)
    want = _scanpy_log1p_cp10k(adata)[rows][:, 3:15]
    np.testing.assert_allclose(eval_view, want, rtol=1e-10)


def test_normalize_counts_dense_and_sparse_agree_with_scanpy():
    import anndata as ad
    import scipy.sparse as sp

    from histoxmodal.data.normalize import normalize_counts

    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, (30, 12)).astype(np.float64)
    counts[4] = 0  # an empty spot stays zero (library size floored at 1)
    with pytest.warns(UserWarning, match="zero counts"):
        want = _scanpy_log1p_cp10k(ad.AnnData(sp.csr_matrix(counts)))
    np.testing.assert_allclose(normalize_counts(counts), want, rtol=1e-12)
    np.testing.assert_allclose(normalize_counts(sp.csr_matrix(counts)).toarray(), want)
    np.testing.assert_array_equal(normalize_counts(counts, "log1p"), np.log1p(counts))
    np.testing.assert_array_equal(normalize_counts(counts, "counts"), counts)
    with pytest.raises(ValueError, match="normalization='cpm'"):
        normalize_counts(counts, "cpm")


def test_gene_panel_is_the_variance_ranking_of_the_training_rows():
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    from histoxmodal.data.normalize import highly_variable_genes

    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.gamma(1.0, 3.0, 25), (80, 25)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"g{i}" for i in range(25)]
    rows = np.arange(0, 80, 2)
    x = _scanpy_log1p_cp10k(adata)[rows]
    order = np.argsort(-x.var(axis=0), kind="stable")[:7]
    want = [adata.var_names[i] for i in sorted(order)]
    assert highly_variable_genes(adata, 7, rows=rows) == want
    assert highly_variable_genes(adata, None) == list(adata.var_names)
    b = ad.AnnData(x)
    b.var_names = list(adata.var_names)
    sc.pp.highly_variable_genes(b, n_top_genes=7, flavor="seurat")
    seurat = list(b.var_names[b.var["highly_variable"]])
    assert highly_variable_genes(adata, 7, rows=rows, flavor="seurat") == seurat
