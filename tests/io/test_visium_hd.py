"""Visium HD: the generated Space Ranger layout, bins read as they are, 2 µm bins pooled into
squares and discs (checked against sums computed on the dense truth), and the ecosystem's own
readers (scanpy's read_10x_h5, spatialdata-io's visium_hd) on the same folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial import (
    SpatialFormatError,
    detect_format,
    read_spatial,
    read_visium_hd,
    visium_hd_pool,
)
from histoxmodal.io.spatial import visium_hd as vhd
from histoxmodal.testing import make_synthetic_visium_hd


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    return make_synthetic_visium_hd(tmp_path_factory.mktemp("hd") / "run1", seed=7)


def truth_bins(hd, b: int):
    """``(rows, cols, counts (n, n_genes))`` of the b µm bins under tissue, from the dense truth."""
    r, c = np.nonzero(hd.in_tissue[b])
    return r, c, hd.counts[b][r, c]


def brute_pool(hd, *, pool_um, pitch_um, shape):
    """Pooled counts by looping over the spots of the grid: {(i, j): (counts, n_bins, n_grid)}."""
    n_rows, n_cols = hd.in_tissue[2].shape
    yy, xx = (np.mgrid[0:n_rows, 0:n_cols] + 0.5) * 2.0
    out = {}
    for j in range(int(n_rows * 2 / pitch_um) + 1):
        for i in range(int(n_cols * 2 / pitch_um) + 1):
            cx, cy = (i + 0.5) * pitch_um, (j + 0.5) * pitch_um
            if shape == "square":
                h = pool_um / 2
                inside = (xx >= cx - h) & (xx < cx + h) & (yy >= cy - h) & (yy < cy + h)
            else:
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= (pool_um / 2) ** 2
            tissue = inside & hd.in_tissue[2]
            if tissue.any():
                out[(i, j)] = (
                    hd.counts[2][tissue].sum(axis=0),
                    int(tissue.sum()),
                    int(inside.sum()),
                )
    return out


def test_the_layout_is_space_rangers(hd):
    outs = hd.outs
    for b in ("002", "008", "016"):
        d = outs / "binned_outputs" / f"square_{b}um"
        assert (d / "filtered_feature_bc_matrix.h5").is_file()
        pos = pd.read_parquet(d / "spatial" / "tissue_positions.parquet")
        assert list(pos.columns) == list(vhd.POSITION_COLUMNS)
        sf = json.loads((d / "spatial" / "scalefactors_json.json").read_text())
        assert sf["bin_size_um"] == int(b) and sf["microns_per_pixel"] == hd.mpp
        assert sf["spot_diameter_fullres"] == pytest.approx(int(b) / hd.mpp)
        n_rows, n_cols = hd.in_tissue[int(b)].shape
        assert len(pos) == n_rows * n_cols  # every bin of the grid, in tissue or not
        assert pos["in_tissue"].sum() == hd.in_tissue[int(b)].sum()
        first = pos.iloc[n_cols + 3]
        assert first["barcode"] == f"s_{b}um_00001_00003-1"
        assert (first["array_row"], first["array_col"]) == (1, 3)
    assert (outs / "spatial" / "tissue_hires_image.png").is_file()
    assert (outs / "feature_slice.h5").is_file()
    assert vhd.visium_hd_image(hd.folder) == hd.image
    assert list(vhd.visium_hd_bins(hd.folder)) == [2.0, 8.0, 16.0]
    assert detect_format(hd.folder) == detect_format(outs) == "visium_hd"


@pytest.mark.parametrize("b", [2, 8, 16])
def test_scanpy_reads_the_generated_h5(hd, b):
    import scanpy as sc

    a = sc.read_10x_h5(hd.bin_dir(b) / "filtered_feature_bc_matrix.h5")
    r, c, counts = truth_bins(hd, b)
    assert list(a.obs_names) == [
        f"s_{b:03d}um_{i:05d}_{j:05d}-1" for i, j in zip(r, c, strict=True)
    ]
    np.testing.assert_array_equal(a.X.toarray(), counts)
    assert list(a.var_names) == hd.genes
    assert set(a.var["feature_types"]) == {"Gene Expression"}


@pytest.mark.parametrize("b", [2, 8, 16])
def test_bins_as_they_are(hd, b):
    a = read_visium_hd(hd.folder, bin_um=b)
    r, c, counts = truth_bins(hd, b)
    np.testing.assert_array_equal(a.X.toarray(), counts)
    np.testing.assert_array_equal(a.obs["array_row"], r)
    np.testing.assert_array_equal(a.obs["array_col"], c)
    k = b // 2  # centre of bin (r, c) in 2 µm-bin indices: k r + (k - 1) / 2
    want = vhd.apply_homography(hd.homography, np.c_[k * c + (k - 1) / 2, k * r + (k - 1) / 2])
    np.testing.assert_allclose(a.obsm["spatial"], want, atol=1e-6)
    np.testing.assert_allclose(a.obs[["x_um", "y_um"]], np.c_[c + 0.5, r + 0.5] * b)
    lib = a.uns["spatial"]["run1"]
    assert lib["metadata"]["mpp"] == hd.mpp and lib["metadata"]["bin_um"] == b
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(b / hd.mpp)
    assert "hires" in lib["images"] and "pooling" not in lib["metadata"]


@pytest.mark.parametrize("b", [8, 16])
def test_2um_bins_pooled_into_squares_are_space_rangers_bins(hd, b):
    pooled = read_visium_hd(hd.folder, pool_um=b, block_bins=1000)
    binned = read_visium_hd(hd.folder, bin_um=b)
    assert pooled.n_obs == binned.n_obs
    at = {
        (i, j): n
        for n, (i, j) in enumerate(
            zip(pooled.obs["array_row"], pooled.obs["array_col"], strict=True)
        )
    }
    order = [
        at[(i, j)] for i, j in zip(binned.obs["array_row"], binned.obs["array_col"], strict=True)
    ]
    np.testing.assert_array_equal(pooled.X[order].toarray(), binned.X.toarray())
    np.testing.assert_allclose(pooled.obsm["spatial"][order], binned.obsm["spatial"], atol=1e-6)
    assert (pooled.obs["n_bins"] <= (b // 2) ** 2).all()


@pytest.mark.parametrize(
    ("pool_um", "pitch_um", "shape"),
    [(55.0, None, "square"), (100.0, None, "square"), (40.0, 60.0, "disc"), (55.0, None, "disc")],
)
def test_pooling_equals_sums_over_each_spots_bins(hd, monkeypatch, pool_um, pitch_um, shape):
    monkeypatch.setattr(visium_hd_pool, "FOLD_MIN_TRIPLES", 500)  # fold often
    a = read_visium_hd(
        hd.folder, pool_um=pool_um, pool_pitch_um=pitch_um, pool_shape=shape, block_bins=777
    )
    pitch = pitch_um or pool_um
    truth = brute_pool(hd, pool_um=pool_um, pitch_um=pitch, shape=shape)
    got = list(zip(a.obs["array_col"], a.obs["array_row"], strict=True))
    assert sorted(got) == sorted(truth)
    for n, ij in enumerate(got):
        counts, n_bins, n_grid = truth[ij]
        np.testing.assert_array_equal(a.X[n].toarray().ravel(), counts)
        assert a.obs["n_bins"].iloc[n] == n_bins
        assert a.obs["tissue_fraction"].iloc[n] == pytest.approx(n_bins / n_grid)
    centres = (np.array(got, float) + 0.5) * pitch
    np.testing.assert_allclose(a.obs[["x_um", "y_um"]], centres)
    np.testing.assert_allclose(a.obsm["spatial"], hd.um_to_image(centres), atol=1e-6)
    meta = a.uns["spatial"]["run1"]["metadata"]
    n_in = int(hd.in_tissue[2].sum())
    assert meta["pooling"] == {
        "source_bin_um": 2.0,
        "pool_um": pool_um,
        "shape": shape,
        "pitch_um": pitch,
        "n_bins_read": n_in,
        "n_bins_pooled": sum(v[1] for v in truth.values()),
        "n_spots": len(truth),
        "rule": "a bin belongs to the spot holding its centre",
    }
    if shape == "square" and pitch == pool_um:
        assert meta["pooling"]["n_bins_pooled"] == n_in  # squares tile the array
    sf = a.uns["spatial"]["run1"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(pool_um / hd.mpp)
    assert meta["homography_rms_px"] < 1e-6


def test_the_full_resolution_image_is_read(hd):
    a = read_visium_hd(hd.folder, pool_um=55, image=hd.image)
    meta = a.uns["spatial"]["run1"]["metadata"]
    assert meta["image_path"] == str(hd.image) and meta["mpp"] == hd.mpp
    import tifffile

    assert meta["image_size"] == list(tifffile.imread(hd.image).shape[1::-1])
    assert read_spatial(hd.folder, pool_um=55).n_obs == a.n_obs


def test_spatialdata_io_reads_the_same_bins(hd):
    sdio = pytest.importorskip("spatialdata_io")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sdio.visium_hd(
            hd.outs, dataset_id="run1", load_segmentations_only=False,
            fullres_image_file=hd.image, var_names_make_unique=False,
        )  # fmt: skip
    for b in (2, 8, 16):
        table = sdata.tables[f"square_{b:03d}um"]
        ours = read_visium_hd(hd.folder, bin_um=b)
        names = [n.split(":", 1)[1] for n in ours.obs_names]
        assert sorted(names) == sorted(table.obs_names)
        table = table[names]
        np.testing.assert_array_equal(ours.X.toarray(), table.X.toarray())
        np.testing.assert_allclose(ours.obsm["spatial"], table.obsm["spatial"], atol=1e-9)
    # the 2 µm bins pooled into 16 µm squares are spatialdata-io's 16 µm bins, counts and centres
    pooled = read_visium_hd(hd.folder, pool_um=16)
    table = sdata.tables["square_016um"]
    names = [
        f"s_016um_{r:05d}_{c:05d}-1"
        for r, c in zip(pooled.obs["array_row"], pooled.obs["array_col"], strict=True)
    ]
    table = table[names]
    np.testing.assert_array_equal(pooled.X.toarray(), table.X.toarray())
    np.testing.assert_allclose(pooled.obsm["spatial"], table.obsm["spatial"], atol=1e-6)


def test_bad_input_is_named_with_the_fix(hd, tmp_path):
    with pytest.raises(ConfigError, match=r"bin_um=4 not in this output \(bins of 2, 8, 16"):
        read_visium_hd(hd.folder, bin_um=4)
    with pytest.raises(SpatialFormatError, match="pool_um=1 is smaller than the 2 µm bins"):
        read_visium_hd(hd.folder, pool_um=1)
    with pytest.raises(SpatialFormatError, match="pool_pitch_um=40 must be >= pool_um=55"):
        read_visium_hd(hd.folder, pool_um=55, pool_pitch_um=40)
    with pytest.raises(SpatialFormatError, match="pool_shape='hex'"):
        read_visium_hd(hd.folder, pool_um=55, pool_shape="hex")
    with pytest.raises(SpatialFormatError, match="no binned_outputs/"):
        read_visium_hd(hd.bin_dir(2))
    copy = tmp_path / "run1"
    shutil.copytree(hd.folder, copy)
    pos_file = copy / "outs/binned_outputs/square_002um/spatial/tissue_positions.parquet"
    pos = pd.read_parquet(pos_file)
    pos["pxl_row_in_fullres"] = np.random.default_rng(0).permutation(pos["pxl_row_in_fullres"])
    pos.to_parquet(pos_file)
    with pytest.raises(SpatialFormatError, match="do not lie on a grid") as err:
        read_visium_hd(copy, pool_um=55)
    assert str(pos_file) in str(err.value) and "\n" not in str(err.value)
    (copy / "outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(SpatialFormatError, match="square_008um: no filtered_feature_bc_matrix.h5"):
        read_visium_hd(copy, bin_um=8)


def test_barcodes_are_parsed_or_refused():
    from histoxmodal.testing.visium_hd import bin_barcodes

    r, c = np.array([0, 12, 3349]), np.array([7, 0, 3349])
    bc = bin_barcodes(r, c, 2)
    assert bc[1] == b"s_002um_00012_00000-1"
    rows, cols = vhd.parse_bin_barcodes(bc, "x.h5")
    np.testing.assert_array_equal(rows, r)
    np.testing.assert_array_equal(cols, c)
    rows, cols = vhd.parse_bin_barcodes(np.array([b.decode() for b in bc]), "x.h5")
    np.testing.assert_array_equal(cols, c)
    with pytest.raises(SpatialFormatError, match="not a Visium HD bin barcode"):
        vhd.parse_bin_barcodes(np.array([b"AAACAAGTATCTCCCA-1"]), "x.h5")
    with pytest.raises(SpatialFormatError, match=r"row 1\) does not follow"):
        vhd.parse_bin_barcodes(np.array([b"s_002um_00001_00002-1", b"s_002um_0000x_00002-1"]), "x")


def test_fit_homography_recovers_a_projective_map():
    rng = np.random.default_rng(1)
    H = np.array([[3.9, -0.2, 100.0], [0.21, 4.1, 50.0], [2e-6, -1e-6, 1.0]])
    src = rng.uniform(0, 3350, (500, 2))
    got, rms = vhd.fit_homography(src, vhd.apply_homography(H, src))
    np.testing.assert_allclose(got, H, rtol=1e-7, atol=1e-9)
    assert rms < 1e-6


def test_a_matrix_out_of_row_order_is_folded_to_the_same_sums(hd, tmp_path, monkeypatch):
    """Space Ranger sorts bins by barcode (by grid row) and the pooling finishes spots row band
    by row band; bins in another order are summed by folds instead, to the same result."""
    import scipy.sparse as sp

    from histoxmodal.testing.visium_hd import bin_barcodes, write_10x_h5

    copy = tmp_path / "run1"
    shutil.copytree(hd.folder, copy)
    r, c, counts = truth_bins(hd, 2)
    order = np.random.default_rng(3).permutation(len(r))
    blocks = [
        (bin_barcodes(r[i], c[i], 2), sp.csr_matrix(counts[i])) for i in np.array_split(order, 7)
    ]
    h5 = copy / "outs/binned_outputs/square_002um/filtered_feature_bc_matrix.h5"
    write_10x_h5(h5, blocks, genes=hd.genes, gene_ids=[f"id{i}" for i in range(len(hd.genes))])
    monkeypatch.setattr(visium_hd_pool, "FOLD_MIN_TRIPLES", 1000)
    pool, _ = vhd.pool_bins(
        h5, h5.parent / "spatial/tissue_positions.parquet", bin_um=2, pool_um=55, block_bins=999
    )
    ref, _ = vhd.pool_bins(
        hd.bin_dir(2) / "filtered_feature_bc_matrix.h5",
        hd.bin_dir(2) / "spatial/tissue_positions.parquet",
        bin_um=2,
        pool_um=55,
        block_bins=999,
    )
    assert pool.stats["row_order"] is False and ref.stats["row_order"] is True
    assert pool.stats["n_folds"] > 1
    np.testing.assert_array_equal(pool.grid, ref.grid)
    np.testing.assert_array_equal(pool.counts.toarray(), ref.counts.toarray())
    np.testing.assert_array_equal(pool.n_bins, ref.n_bins)
    assert pool.counts.dtype == ref.counts.dtype == np.int32
