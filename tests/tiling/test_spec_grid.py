"""Tile geometry, grids and tissue fractions against values computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histoxmodal.errors import ConfigError
from histoxmodal.tiling.grid import grid_coords, tile_grid
from histoxmodal.tiling.spec import TileGeometry, TileSpec
from histoxmodal.tiling.tissue import TissueMask


def test_geometry_picks_level_and_sizes():
    ds = (1.0, 4.0, 16.0)
    g = TileGeometry.from_spec(TileSpec(tile_px=224, target_mpp=0.5), 0.25, ds)
    assert (g.tile_px_level0, g.step_level0, g.read_level, g.read_px) == (448, 448, 0, 448)
    assert g.needs_resize and g.effective_mpp == pytest.approx(0.5)
    g = TileGeometry.from_spec(TileSpec(tile_px=256, target_mpp=1.0), 0.25, ds)
    assert (g.tile_px_level0, g.read_level, g.read_px, g.needs_resize) == (1024, 1, 256, False)
    g = TileGeometry.from_spec(TileSpec(tile_px=224, target_mpp=0.5, overlap_px=32), 0.499, ds)
    assert (g.tile_px_level0, g.step_level0) == (224, round(192 * 0.5 / 0.499))
    g = TileGeometry.from_spec(TileSpec(tile_px=100, target_mpp=0.5, stride_px=50), 0.5, ds)
    assert g.step_level0 == 50
    spec = TileSpec.from_um(112, tile_px=224)
    assert spec.target_mpp == 0.5 and spec.tile_um == 112


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile_px": 0},
        {"target_mpp": 0},
        {"target_mpp": float("nan")},
        {"overlap_px": 224},
        {"overlap_px": -1},
        {"min_tissue": 1.5},
        {"stride_px": 0},
        {"overlap_px": 8, "stride_px": 100},
    ],
)
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        TileSpec(**kwargs)


def test_grid_coords_match_loops():
    W, H, s, step = 1000, 700, 224, 200
    expected = [(x, y) for y in range(0, H - s + 1, step) for x in range(0, W - s + 1, step)]
    got = grid_coords((W, H), s, step)
    assert got.dtype == np.int64
    assert [tuple(c) for c in got.tolist()] == expected
    assert len(got) == 4 * 3


def _fraction_loop(mask, dx, dy, x, y, s):
    h, w = mask.shape
    c0 = math.floor(x / dx + 0.5)
    r0 = math.floor(y / dy + 0.5)
    c1 = max(c0 + 1, math.floor((x + s) / dx + 0.5))
    r1 = max(r0 + 1, math.floor((y + s) / dy + 0.5))
    window = mask[max(0, r0) : min(h, r1), max(0, c0) : min(w, c1)]
    return window.sum() / ((c1 - c0) * (r1 - r0))


def test_tissue_fraction_matches_a_loop():
    rng = np.random.default_rng(0)
    mask = rng.random((57, 83)) > 0.6
    dx, dy = 13.7, 14.2
    tm = TissueMask(mask, (dx, dy))
    coords = rng.integers(-30, 1200, (500, 2))
    got = tm.fraction(coords, 96)
    want = [_fraction_loop(mask, dx, dy, x, y, 96) for x, y in coords]
    np.testing.assert_allclose(got, want)


def test_tile_grid_filters_by_min_tissue():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True  # level-0 x in [300, 800), y in [200, 600) at downsample 100
    g = TileGeometry.from_spec(TileSpec(tile_px=100, target_mpp=1.0, min_tissue=0.5), 1.0, (1.0,))
    coords, frac = tile_grid((1000, 1000), g, TissueMask(mask, (100.0, 100.0)))
    want = [(x, y) for y in range(200, 600, 100) for x in range(300, 800, 100)]
    assert [tuple(c) for c in coords.tolist()] == want
    assert (frac == 1).all()
    # a tile twice as large straddles the border: 50 % tissue tiles kept at 0.5, not at 0.6
    g2 = TileGeometry.from_spec(TileSpec(tile_px=200, target_mpp=1.0, stride_px=100), 1.0, (1.0,))
    c5, f5 = tile_grid((1000, 1000), g2, TissueMask(mask, (100.0, 100.0)), min_tissue=0.5)
    c6, _ = tile_grid((1000, 1000), g2, TissueMask(mask, (100.0, 100.0)), min_tissue=0.6)
    brute = [
        (x, y)
        for y in range(0, 801, 100)
        for x in range(0, 801, 100)
        if mask[y // 100 : y // 100 + 2, x // 100 : x // 100 + 2].mean() >= 0.5
    ]
    assert [tuple(c) for c in c5.tolist()] == brute
    assert len(c6) < len(c5) and f5.min() == 0.5
    all_coords, _ = tile_grid((1000, 1000), g2, None)
    assert len(all_coords) == 81
