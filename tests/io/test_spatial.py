"""Spatial readers on the real sample data, checked against the source files read another way."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial import (
    SpatialFormatError,
    detect_format,
    read_her2st,
    read_her2st_pathology,
    read_spatial,
    read_st,
    read_visium,
    read_xenium,
)

HER2ST_SPOTS = {"B4": 283, "C2": 187, "C3": 180, "C4": 184, "C5": 181}


@pytest.mark.parametrize("section", sorted(HER2ST_SPOTS))
def test_her2st_sections_with_images(data_dir, section):
    root = data_dir / "her2st"
    a = read_her2st(root, section)
    assert a.n_obs == HER2ST_SPOTS[section]
    assert a.X.dtype == np.int32 and a.n_vars > 15000
    assert set(a.obs[keys.OBS_SAMPLE]) == {section}
    assert set(a.obs[keys.OBS_PATIENT]) == {section[0]}
    # counts and coordinates as in the source tables
    counts = pd.read_csv(root / "counts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    sel = pd.read_csv(root / "spots" / f"{section}_selection.tsv", sep="\t")
    sel.index = [f"{x}x{y}" for x, y in zip(sel.x, sel.y, strict=True)]
    spot = counts.index[5]
    row = a.obs_names.get_loc(f"{section}:{spot}")
    assert a.X[row].sum() == counts.loc[spot].sum()
    np.testing.assert_allclose(a.obsm["spatial"][row], sel.loc[spot, ["pixel_x", "pixel_y"]])
    meta = a.uns["spatial"][section]["metadata"]
    # pixel size from two spots one array step apart (200 µm), computed here independently
    at = {(x, y): (px, py) for x, y, px, py in sel[["x", "y", "pixel_x", "pixel_y"]].to_numpy()}
    steps = [
        np.hypot(px - at[(x + 1, y)][0], py - at[(x + 1, y)][1])
        for (x, y), (px, py) in at.items()
        if (x + 1, y) in at
    ]
    assert len(steps) > 50
    assert meta["mpp"] == pytest.approx(200 / np.median(steps), rel=0.03)
    assert meta["mpp_source"].startswith("spot pitch")
    img = a.uns["spatial"][section]["images"]["hires"]
    sf = a.uns["spatial"][section]["scalefactors"]
    assert max(img.shape[:2]) == 2000
    assert img.shape[1] == pytest.approx(meta["image_size"][0] * sf["tissue_hires_scalef"], abs=1)
    assert sf["spot_diameter_fullres"] == pytest.approx(100 / meta["mpp"])


def test_her2st_section_without_image_and_annotations(data_dir):
    a = read_her2st(data_dir / "her2st", "A1")
    meta = a.uns["spatial"]["A1"]["metadata"]
    assert meta["image_path"] is None and a.uns["spatial"]["A1"]["images"] == {}
    assert a.obs["pathology"].notna().mean() > 0.9
    assert "invasive cancer" in set(a.obs["pathology"].dropna())
    cl = pd.read_csv(data_dir / "her2st" / "clusters" / "A1-cluster-annotation.tsv.gz", sep="\t")
    ids = {f"A1:{x}x{y}" for x, y in zip(cl.x, cl.y, strict=True)}
    assert a.obs["cluster"].notna().sum() == len(ids & set(a.obs_names)) == 345


def test_scanpy_plots_unchanged(data_dir, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    a = read_her2st(data_dir / "her2st", "C3")
    sc.pl.spatial(a, color="ERBB2", library_id="C3", show=False)
    import matplotlib.pyplot as plt

    plt.savefig(tmp_path / "c3.png")
    plt.close("all")
    assert (tmp_path / "c3.png").stat().st_size > 10_000


def test_visium_heart(data_dir):
    path = data_dir / "visium" / "scanpy-heart" / "1.0.0"
    with pytest.warns(UserWarning, match="blank"):
        a = read_visium(path)
    assert a.shape == (100, 100) and a.X.dtype == np.int32
    lib = a.uns["spatial"]["1.0.0"]
    assert set(lib["images"]) == {"lowres"} and lib["metadata"]["blank_images"] == ["hires"]
    pos = pd.read_csv(path / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    bc = a.obs_names[7].split(":", 1)[1]
    np.testing.assert_allclose(a.obsm["spatial"][7], pos.loc[bc, [5, 4]].to_numpy(float))
    # spot_diameter_fullres spans 65 µm: agrees with the 100 µm pitch within a few %
    assert lib["metadata"]["mpp"] == pytest.approx(65 / 89.42751063343188)
    assert detect_format(path) == "visium"


def _copy_visium(data_dir, tmp_path):
    src = data_dir / "visium" / "scanpy-heart" / "1.0.0"
    dst = tmp_path / "vis"
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def test_visium_position_file_variants(data_dir, tmp_path):
    dst = _copy_visium(data_dir, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = read_visium(dst)
        names = [
            "barcode",
            "in_tissue",
            "array_row",
            "array_col",
            "pxl_row_in_fullres",
            "pxl_col_in_fullres",
        ]
        df = pd.read_csv(dst / "spatial" / "tissue_positions_list.csv", header=None, names=names)
        (dst / "spatial" / "tissue_positions_list.csv").unlink()
        df.to_csv(dst / "spatial" / "tissue_positions.csv", index=False)
        a = read_visium(dst)
        (dst / "spatial" / "tissue_positions.csv").unlink()
        df.to_parquet(dst / "spatial" / "tissue_positions.parquet")
        b = read_visium(dst)
    for x in (a, b):
        np.testing.assert_array_equal(x.obsm["spatial"], ref.obsm["spatial"])
        assert (x.X != ref.X).nnz == 0


def test_visium_bad_inputs(data_dir, tmp_path):
    dst = _copy_visium(data_dir, tmp_path)
    pos = dst / "spatial" / "tissue_positions_list.csv"
    lines = pos.read_text().splitlines()
    import scanpy as sc

    barcodes = set(sc.read_10x_h5(dst / "filtered_feature_bc_matrix.h5").obs_names)
    pos.write_text(
        "\n".join(ln for ln in lines if ln.split(",")[0] not in sorted(barcodes)[:3]) + "\n"
    )
    with pytest.raises(SpatialFormatError, match="3 of 100 barcodes"):
        read_visium(dst)
    pos.write_text("\n".join(lines) + "\n")
    # the lowres PNG given as the full-resolution image: coordinates exceed it
    with pytest.raises(SpatialFormatError, match="tissue_lowres_scalef"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_visium(dst, image=dst / "spatial" / "tissue_lowres_image.png", mpp=0.7)
    (dst / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(FileNotFoundError, match="scale factors"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_visium(dst)
    with pytest.raises(FileNotFoundError, match="count matrix"):
        read_visium(tmp_path)


def test_st_duplicated_genes_and_mismatched_ids(tmp_path):
    counts = tmp_path / "X1.tsv"
    counts.write_text("\tGAPDH\tACTB\tGAPDH\n1x1\t3\t0\t2\n2x1\t1\t5\t0\n")
    spots = tmp_path / "X1_selection.tsv"
    spots.write_text(
        "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n"
        "1\t1\t1\t1\t100\t100\t1\n2\t1\t2\t1\t300\t100\t1\n1\t2\t1\t2\t100\t300\t1\n"
    )
    with pytest.warns(UserWarning, match="1 gene names occur more than once"):
        a = read_st(counts, spots)
    assert list(a.var_names) == ["GAPDH", "ACTB", "GAPDH-1"]
    assert list(a.var["gene_ids"]) == ["GAPDH", "ACTB", "GAPDH"]
    assert a.uns["spatial"]["X1"]["metadata"]["mpp"] == pytest.approx(1.0)  # 200 µm / 200 px
    assert a.obs["patient"].iloc[0] == "X"
    spots.write_text("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n9\t9\t9\t9\t1\t1\t1\n")
    with pytest.raises(SpatialFormatError, match="no spot ids in common"):
        read_st(counts, spots)


def test_xenium_cells_and_pseudo_spots(data_dir, tmp_path):
    from PIL import Image

    path = data_dir / "xenium"
    cells = read_xenium(path)
    assert cells.shape == (36602, 248)
    ctrl = cells.obsm["control_counts"]
    assert ctrl.shape == (36602, 293)
    assert all(not c.startswith(("NegControl", "BLANK")) for c in cells.var_names)
    assert any(c.startswith("NegControlProbe") for c in ctrl.columns)
    raw = pd.read_csv(path / "cells.csv.gz")
    np.testing.assert_allclose(
        cells.obsm["spatial"][0], raw.loc[0, ["x_centroid", "y_centroid"]].to_numpy(float) / 0.2125
    )
    spots = read_xenium(path, pseudo_spot_um=55)
    assert spots.X.sum() == cells.X.sum() and spots.obs["n_cells"].sum() == 36602
    # one pseudo-spot recomputed by hand
    row = spots.obs.iloc[10]
    inside = (
        (np.floor(raw.x_centroid / 55) == row.array_col)
        & (np.floor(raw.y_centroid / 55) == row.array_row)
    ).to_numpy()
    assert inside.sum() == row.n_cells
    assert spots.X[10].sum() == cells.X[inside].sum()
    # a registered image at 2 µm/px: the 10x-style affine maps image px -> Xenium px
    img = tmp_path / "he.png"
    Image.fromarray(np.full((1800, 2800, 3), 240, np.uint8)).save(img)
    s = 2.0 / 0.2125
    aln = tmp_path / "he_imagealignment.csv"
    aln.write_text(f"{s},0,0\n0,{s},0\n0,0,1\n")
    reg = read_xenium(path, image=img, alignment=aln)
    np.testing.assert_allclose(reg.obsm["spatial"], cells.obsm["spatial"] * 0.2125 / 2.0)
    assert reg.uns["spatial"]["xenium"]["metadata"]["mpp"] == pytest.approx(2.0)


def test_h5ad_and_dispatch(data_dir):
    h5ad = data_dir / "visium" / "squidpy" / "test_data.h5ad"
    with pytest.warns(UserWarning, match="raw integer counts"):
        a = read_spatial(h5ad, image=data_dir / "visium" / "squidpy" / "test_img.jpg")
    assert a.shape == (49, 1999) and "V1_Adult_Mouse_Brain" in a.uns["spatial"]
    meta = a.uns["spatial"]["V1_Adult_Mouse_Brain"]["metadata"]
    assert meta["counts_are_raw"] is False and meta["mpp"] == pytest.approx(65 / 89.44476048)
    assert detect_format(h5ad) == "h5ad"
    assert detect_format(data_dir / "xenium") == "xenium"
    assert detect_format(data_dir / "her2st") == "her2st"
    with pytest.raises(SpatialFormatError, match="section=.*B4"):
        read_spatial(data_dir / "her2st")
    with pytest.raises(SpatialFormatError, match="cannot tell the format"):
        detect_format(data_dir / "wsi")


def test_visium_mtx_folder_and_mpp_disagreement(data_dir, tmp_path):
    import gzip

    import scanpy as sc
    import scipy.io

    dst = _copy_visium(data_dir, tmp_path)
    h5 = sc.read_10x_h5(dst / "filtered_feature_bc_matrix.h5")
    mtx = dst / "filtered_feature_bc_matrix"
    mtx.mkdir()
    with gzip.open(mtx / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, h5.X.T.tocoo().astype(np.int32))
    with gzip.open(mtx / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(h5.obs_names) + "\n")
    with gzip.open(mtx / "features.tsv.gz", "wt") as fh:
        fh.writelines(
            f"{i}\t{n}\tGene Expression\n"
            for i, n in zip(h5.var["gene_ids"], h5.var_names, strict=True)
        )
    (dst / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.warns(UserWarning, match="disagree by 45%.*using 0.5 from user"):
        a = read_visium(dst, mpp=0.5)
    assert (
        a.shape == (100, 100)
        and (
            a.X
            != sc.read_10x_h5(
                data_dir / "visium" / "scanpy-heart" / "1.0.0" / "filtered_feature_bc_matrix.h5"
            ).X
        ).nnz
        == 0
    )
    assert a.uns["spatial"]["vis"]["metadata"]["mpp_source"] == "user"


def test_her2st_all_sections_for_the_gene_side(data_dir):
    a = read_her2st(data_dir / "her2st")
    assert a.obs["sample"].nunique() == 35 and a.obs["patient"].nunique() == 8
    assert len(a.uns["spatial"]) == 35
    per = a.obs["sample"].value_counts()
    assert per["B4"] == 283 and per["C2"] == 187


def test_hires_coordinates_against_full_image_warn(tmp_path):
    from histoxmodal.io.spatial.common import check_coords_in_image

    xy = np.array([[10.0, 10.0], [140.0, 90.0]])
    with pytest.warns(UserWarning, match="hires-image coordinates"):
        check_coords_in_image(xy, (1000, 800), "s", {"tissue_hires_scalef": 0.15})


def test_her2st_pathology_counts_match_the_tsv(data_dir):
    root = data_dir / "her2st"
    a = read_her2st_pathology(root, ["A1"])
    got = a.obs["pathology"].value_counts().to_dict()
    # the same join from the files: counts rows x selected spots x labelled coordinates
    ids = pd.read_csv(root / "counts" / "A1.tsv.gz", sep="\t", usecols=[0]).iloc[:, 0]
    sel = pd.read_csv(root / "spots" / "A1_selection.tsv", sep="\t")
    sel = sel[sel["selected"] == 1]
    spots = set(ids.astype(str)) & {f"{x}x{y}" for x, y in zip(sel["x"], sel["y"], strict=True)}
    lab = pd.read_csv(root / "pathology" / "A1_labeled_coordinates.tsv", sep="\t")
    lab["id"] = [f"{round(x)}x{round(y)}" for x, y in zip(lab["x"], lab["y"], strict=True)]
    want = lab[lab["id"].isin(spots)]["label"].value_counts().to_dict()
    assert got == want
    assert got == {
        "invasive cancer": 282,
        "connective tissue": 24,
        "cancer in situ": 21,
        "adipose tissue": 12,
        "undetermined": 5,
        "immune infiltrate": 2,
    }
    assert a.n_obs == 346 and set(a.obs["patient"]) == {"A"}
    with pytest.raises(ConfigError, match="B4 has no pathology"):
        read_her2st_pathology(root, ["B4"])


def _her2st_copy(data_dir, dst, sections=("C3",)):
    """A her2st-layout folder in ``dst`` with ``sections`` copied from the shared data."""
    import shutil

    root = data_dir / "her2st"
    for d in ("counts", "spots", "images"):
        (dst / d).mkdir(parents=True, exist_ok=True)
    for s in sections:
        shutil.copy(root / "counts" / f"{s}.tsv.gz", dst / "counts")
        shutil.copy(root / "spots" / f"{s}_selection.tsv", dst / "spots")
    return dst


def test_truncated_counts_file_names_itself(data_dir, tmp_path):
    root = _her2st_copy(data_dir, tmp_path / "h")
    f = root / "counts" / "C3.tsv.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])  # cut mid-row, inside the gzip stream
    with pytest.raises(SpatialFormatError, match=r"C3\.tsv\.gz: unreadable counts.*truncated"):
        read_her2st(root, "C3")


def test_non_numeric_count_names_file_and_cell(data_dir, tmp_path):
    import gzip

    root = _her2st_copy(data_dir, tmp_path / "h")
    f = root / "counts" / "C3.tsv.gz"
    lines = gzip.decompress(f.read_bytes()).decode().split("\n")
    cells = lines[2].split("\t")
    cells[5] = "abc"
    lines[2] = "\t".join(cells)
    f.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(SpatialFormatError, match=rf"C3\.tsv\.gz: non-numeric.*{cells[0]}.*'abc'"):
        read_her2st(root, "C3")


def test_ragged_uncompressed_counts_names_itself(data_dir, tmp_path):
    import gzip

    root = _her2st_copy(data_dir, tmp_path / "h")
    gz = root / "counts" / "C3.tsv.gz"
    text = gzip.decompress(gz.read_bytes()).decode()
    gz.unlink()
    (root / "counts" / "C3.tsv").write_text(text[: len(text) // 2])  # killed copy, mid-row
    with pytest.raises(SpatialFormatError, match=r"C3\.tsv: .*missing counts"):
        read_her2st(root, "C3")
