"""Neighbourhoods of spots within a radius in a section, and the context features built from
them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from histoxmodal.data.neighbours import (
    centre_by_group,
    radius_context,
    radius_neighbours,
    spot_coords_um,
)


def test_neighbours_are_the_spots_within_the_radius_in_the_same_section():
    # a 3 x 3 grid (pitch 1) in section a, and the same coordinates in section b
    grid = np.array([(x, y) for y in range(3) for x in range(3)], float)
    coords = np.concatenate([grid, grid])
    groups = np.array(["a"] * 9 + ["b"] * 9)
    m = radius_neighbours(coords, groups, radius=1.0).toarray()
    # the centre (row 4) averages exactly its four edge neighbours at distance 1
    np.testing.assert_allclose(m[4, :9], [0, 0.25, 0, 0.25, 0, 0.25, 0, 0.25, 0])
    np.testing.assert_allclose(m[13, 9:], m[4, :9])  # section b: its own rows only
    assert m[:9, 9:].sum() == 0 and m[9:, :9].sum() == 0
    assert np.diag(m).sum() == 0  # never itself
    # a corner has 2 edge neighbours; radius 1.5 adds the diagonal (sqrt 2), not distance 2
    np.testing.assert_allclose(m[0].sum(), 1.0)
    assert np.flatnonzero(m[0]).tolist() == [1, 3]
    m15 = radius_neighbours(coords, groups, radius=1.5).toarray()
    assert np.flatnonzero(m15[0]).tolist() == [1, 3, 4]
    assert np.count_nonzero(m15[4]) == 8


def test_an_isolated_spot_is_its_own_neighbourhood():
    coords = np.array([[0, 0], [0, 0.5], [50, 50], [9, 9]], float)
    m = radius_neighbours(coords, ["a", "a", "a", "b"], radius=1.0).toarray()
    assert m[0].tolist() == [0, 1, 0, 0] and m[1].tolist() == [1, 0, 0, 0]
    assert m[2].tolist() == [0, 0, 1, 0] and m[3].tolist() == [0, 0, 0, 1]


def test_context_is_the_mean_of_the_neighbours_features():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, (40, 2))
    groups = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    out = radius_context(x, coords, groups, radius=30.0)
    assert out.shape == (40, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :3], x)
    for i in range(40):  # brute force: the others of the same group within 30
        d = np.linalg.norm(coords - coords[i], axis=1)
        near = np.flatnonzero((groups == groups[i]) & (d <= 30.0) & (np.arange(40) != i))
        want = x[near].mean(0) if len(near) else x[i]
        np.testing.assert_allclose(out[i, 3:], want, rtol=1e-5, atol=1e-6)


def test_spot_coordinates_in_um_use_each_spots_pixel_size():
    obs = pd.DataFrame({"spatial_mpp": [0.5, 2.0], "patch_source_mpp": 9.0}, index=["s0", "s1"])
    a = ad.AnnData(np.zeros((2, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.array([[10.0, 20.0], [10.0, 20.0]])
    np.testing.assert_allclose(spot_coords_um(a), [[5, 10], [20, 40]])
    np.testing.assert_allclose(spot_coords_um(a, [1]), [[20, 40]])
    del a.obs["spatial_mpp"]  # an older build: the patch source's pixel size
    np.testing.assert_allclose(spot_coords_um(a, [0]), [[90, 180]])
    del a.obs["patch_source_mpp"]
    with pytest.raises(ValueError, match="spatial_mpp.*histoxmodal build"):
        spot_coords_um(a)


def test_centring_removes_each_sections_mean_only():
    x = np.array([[1.0, 10], [3, 14], [100, 0], [50, 0], [60, 3]])
    out = centre_by_group(x, ["a", "a", "b", "b", "b"])
    np.testing.assert_allclose(out, [[-1, -2], [1, 2], [30, -1], [-20, -1], [-10, 2]])
    np.testing.assert_allclose(centre_by_group(x[:2]), [[-1, -2], [1, 2]])
    with pytest.raises(ValueError, match="groups has 2 rows, features 5"):
        centre_by_group(x, ["a", "b"])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"coords must be \(n, 2\)"):
        radius_neighbours(np.zeros((3, 3)), radius=1)
    with pytest.raises(ValueError, match="radius must be > 0"):
        radius_neighbours(np.zeros((3, 2)), radius=0)
    with pytest.raises(ValueError, match="features has 2 rows, coords 3"):
        radius_context(np.zeros((2, 4)), np.zeros((3, 2)), radius=1)


def test_the_radius_graph_has_squidpys_neighbours_on_her2st(data_dir):
    """The hand-built graph (kept for speed: `histoxmodal bench neighbours`) links exactly the
    spots squidpy links, on the real sections' spot centres in µm."""
    sq = pytest.importorskip("squidpy")
    from histoxmodal.bench.neighbours import bench_neighbours, hex_spots
    from histoxmodal.io.spatial import read_her2st

    parts = [read_her2st(data_dir / "her2st", s) for s in ("B4", "C3")]
    xy = np.concatenate(
        [
            p.obsm["spatial"] * p.uns["spatial"][p.obs["sample"].iloc[0]]["metadata"]["mpp"]
            for p in parts
        ]
    )
    sample = np.concatenate([p.obs["sample"].astype(str).to_numpy() for p in parts])
    ours = radius_neighbours(xy, sample, radius=450.0)
    adata = ad.AnnData(np.zeros((len(xy), 1), np.float32))
    adata.obsm["spatial"] = xy
    adata.obs["sample"] = pd.Categorical(sample)
    sq.gr.spatial_neighbors(adata, coord_type="generic", radius=450.0, library_key="sample")
    a = (ours > 0).astype(np.int8).tolil()
    a.setdiag(0)
    a = a.tocsr()
    a.eliminate_zeros()
    b = (adata.obsp["spatial_connectivities"] != 0).astype(np.int8).tocsr()
    assert a.nnz == b.nnz > 4 * len(xy)
    assert abs(a - b).nnz == 0
    # and the bench's own check on a generated grid
    r = bench_neighbours(2_000, n_sections=2, radius_um=150.0, repeats=1)
    assert r["edges_differing"] == 0 and r["edges_histoxmodal"] == r["edges_squidpy"] > 0
    assert len(hex_spots(2_000, 2)[0]) == 2_000
