"""Xenium from transcripts: pooling checked against a direct count, controls kept apart, and the
H&E placed by 10x's matrix or Xenium Explorer's keypoints, on a generated bundle."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest

from histoxmodal.io.spatial import (
    MissingSpatialFileError,
    SpatialFormatError,
    detect_format,
    fit_affine,
    pool_transcripts,
    read_he_alignment,
    read_spatial,
    read_xenium,
    xenium_he_files,
    xenium_input_files,
)
from histoxmodal.io.spatial import xenium_transcripts as xt
from histoxmodal.testing import make_synthetic_xenium

GENE_CATEGORIES = {"predesigned_gene", "custom_gene"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_synthetic_xenium(tmp_path_factory.mktemp("xenium") / "run1", seed=1)


@pytest.fixture(scope="module")
def bundle_xoa1(tmp_path_factory):
    """The XOA 1 layout: no codeword_category (controls by name, BLANK_), names as bytes."""
    return make_synthetic_xenium(
        tmp_path_factory.mktemp("xenium1") / "run_v1",
        categories=False,
        feature_name_bytes=True,
        seed=2,
    )


def direct_counts(transcripts, bin_um: float, min_qv: float):
    """The pooling, recomputed with pandas on the whole table: (gene counts per bin, control
    counts per bin and category, low-qv counts per bin)."""
    t = pd.read_parquet(transcripts)
    t["feature_name"] = [f.decode() if isinstance(f, bytes) else f for f in t["feature_name"]]
    t["col"] = np.floor(t["x_location"].astype(np.float64) / bin_um).astype(int)
    t["row"] = np.floor(t["y_location"].astype(np.float64) / bin_um).astype(int)
    if "codeword_category" in t:
        t["category"] = t["codeword_category"].where(
            ~t["codeword_category"].isin(GENE_CATEGORIES), "gene"
        )
    else:
        t["category"] = [xt.control_class(f) or "gene" for f in t["feature_name"]]
    good = t["qv"] >= min_qv
    genes = t[good & (t["category"] == "gene")].groupby(["col", "row", "feature_name"]).size()
    ctrl = t[good & (t["category"] != "gene")].groupby(["col", "row", "category"]).size()
    low = t[~good].groupby(["col", "row"]).size()
    return genes, ctrl, low, t


def check_against_direct(a, transcripts, bin_um, min_qv):
    genes, ctrl, low, t = direct_counts(transcripts, bin_um, min_qv)
    X = a.X.toarray()
    got = pd.DataFrame(X, columns=a.var_names)
    got["col"], got["row"] = a.obs["array_col"].to_numpy(), a.obs["array_row"].to_numpy()
    got = got.melt(["col", "row"], var_name="feature_name", value_name="n")
    got = got[got["n"] > 0].set_index(["col", "row", "feature_name"])["n"].sort_index()
    pd.testing.assert_series_equal(
        got.astype(np.int64), genes.sort_index().astype(np.int64), check_names=False
    )
    # the spots: every bin with a transcript of qv >= min_qv, centred in its square
    kept_bins = set(map(tuple, t.loc[t["qv"] >= min_qv, ["col", "row"]].to_numpy()))
    bins = list(zip(a.obs["array_col"], a.obs["array_row"], strict=True))
    assert set(bins) == kept_bins and len(bins) == len(kept_bins)
    np.testing.assert_allclose(a.obs["x_um"], (a.obs["array_col"] + 0.5) * bin_um)
    np.testing.assert_allclose(a.obs["y_um"], (a.obs["array_row"] + 0.5) * bin_um)
    # QC columns: low quality and every control category, per spot
    idx = pd.MultiIndex.from_arrays([a.obs["array_col"], a.obs["array_row"]])
    np.testing.assert_array_equal(a.obs["n_low_qv"], low.reindex(idx, fill_value=0).to_numpy())
    cats = sorted(ctrl.index.get_level_values(2).unique())
    for cat in cats:
        want = ctrl.xs(cat, level=2).reindex(idx, fill_value=0).to_numpy()
        np.testing.assert_array_equal(a.obs[f"n_{cat}"], want, err_msg=cat)
    np.testing.assert_array_equal(
        a.obs["n_controls"], ctrl.groupby(level=[0, 1]).sum().reindex(idx, fill_value=0)
    )
    assert a.obsm["control_counts"].to_numpy().sum() == ctrl.sum()
    return t


def test_pooled_counts_equal_a_direct_count(bundle, monkeypatch):
    # small batches, and folding into the sparse total after every few of them
    monkeypatch.setattr(xt, "FOLD_MIN_TRIPLES", 500)
    a = read_xenium(bundle.folder, source="transcripts", batch_rows=3000)
    t = check_against_direct(a, bundle.transcripts, 55.0, 20.0)
    meta = a.uns["spatial"][bundle.folder.name]["metadata"]
    assert meta["n_transcripts"] == len(t) == bundle.n_transcripts
    assert meta["n_low_qv_dropped"] == int((t["qv"] < 20).sum()) > 0
    assert meta["n_gene_transcripts"] == a.X.sum()
    assert meta["pseudo_spot_um"] == 55.0 and meta["min_qv"] == 20.0
    assert (
        meta["source"] == "transcripts" and meta["control_category_source"] == "codeword_category"
    )
    # transcripts at exactly qv 20 are kept
    assert ((t["qv"] == 20) & t["feature_name"].isin(bundle.genes)).any()
    assert a.X.dtype == np.int32 and a.shape[1] == len(bundle.genes)
    # the result does not depend on the batching
    pool = pool_transcripts(bundle.transcripts, bin_um=55.0, batch_rows=3000)
    assert pool.stats["n_batches"] >= -(-bundle.n_transcripts // 3000)  # per row group
    assert pool.stats["n_folds"] > 1
    monkeypatch.setattr(xt, "FOLD_MIN_TRIPLES", 1 << 22)
    whole = pool_transcripts(bundle.transcripts, bin_um=55.0, batch_rows=1 << 20)
    import pyarrow.parquet as pq

    n_groups = pq.ParquetFile(bundle.transcripts).num_row_groups  # batches stop at row groups
    assert whole.stats["n_batches"] == n_groups > 1 and whole.stats["n_folds"] == 1
    assert whole.features == pool.features and (whole.counts != pool.counts).nnz == 0
    np.testing.assert_array_equal(whole.grid, pool.grid)


@pytest.mark.parametrize(("bin_um", "min_qv"), [(20.0, 20.0), (100.0, 0.0), (55.0, 35.0)])
def test_other_sizes_and_thresholds(bundle, bin_um, min_qv):
    a = read_xenium(bundle.folder, source="transcripts", pseudo_spot_um=bin_um, min_qv=min_qv)
    check_against_direct(a, bundle.transcripts, bin_um, min_qv)
    assert a.uns["spatial"][bundle.folder.name]["metadata"]["pseudo_spot_um"] == bin_um


def test_controls_left_out_and_counted_by_category(bundle):
    a = read_xenium(bundle.folder, source="transcripts")
    assert set(a.var_names) == set(bundle.genes)
    assert not any(v.startswith(tuple(xt.CONTROL_PREFIXES)) for v in a.var_names)
    assert set(a.obsm["control_counts"].columns) == set(bundle.controls)
    meta = a.uns["spatial"][bundle.folder.name]["metadata"]
    by_cat = meta["control_transcripts_by_category"]
    assert (
        set(by_cat)
        == set(bundle.controls.values())
        == {
            "negative_control_probe",
            "negative_control_codeword",
            "unassigned_codeword",
            "deprecated_codeword",
            "genomic_control_probe",
        }
    )
    for cat, n in by_cat.items():
        assert a.obs[f"n_{cat}"].sum() == n > 0
    assert meta["n_control_transcripts"] == sum(by_cat.values()) == a.obs["n_controls"].sum()
    # cells per pseudo-spot, from the cell table, counted another way
    cells = pd.read_parquet(bundle.cells)
    ij = np.floor(cells[["x_centroid", "y_centroid"]].to_numpy() / 55).astype(int)
    bins = a.obs[["array_col", "array_row"]].to_numpy()
    for (c, r), n in zip(bins, a.obs["n_cells"], strict=True):
        assert n == ((ij[:, 0] == c) & (ij[:, 1] == r)).sum()


def test_xoa1_layout_controls_by_name_and_bytes(bundle_xoa1):
    import pyarrow.parquet as pq

    schema = pq.read_schema(bundle_xoa1.transcripts)
    assert "codeword_category" not in schema.names
    assert str(schema.field("feature_name").type) == "binary"
    a = read_xenium(bundle_xoa1.folder, source="transcripts")
    check_against_direct(a, bundle_xoa1.transcripts, 55.0, 20.0)
    meta = a.uns["spatial"][bundle_xoa1.folder.name]["metadata"]
    assert meta["control_category_source"] == "feature_name prefixes"
    assert set(meta["control_transcripts_by_category"]) == {
        "negative_control_probe",
        "negative_control_codeword",
        "blank_codeword",
    }
    assert not any(v.startswith("BLANK_") for v in a.var_names)


def test_the_bundle_reads_with_pyarrow_and_pandas(bundle):
    import pyarrow.parquet as pq
    import tifffile

    pf = pq.ParquetFile(bundle.transcripts)
    assert pf.metadata.num_rows == bundle.n_transcripts and pf.num_row_groups > 1
    schema = pf.schema_arrow
    assert schema.names == [
        "transcript_id",
        "cell_id",
        "overlaps_nucleus",
        "feature_name",
        "x_location",
        "y_location",
        "z_location",
        "qv",
        "fov_name",
        "nucleus_distance",
        "codeword_index",
        "codeword_category",
        "is_gene",
    ]
    assert {str(schema.field(c).type) for c in ("x_location", "y_location", "qv")} == {"float"}
    t = pd.read_parquet(bundle.transcripts)
    assert (t["is_gene"] == t["codeword_category"].isin(GENE_CATEGORIES)).all()
    assert t["cell_id"].str.fullmatch(r"[a-p]{8}-1|UNASSIGNED").all()
    cells_pq, cells_csv = pd.read_parquet(bundle.cells), pd.read_csv(bundle.cells_csv)
    pd.testing.assert_frame_equal(cells_pq, cells_csv, check_dtype=False)
    with tifffile.TiffFile(bundle.image) as tf:
        assert tf.is_ome and tf.pages[0].shape[2] == 3
        assert 'PhysicalSizeX="0.5"' in tf.ome_metadata


def test_keypoints_recover_the_affine_within_1um(bundle):
    from skimage.transform import AffineTransform

    aln = read_he_alignment(bundle.keypoints_csv)
    assert aln.kind == "keypoints" and aln.n_keypoints == 12 and aln.keypoint_units == "um"
    # every pixel of the image lands within 1 µm of where the true affine puts it
    h, w = 1100, 1400
    grid = np.stack(np.meshgrid(np.linspace(0, w, 15), np.linspace(0, h, 12)), -1).reshape(-1, 2)
    mapped = grid @ aln.image_to_um[:2, :2].T + aln.image_to_um[:2, 2]
    truth = grid @ bundle.image_to_um[:2, :2].T + bundle.image_to_um[:2, 2]
    assert np.linalg.norm(mapped - truth, axis=1).max() < 1.0
    assert aln.mpp == pytest.approx(bundle.he_mpp, rel=2e-3)
    # the fit and its residual, against scikit-image's estimate on the same pairs
    kp = pd.read_csv(bundle.keypoints_csv)
    src, dst = kp[["alignmentX", "alignmentY"]].to_numpy(), kp[["fixedX", "fixedY"]].to_numpy()
    sk = AffineTransform.from_estimate(src, dst)  # normalised DLT: equal to about 1 nm here
    np.testing.assert_allclose(mapped, sk(grid), atol=1e-3)
    rms = np.sqrt(np.mean(np.sum((sk(src) - dst) ** 2, axis=1)))
    assert aln.rms_um == pytest.approx(rms, rel=1e-4) and 0 < aln.rms_um < 1.0
    matrix, residuals = fit_affine(src, dst)
    np.testing.assert_allclose(matrix, aln.image_to_um)
    assert residuals.max() == pytest.approx(aln.max_um)
    # keypoints given in morphology pixels instead of µm
    px = kp.assign(fixedX=kp.fixedX / 0.2125, fixedY=kp.fixedY / 0.2125)
    f = bundle.folder.parent / "kp_px.csv"
    px.to_csv(f, index=False)
    np.testing.assert_allclose(
        read_he_alignment(f, keypoint_units="px").image_to_um, aln.image_to_um, atol=1e-6
    )


def test_the_matrix_file_is_10x_convention(bundle):
    aln = read_he_alignment(bundle.matrix_csv)
    assert aln.kind == "matrix" and aln.rms_um is None
    np.testing.assert_allclose(aln.image_to_um, bundle.image_to_um, rtol=1e-12, atol=1e-9)
    # the file maps H&E pixels to morphology pixels (0.2125 µm)
    m = np.loadtxt(bundle.matrix_csv, delimiter=",")
    np.testing.assert_allclose(aln.image_to_morphology, m, rtol=1e-12)
    corner = m @ [0.0, 0.0, 1.0]
    np.testing.assert_allclose(corner[:2] * 0.2125, bundle.image_to_um[:2, 2])


def test_matrix_and_keypoints_give_the_same_pixels(bundle):
    by_matrix = read_xenium(
        bundle.folder, source="transcripts", image=bundle.image, alignment=bundle.matrix_csv
    )
    by_keypoints = read_xenium(
        bundle.folder, source="transcripts", image=bundle.image, alignment=bundle.keypoints_csv
    )
    truth = bundle.um_to_image(by_matrix.obs[["x_um", "y_um"]].to_numpy())
    np.testing.assert_allclose(by_matrix.obsm["spatial"], truth, atol=1e-6)
    # within 1 µm (2 px at 0.5 µm/px) of each other
    d = np.linalg.norm(by_matrix.obsm["spatial"] - by_keypoints.obsm["spatial"], axis=1)
    assert d.max() * bundle.he_mpp < 1.0
    for a, kind in ((by_matrix, "matrix"), (by_keypoints, "keypoints")):
        meta = a.uns["spatial"][bundle.folder.name]["metadata"]
        assert meta["alignment_kind"] == kind and meta["mpp"] == pytest.approx(0.5, rel=2e-3)
        assert meta["image_path"] == str(bundle.image)
        scal = a.uns["spatial"][bundle.folder.name]["scalefactors"]
        assert scal["spot_diameter_fullres"] == pytest.approx(55 / meta["mpp"])
    meta = by_keypoints.uns["spatial"][bundle.folder.name]["metadata"]
    assert meta["alignment_rms_um"] < 1.0 and meta["alignment_n_keypoints"] == 12
    assert "keypoints (12 pairs" in meta["mpp_source"]
    # the H&E is really registered: each cell centroid, mapped by the fitted keypoints, falls on
    # a nucleus (purple) of the warped picture; stroma (pink) is redder than blue
    import tifffile

    he = tifffile.imread(bundle.image).astype(int)
    cells = pd.read_parquet(bundle.cells)[["x_centroid", "y_centroid"]].to_numpy()
    aln = read_he_alignment(bundle.keypoints_csv)
    px = np.rint(aln.um_to_image(cells)).astype(int)
    rgb = he[px[:, 1], px[:, 0]]
    assert (rgb[:, 2] > rgb[:, 0]).mean() > 0.97  # nuclei (95, 60, 150)
    shifted = np.rint(aln.um_to_image(cells + np.array([0, 8.0]))).astype(int)  # 8 µm off: stroma
    rgb = he[shifted[:, 1], shifted[:, 0]]
    assert (rgb[:, 2] > rgb[:, 0]).mean() < 0.3


def test_a_keypoint_fit_above_tolerance_is_refused(bundle, tmp_path):
    kp = pd.read_csv(bundle.keypoints_csv)
    kp.loc[4, "alignmentX"] += 60  # one landmark 60 px (30 µm) off
    bad = tmp_path / "bad_keypoints.csv"
    kp.to_csv(bad, index=False)
    msg = rf"^{re.escape(str(bad))}: the affine fitted to 12 keypoints leaves an RMS residual of"
    with pytest.raises(SpatialFormatError, match=msg) as e:
        read_he_alignment(bad)
    rms = float(re.search(r"residual of ([0-9.]+) µm", str(e.value)).group(1))
    assert rms > 5 and "row 5" in str(e.value) and "max_residual_um=5" in str(e.value)
    with pytest.raises(SpatialFormatError, match="RMS residual"):
        read_xenium(bundle.folder, source="transcripts", image=bundle.image, alignment=bad)
    # a looser tolerance accepts it and records the residual
    a = read_he_alignment(bad, max_residual_um=50)
    assert a.rms_um == pytest.approx(rms, abs=0.01)
    # too few or collinear keypoints, and missing columns, are refused by name
    kp.iloc[:2].to_csv(bad, index=False)
    with pytest.raises(SpatialFormatError, match="at least 3 points"):
        read_he_alignment(bad)
    line = pd.DataFrame({c: [0.0, 1.0, 2.0, 3.0] for c in xt_cols()})
    line.to_csv(bad, index=False)
    with pytest.raises(SpatialFormatError, match="not all on one line"):
        read_he_alignment(bad)
    kp.drop(columns="alignmentY").to_csv(bad, index=False)
    with pytest.raises(SpatialFormatError, match="missing alignmentY"):
        read_he_alignment(bad)
    pd.read_csv(bundle.keypoints_csv).iloc[:3].to_csv(bad, index=False)
    with pytest.warns(UserWarning, match="3 keypoints fit any affine exactly"):
        read_he_alignment(bad)
    bad.write_text("1,0\n0,1\n")
    with pytest.raises(SpatialFormatError, match="must be 3 x 3"):
        read_he_alignment(bad)
    bad.write_text("0,0,0\n0,0,0\n0,0,1\n")
    with pytest.raises(SpatialFormatError, match="singular"):
        read_he_alignment(bad)


def xt_cols():
    from histoxmodal.io.spatial.alignment import KEYPOINT_COLUMNS

    return KEYPOINT_COLUMNS


def test_spatialdata_io_reads_the_matrix_the_same_way(bundle):
    sdio = pytest.importorskip("spatialdata_io")
    from spatialdata.transformations import get_transformation

    img = sdio.xenium_aligned_image(bundle.image, bundle.matrix_csv)
    t = get_transformation(img, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(t, read_he_alignment(bundle.matrix_csv).image_to_morphology)


def test_folder_detection_inputs_and_errors(bundle, tmp_path):
    folder = bundle.folder
    assert detect_format(folder) == "xenium"
    a = read_spatial(folder, source="transcripts")
    assert a.n_obs > 0 and a.obsm["spatial"][0] == pytest.approx(
        a.obs[["x_um", "y_um"]].iloc[0] / 0.2125
    )
    with pytest.raises(MissingSpatialFileError, match="read it with source='transcripts'"):
        read_spatial(folder)  # cells by default; this bundle has no cell-feature matrix
    assert xenium_input_files(folder) is None
    assert xenium_input_files(folder, "transcripts") == [
        folder / "transcripts.parquet",
        bundle.cells,
    ]
    assert xenium_he_files(folder) == (bundle.image, bundle.matrix_csv)
    with pytest.raises(SpatialFormatError, match="source='spots'"):
        read_xenium(folder, source="spots")
    with pytest.raises(SpatialFormatError, match="min_qv=-1"):
        read_xenium(folder, source="transcripts", min_qv=-1)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(bundle.cells, empty)
    with pytest.raises(MissingSpatialFileError, match="no transcripts.parquet"):
        read_xenium(empty, source="transcripts")
    pd.DataFrame({"feature_name": ["A"], "x_location": [1.0]}).to_parquet(
        empty / "transcripts.parquet"
    )
    with pytest.raises(SpatialFormatError, match=r"missing column\(s\) y_location, qv"):
        read_xenium(empty, source="transcripts")
    (empty / "transcripts.parquet").write_text("not parquet")
    with pytest.raises(SpatialFormatError, match="not a readable Parquet file"):
        read_xenium(empty, source="transcripts")
    # two H&E images in one folder: ambiguous, named
    two = tmp_path / "two"
    shutil.copytree(folder, two)
    shutil.copy(bundle.image, two / "other_he_image.ome.tif")
    with pytest.raises(SpatialFormatError, match="several H&E image files"):
        xenium_he_files(two)


def test_keypoints_in_the_other_units_are_flagged(bundle, tmp_path):
    kp = pd.read_csv(bundle.keypoints_csv)
    px = tmp_path / "kp_px.csv"
    kp.assign(fixedX=kp.fixedX / 0.2125, fixedY=kp.fixedY / 0.2125).to_csv(px, index=False)
    # pixels read as µm squeeze the spots into a corner, which the image check notes too
    with (
        pytest.warns(UserWarning, match=r"look like morphology pixels: pass keypoint_units='px'"),
        pytest.warns(UserWarning, match="all spots lie within the top-left"),
    ):
        read_xenium(bundle.folder, source="transcripts", image=bundle.image, alignment=px)
    # µm read as pixels put the spots 4.7x too far out: said before the image refuses them
    with (
        pytest.warns(UserWarning, match=r"look like µm: pass keypoint_units='um'"),
        pytest.raises(SpatialFormatError, match="exceed the image"),
    ):
        read_xenium(
            bundle.folder,
            source="transcripts",
            image=bundle.image,
            alignment=bundle.keypoints_csv,
            keypoint_units="px",
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = read_xenium(
            bundle.folder, source="transcripts", image=bundle.image, alignment=px,
            keypoint_units="px",
        )  # fmt: skip
    assert a.uns["spatial"][bundle.folder.name]["metadata"]["mpp"] == pytest.approx(0.5, rel=2e-3)
