"""Xenium, her2st/ST and h5ad readers on each layout they accept, rewritten from the shared files.

(Visium's layouts: ``test_visium_layouts.py``.) Each variant is checked against the shared
file's own read: same cells or spots, genes, counts and coordinates.
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.io

from histoxmodal.io.spatial import (
    MissingSpatialFileError,
    SpatialFormatError,
    detect_format,
    read_h5ad,
    read_her2st,
    read_xenium,
)

# --- Xenium ----------------------------------------------------------------------------------

N_CELLS, N_GENES, N_CONTROLS = 36602, 248, 293


@pytest.fixture(scope="module")
def xenium_ref(data_dir):
    a = read_xenium(data_dir / "xenium")
    assert a.shape == (N_CELLS, N_GENES)
    return a


def _xenium_copy(data_dir, dst, *, matrix=True):
    dst.mkdir(parents=True)
    if matrix:
        shutil.copy(data_dir / "xenium" / "cell_feature_matrix.h5", dst)
    return dst


def _assert_same_cells(a, ref, rows=None):
    ref = ref if rows is None else ref[rows].copy()
    assert list(a.obs_names) == list(ref.obs_names)
    assert list(a.var_names) == list(ref.var_names)
    assert (a.X != ref.X).nnz == 0 and a.X.sum() == ref.X.sum()
    np.testing.assert_array_equal(a.obsm["spatial"], ref.obsm["spatial"])
    pd.testing.assert_frame_equal(a.obsm["control_counts"], ref.obsm["control_counts"])


@pytest.mark.parametrize("variant", ["cells.csv", "cells.parquet", "cells.parquet_bytes_ids"])
def test_xenium_cells_table(data_dir, tmp_path, xenium_ref, variant):
    dst = _xenium_copy(data_dir, tmp_path / "xenium")
    cells = pd.read_csv(data_dir / "xenium" / "cells.csv.gz")
    if variant == "cells.csv":
        (dst / "cells.csv").write_bytes(
            gzip.decompress((data_dir / "xenium" / "cells.csv.gz").read_bytes())
        )
    elif variant == "cells.parquet":
        cells.to_parquet(dst / "cells.parquet", index=False)
    else:
        cells["cell_id"] = [str(c).encode() for c in cells["cell_id"]]
        cells.to_parquet(dst / "cells.parquet", index=False)
    a = read_xenium(dst)
    _assert_same_cells(a, xenium_ref)
    name = variant.split("_")[0]
    assert a.uns["spatial"]["xenium"]["metadata"]["cells"] == str(dst / name)
    np.testing.assert_allclose(a.obs["x_um"], cells["x_centroid"])


def test_xenium_cell_feature_matrix_folder(data_dir, tmp_path, xenium_ref):
    import scanpy as sc

    dst = _xenium_copy(data_dir, tmp_path / "xenium", matrix=False)
    shutil.copy(data_dir / "xenium" / "cells.csv.gz", dst)
    full = sc.read_10x_h5(data_dir / "xenium" / "cell_feature_matrix.h5", gex_only=False)
    rows = slice(0, 2000)  # a subset keeps the Matrix Market file small
    sub = full[rows]
    mtx = dst / "cell_feature_matrix"
    mtx.mkdir()
    with gzip.open(mtx / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sub.X.T.tocoo().astype(np.int32))
    with gzip.open(mtx / "features.tsv.gz", "wt") as fh:
        fh.writelines(
            f"{i}\t{n}\t{t}\n"
            for i, n, t in zip(
                sub.var["gene_ids"], sub.var_names, sub.var["feature_types"], strict=True
            )
        )
    with gzip.open(mtx / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(sub.obs_names) + "\n")
    assert detect_format(dst) == "xenium"
    a = read_xenium(dst)
    assert a.n_obs == 2000 and a.obsm["control_counts"].shape == (2000, N_CONTROLS)
    _assert_same_cells(a, xenium_ref, rows)
    assert a.uns["spatial"]["xenium"]["metadata"]["matrix"] == str(mtx)
    # build --recipe xenium finds this layout too, given the folder or the one above it, and
    # fingerprints the matrix files and the cell table (not the transcripts beside them)
    from histoxmodal.data.recipes import find_samples, load_recipe

    (dst / "transcripts.parquet").write_bytes(b"\0" * 64)
    inputs = [mtx / n for n in ("barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz")]
    for given in (dst, tmp_path):
        (ref,) = find_samples(load_recipe("xenium"), [given])
        assert ref.sample == "xenium" and ref.inputs == [*inputs, dst / "cells.csv.gz"]


def test_xenium_missing_files_name_the_folder(data_dir, tmp_path):
    dst = _xenium_copy(data_dir, tmp_path / "xenium", matrix=False)
    with pytest.raises(
        MissingSpatialFileError,
        match=rf"^{re.escape(str(dst))}: no Xenium cell-feature matrix; expected "
        r"cell_feature_matrix\.h5 or a cell_feature_matrix/ folder",
    ):
        read_xenium(dst)
    shutil.copy(data_dir / "xenium" / "cell_feature_matrix.h5", dst)
    with pytest.raises(
        MissingSpatialFileError,
        match=rf"^{re.escape(str(dst))}: no cell centroids; expected cells\.parquet, "
        r"cells\.csv\.gz or cells\.csv$",
    ):
        read_xenium(dst)


# --- her2st / legacy ST ----------------------------------------------------------------------


def _her2st_copy(data_dir, dst, section="C3"):
    root = data_dir / "her2st"
    for d in ("counts", "spots"):
        (dst / d).mkdir(parents=True)
    shutil.copy(root / "counts" / f"{section}.tsv.gz", dst / "counts")
    shutil.copy(root / "spots" / f"{section}_selection.tsv", dst / "spots")
    return dst


@pytest.fixture(scope="module")
def c3_ref(data_dir):
    a = read_her2st(data_dir / "her2st", "C3")
    assert a.n_obs == 180
    return a


def _assert_same_spots(a, ref):
    assert list(a.obs_names) == list(ref.obs_names) and list(a.var_names) == list(ref.var_names)
    assert (a.X != ref.X).nnz == 0 and a.X.sum() == ref.X.sum()
    np.testing.assert_array_equal(a.obsm["spatial"], ref.obsm["spatial"])
    meta, ref_meta = a.uns["spatial"]["C3"]["metadata"], ref.uns["spatial"]["C3"]["metadata"]
    assert meta["mpp"] == pytest.approx(ref_meta["mpp"])


def test_her2st_uncompressed_counts(data_dir, tmp_path, c3_ref):
    root = _her2st_copy(data_dir, tmp_path / "h")
    gz = root / "counts" / "C3.tsv.gz"
    (root / "counts" / "C3.tsv").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    a = read_her2st(root, "C3")
    _assert_same_spots(a, c3_ref)
    assert a.uns["spatial"]["C3"]["metadata"]["counts"] == str(root / "counts" / "C3.tsv")
    # the count of one spot, from the plain table read another way
    table = pd.read_csv(root / "counts" / "C3.tsv", sep="\t", index_col=0)
    spot = a.obs_names[3].split(":", 1)[1]
    assert a.X[3].sum() == table.loc[spot].sum()


def test_her2st_spot_table_without_selected_column(data_dir, tmp_path, c3_ref):
    root = _her2st_copy(data_dir, tmp_path / "h")
    spots = root / "spots" / "C3_selection.tsv"
    sel = pd.read_csv(spots, sep="\t")
    assert (sel["selected"] == 1).all()  # the shared table lists only selected spots
    sel.drop(columns="selected").to_csv(spots, sep="\t", index=False)
    _assert_same_spots(read_her2st(root, "C3"), c3_ref)
    # a spot marked unselected is left out
    sel.loc[0, "selected"] = 0
    sel.to_csv(spots, sep="\t", index=False)
    a = read_her2st(root, "C3")
    gone = f"C3:{sel.loc[0, 'x']}x{sel.loc[0, 'y']}"
    assert gone in c3_ref.obs_names and gone not in a.obs_names and a.n_obs == 179


# --- h5ad ------------------------------------------------------------------------------------

LIB = "V1_Adult_Mouse_Brain"


@pytest.fixture(scope="module")
def squidpy_h5ad(data_dir):
    import anndata as ad

    return ad.read_h5ad(data_dir / "visium" / "squidpy" / "test_data.h5ad")


def test_h5ad_normalized_x_with_a_counts_layer(squidpy_h5ad, tmp_path):
    import scipy.sparse as sp

    a = squidpy_h5ad.copy()
    counts = sp.random(a.n_obs, a.n_vars, density=0.1, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    a.layers["counts"] = counts
    path = tmp_path / "with_counts.h5ad"
    a.write_h5ad(path)
    out = read_h5ad(path)
    assert out.X.dtype == np.int32 and (counts != out.X).nnz == 0
    assert out.uns["spatial"][LIB]["metadata"]["counts_are_raw"] is True
    np.testing.assert_array_equal(out.obsm["spatial"], squidpy_h5ad.obsm["spatial"])
    # scanpy stores float images in [0, 1]: the real lowres is kept, not taken for a blank
    images = out.uns["spatial"][LIB]["images"]
    assert set(images) == {"hires", "lowres"}
    src = squidpy_h5ad.uns["spatial"][LIB]["images"]["lowres"]
    assert src.dtype == np.float32 and src.max() <= 1.0
    np.testing.assert_array_equal(images["lowres"], src)


def test_h5ad_without_uns_spatial(squidpy_h5ad, tmp_path):
    a = squidpy_h5ad.copy()
    del a.uns["spatial"]
    path = tmp_path / "bare.h5ad"
    a.write_h5ad(path)
    with pytest.warns(UserWarning, match="no uns\\['spatial'\\] entry"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*raw integer counts")
        out = read_h5ad(path)
    assert list(out.uns["spatial"]) == ["bare"] and out.uns["spatial"]["bare"]["images"] == {}
    assert out.uns["spatial"]["bare"]["metadata"]["mpp"] is None
    np.testing.assert_array_equal(out.obsm["spatial"], squidpy_h5ad.obsm["spatial"])


def test_h5ad_several_libraries_and_no_coordinates(squidpy_h5ad, tmp_path):
    a = squidpy_h5ad.copy()
    a.uns["spatial"]["second"] = a.uns["spatial"][LIB]
    path = tmp_path / "two.h5ad"
    a.write_h5ad(path)
    with pytest.raises(SpatialFormatError, match=r"several libraries.*pass library_id="):
        read_h5ad(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*raw integer counts")
        assert list(read_h5ad(path, library_id="second").uns["spatial"]) == ["second"]
    del a.obsm["spatial"]
    a.write_h5ad(path)
    with pytest.raises(SpatialFormatError, match=r"two\.h5ad: no obsm\['spatial'\]"):
        read_h5ad(path)
