"""The synthetic slide generator: geometry, metadata, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from histoxmodal import open_slide
from histoxmodal.testing import make_synthetic_slide


def test_geometry_and_metadata(small_slide):
    s = open_slide(small_slide.path)
    assert s.level_dimensions == ((3072, 2048), (1536, 1024), (768, 512), (384, 256))
    assert s.mpp == pytest.approx(0.25) and s.mpp_info.source == "metadata"
    assert small_slide.tissue_mask.shape == (2048 // 32, 3072 // 32)
    assert 0.05 < small_slide.tissue_fraction < 0.6
    # tissue is H&E-coloured: pink/purple, saturated; glass is near white
    region = s.read_region((0, 0), 0, (3072, 2048))
    cell = small_slide.mask_cell
    inside = np.argwhere(small_slide.tissue_mask)[len(np.argwhere(small_slide.tissue_mask)) // 2]
    y, x = inside * cell + cell // 2
    r, g, b = region[y - 4 : y + 4, x - 4 : x + 4].reshape(-1, 3).mean(axis=0)
    assert b > g and r > g  # eosin/haematoxylin: green is the lowest channel
    assert region[~np.kron(small_slide.tissue_mask, np.ones((cell, cell), bool))].mean() > 230


def test_same_seed_same_file(tmp_path):
    a = make_synthetic_slide(tmp_path / "a.tif", width=1024, height=768, seed=7)
    b = make_synthetic_slide(tmp_path / "b.tif", width=1024, height=768, seed=7)
    c = make_synthetic_slide(tmp_path / "c.tif", width=1024, height=768, seed=8)

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(a.path) == digest(b.path) != digest(c.path)


def test_synthetic_visium_expression_follows_the_tissue(tmp_path):
    from histoxmodal import read_spatial
    from histoxmodal.testing import TISSUE_TYPES, make_synthetic_visium
    from histoxmodal.testing.spatial import MARKERS

    gen = make_synthetic_visium(tmp_path, n_samples=2, width=6144, height=6144, seed=3)
    assert [f.name for f in gen.files] == ["S1.h5ad", "S2.h5ad"]
    for adata, slide in zip(gen.samples, gen.slides, strict=True):
        xy = adata.obsm["spatial"]
        # hexagonal grid: nearest neighbours 100 µm = 200 px apart at 0.5 µm/px
        d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        assert np.allclose(d.min(axis=1), 200.0, atol=1e-6)
        # every spot centre lies on tissue
        cells = (xy / slide.mask_cell).astype(int)
        assert slide.tissue_mask[cells[:, 1], cells[:, 0]].all()
        comp = adata.obsm["composition"]
        assert np.allclose(comp.sum(axis=1), 1.0)
        counts = np.asarray(adata.X.todense())
        genes = list(adata.var_names)
        for t, markers in enumerate(MARKERS):
            marker_share = counts[:, [genes.index(g) for g in markers]].sum(1) / counts.sum(1)
            # a type's markers rise with its share of the spot (Pearson over spots)
            if comp[:, t].std() > 0.05:
                assert np.corrcoef(comp[:, t], marker_share)[0, 1] > 0.8, TISSUE_TYPES[t]["name"]
    # the h5ad files read back through the public reader, with the slide as the image
    back = read_spatial(gen.files[0], format="h5ad", image=gen.slides[0].path)
    assert back.n_obs == gen.samples[0].n_obs
    assert back.uns["spatial"]["S1"]["metadata"]["mpp"] == pytest.approx(0.5)
