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
