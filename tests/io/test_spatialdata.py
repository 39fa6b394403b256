"""SpatialData zarr stores: ``export --to spatialdata`` writes one with spatialdata's own writer,
``read_spatial`` reads it back into the package's layout unchanged."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

needs_spatialdata = pytest.mark.skipif(
    importlib.util.find_spec("spatialdata") is None, reason="the [spatialdata] extra"
)


@pytest.fixture(scope="module")
def c3_store(data_dir, tmp_path_factory):
    from histoxmodal.io.spatial import read_her2st
    from histoxmodal.workflows.export import write_spatialdata

    a = read_her2st(data_dir / "her2st", "C3")
    out = write_spatialdata(a, tmp_path_factory.mktemp("sdata") / "C3.zarr")
    return a, out


@needs_spatialdata
def test_round_trip_of_a_her2st_section(c3_store):
    from histoxmodal.io.spatial import detect_format, read_spatial

    a, out = c3_store
    assert detect_format(out) == "spatialdata"
    b = read_spatial(out)
    assert b.shape == (180, 15821) == a.shape
    assert list(b.obs_names) == list(a.obs_names) and b.obs_names[0] == "C3:10x10"
    assert list(b.var_names) == list(a.var_names)
    assert (b.X != a.X).nnz == 0 and b.X.dtype == a.X.dtype
    np.testing.assert_array_equal(b.obsm["spatial"], a.obsm["spatial"])
    for col in ("sample", "patient", "batch", "cluster", "in_tissue", "array_row"):
        assert list(b.obs[col]) == list(a.obs[col]), col
    sa, sb = a.uns["spatial"]["C3"], b.uns["spatial"]["C3"]
    for k, v in sa["scalefactors"].items():
        assert sb["scalefactors"][k] == pytest.approx(v, rel=1e-12), k
    np.testing.assert_array_equal(sb["images"]["hires"], sa["images"]["hires"])
    np.testing.assert_array_equal(sb["images"]["lowres"], sa["images"]["lowres"])
    assert sb["metadata"]["mpp"] == sa["metadata"]["mpp"]
    assert sb["metadata"]["format"] == "spatialdata"


@needs_spatialdata
def test_the_store_opens_with_spatialdata(c3_store):
    import spatialdata as sd
    from PIL import Image
    from spatialdata.transformations import get_transformation

    a, out = c3_store
    s = sd.read_zarr(out)
    assert set(s.images) == {"C3_full_image", "C3_hires_image", "C3_lowres_image"}
    assert set(s.shapes) == {"C3_spots"} and set(s.tables) == {"table"}
    full = s.images["C3_full_image"]
    levels = sorted(full.children)
    assert len(levels) == 4  # 9936 px -> 4968 -> 2484 -> 1242
    lv0 = full[levels[0]]["image"]
    assert lv0.shape == (3, 9936, 9270) and lv0.dtype == np.uint8
    # the full-resolution pixels are the JPEG's, at the same place
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(a.uns["spatial"]["C3"]["metadata"]["image_path"]) as im:
        ref = np.asarray(im.convert("RGB").crop((4000, 5000, 4100, 5050)))
    got = np.moveaxis(np.asarray(lv0[:, 5000:5050, 4000:4100]), 0, -1)
    np.testing.assert_array_equal(got, ref)
    hires = get_transformation(s.images["C3_hires_image"], to_coordinate_system="global")
    scale = hires.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))[0, 0]
    assert scale == pytest.approx(1 / a.uns["spatial"]["C3"]["scalefactors"]["tissue_hires_scalef"])
    spots = s.shapes["C3_spots"]
    np.testing.assert_allclose(
        np.column_stack([spots.geometry.x, spots.geometry.y]), a.obsm["spatial"]
    )
    d = a.uns["spatial"]["C3"]["scalefactors"]["spot_diameter_fullres"]
    np.testing.assert_allclose(spots["radius"], d / 2)
    t = s.tables["table"]
    attrs = t.uns["spatialdata_attrs"]
    assert attrs["region"] == "C3_spots" and attrs["instance_key"] == "instance_id"
    assert list(t.obs["instance_id"]) == list(range(180)) and set(t.obs["region"]) == {"C3_spots"}


@needs_spatialdata
def test_paired_dataset_export_from_the_cli(her2st_paired, tmp_path):
    from histoxmodal.cli.main import main
    from histoxmodal.data.store import load_paired
    from histoxmodal.io.spatial import read_spatial

    data, _ = her2st_paired
    out = tmp_path / "her2st.zarr"
    assert main(["export", "--data", str(data), "--to", "spatialdata", "--out", str(out),
                 "--no-full-res"]) == 0  # fmt: skip
    # a second export refuses to replace it without --overwrite
    assert main(["export", "--data", str(data), "--to", "spatialdata", "--out", str(out)]) != 0
    adata, _ = load_paired(data)
    with pytest.raises(ValueError, match="sample= one of B4_spots, C2_spots"):
        read_spatial(out)
    b = read_spatial(out, sample="C4")
    rows = np.flatnonzero(adata.obs["sample"] == "C4")
    assert list(b.obs_names) == list(adata.obs_names[rows])
    assert list(b.var_names) == list(adata.var_names)
    assert abs(b.X - adata.X[rows]).sum() == 0
    np.testing.assert_array_equal(b.obsm["spatial"], adata.obsm["spatial"][rows])


@needs_spatialdata
def test_not_a_store(tmp_path):
    from histoxmodal.io.spatial import SpatialFormatError, read_spatialdata

    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(SpatialFormatError, match="not a SpatialData zarr store"):
        read_spatialdata(tmp_path / "x.zarr")


def test_missing_extra_is_one_clear_error(tmp_path, monkeypatch):
    import histoxmodal.deps
    from histoxmodal.deps import MissingDependencyError
    from histoxmodal.io.spatial import read_spatialdata

    real = histoxmodal.deps.importlib.util.find_spec
    monkeypatch.setattr(
        histoxmodal.deps.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "spatialdata" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"pip install 'histoxmodal\[spatialdata\]'"):
        read_spatialdata(tmp_path)


@needs_spatialdata
def test_each_sample_has_its_own_coordinate_system_and_global_lays_them_side_by_side(
    her2st_paired, tmp_path
):
    import spatialdata as sd

    from histoxmodal.data.store import load_paired
    from histoxmodal.io.spatial import read_spatial
    from histoxmodal.workflows.export import export_spatialdata

    data, _ = her2st_paired
    out = tmp_path / "her2st.zarr"
    export_spatialdata(data, out, full_res=False)
    s = sd.read_zarr(out)
    s.validate_table_in_spatialdata(s.tables["table"])
    samples = ["B4", "C2", "C3", "C4", "C5"]
    assert set(s.coordinate_systems) == {"global", *samples}
    boxes = {}
    for name in samples:
        own = s.filter_by_coordinate_system(name)
        assert set(own.images) == {f"{name}_hires_image", f"{name}_lowres_image"}
        assert set(own.shapes) == {f"{name}_spots"}
        spots = sd.get_extent(own.shapes[f"{name}_spots"], coordinate_system=name)
        image = sd.get_extent(own.images[f"{name}_hires_image"], coordinate_system=name)
        # in its own system every spot lies on its own H&E
        assert spots["x"][0] >= image["x"][0] and spots["x"][1] <= image["x"][1]
        assert spots["y"][0] >= image["y"][0] and spots["y"][1] <= image["y"][1]
        boxes[name] = sd.get_extent(s.images[f"{name}_hires_image"], coordinate_system="global")
    # in global no two sections overlap (they were all stacked at the origin)
    xs = sorted(boxes.values(), key=lambda b: b["x"][0])
    for left, right in itertools.pairwise(xs):
        assert left["x"][1] < right["x"][0]
    # read back, each sample keeps its own image and its own coordinates
    adata, _ = load_paired(data)
    for name in ("B4", "C4"):
        b = read_spatial(out, sample=name)
        rows = np.flatnonzero(adata.obs["sample"] == name)
        np.testing.assert_allclose(b.obsm["spatial"], adata.obsm["spatial"][rows])
        np.testing.assert_array_equal(
            b.uns["spatial"][name]["images"]["hires"], adata.uns["spatial"][name]["images"]["hires"]
        )
