"""Gene embedders fitted on one AnnData and applied to another: shapes, the PCA baseline against
its definition, library sizes over the shared genes, the scVI panel."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.data.normalize import highly_variable_genes, normalize_counts
from histoxmodal.encoders.embedders import PCA_BASELINE, PcaEmbedder, ScviEmbedder
from histoxmodal.errors import ConfigError


def _adata(n=120, n_genes=30, seed=0, prefix="G"):
    """Poisson counts with two groups of spots, genes 0-9 up in one of them; 3 patients."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    rate = np.full((n, n_genes), 4.0)
    rate[y == 1, :10] *= 5
    a = ad.AnnData(rng.poisson(rate).astype(np.float32))
    a.var_names = [f"{prefix}{i}" for i in range(n_genes)]
    a.obs = pd.DataFrame({"patient": np.resize(list("ABC"), n)}, index=[f"s{i}" for i in range(n)])
    return a, y


def test_pca_embedder_is_pca_of_log_cp10k():
    a, y = _adata()
    pe = PcaEmbedder(n_components=3, n_top_genes=12)
    z = pe(a, a)
    assert z.shape == (a.n_obs, 3) and pe.name == "pca3" and PCA_BASELINE.name == "pca50"
    np.testing.assert_array_equal(z, pe(a, a, seed=7))  # deterministic, the seed is ignored
    # the definition, written out: top-variance genes of log1p(CP10k), centred, principal axes
    x = normalize_counts(np.asarray(a.X, np.float64))
    top = np.sort(np.argsort(-x.var(axis=0), kind="stable")[:12])
    xc = x[:, top] - x[:, top].mean(axis=0)
    s = np.linalg.svd(xc, compute_uv=False)[:3]
    np.testing.assert_allclose(np.linalg.norm(z, axis=0), s, rtol=1e-6)
    # measured 0.86: the first axis is the planted signal (the other two: 0.05, 0.02)
    assert abs(np.corrcoef(z[:, 0], y)[0, 1]) > 0.75


def test_pca_embedder_takes_the_library_over_the_shared_genes():
    import anndata as ad

    a, _ = _adata()
    extra, _ = _adata(seed=1, prefix="X")  # genes only the applied data has
    wide = ad.concat([a, extra], axis=1, merge="first")
    pe = PcaEmbedder(n_components=4, n_top_genes=20)
    # apply's extra genes change neither the panel nor the scaling of its spots
    np.testing.assert_allclose(pe(a, wide), pe(a, a), rtol=1e-10, atol=1e-10)
    with pytest.raises(ConfigError, match="share no gene names"):
        pe(a, extra)


def test_scvi_embedder_needs_its_batch_key():
    a, _ = _adata()
    with pytest.raises(ConfigError, match="batch_key='slide' is not a column"):
        ScviEmbedder(batch_key="slide").pretrain(a, list(a.var_names), 0)


def test_scvi_embedder_panel_and_shape():
    pytest.importorskip("scvi")
    a, _ = _adata()
    apply = a[:, a.var_names[5:]]  # the panel is chosen among the shared genes only
    emb = ScviEmbedder(n_latent=3, n_hidden=8, n_top_genes=10, max_epochs=1)
    tower = emb.pretrain(a, list(apply.var_names), seed=0)
    assert list(tower.genes) == highly_variable_genes(a[:, a.var_names[5:]], 10, flavor="seurat")
    z = emb(a, apply, seed=0)
    assert z.shape == (a.n_obs, 3) and np.isfinite(z).all()
    assert "top 10 HVG" in emb.describe()
