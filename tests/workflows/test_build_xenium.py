"""``build --recipe xenium-transcripts``: Xenium runs pooled from transcripts, paired with the H&E
their alignment (matrix or keypoints) places them on."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import histoxmodal as hx
from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial import read_xenium
from histoxmodal.testing import make_synthetic_xenium
from histoxmodal.workflows.build import load_paired


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of two runs: run_a with 10x's matrix, run_b with Xenium Explorer's keypoints
    only (its matrix file removed)."""
    root = tmp_path_factory.mktemp("xenium_runs")
    a = make_synthetic_xenium(root / "run_a", name="run_a", seed=3)
    b = make_synthetic_xenium(root / "run_b", name="run_b", rotation_deg=-7.0, seed=4)
    b.matrix_csv.unlink()
    return root, a, b


def test_build_pairs_each_spot_with_its_tissue(runs, tmp_path):
    root, a, b = runs
    out = tmp_path / "paired"
    m = hx.build("xenium-transcripts", out, src=root)
    assert m["status"] == "complete" and set(m["samples"]) == {"run_a", "run_b"}
    assert m["params"]["reader"]["run_a"] == {
        "source": "transcripts",
        "pseudo_spot_um": 55,
        "min_qv": 20,
        "max_residual_um": 5,
    }
    assert str(a.matrix_csv) in m["inputs"]["run_a"] and str(a.image) in m["inputs"]["run_a"]
    assert str(b.keypoints_csv) in m["inputs"]["run_b"]
    assert str(a.transcripts) in m["inputs"]["run_a"]
    adata, patches = load_paired(out)
    for run in (a, b):
        name = run.folder.name
        rows = np.flatnonzero(adata.obs[keys.OBS_SAMPLE] == name)
        direct = read_xenium(
            run.folder, source="transcripts", image=run.image, alignment=xenium_aln(run)
        )
        kept = direct[np.asarray(direct.X.sum(axis=1)).ravel() >= 20]
        assert len(rows) == kept.n_obs == m["samples"][name]["n_spots"]
        np.testing.assert_array_equal(adata[rows].X.toarray(), kept[:, adata.var_names].X.toarray())
        np.testing.assert_allclose(adata.obsm["spatial"][rows], kept.obsm["spatial"])
        meta = adata.uns["spatial"][name]["metadata"]
        assert meta["alignment_kind"] == ("matrix" if run is a else "keypoints")
        # the spot's centre in the H&E is where the true affine puts its µm centre
        truth = run.um_to_image(adata.obs.iloc[rows][["x_um", "y_um"]].to_numpy())
        err_um = np.linalg.norm(adata.obsm["spatial"][rows] - truth, axis=1) * run.he_mpp
        assert err_um.max() < 1.0
        # patch i is the H&E around spot i (112 µm at 0.5 µm/px = 224 px, no resampling)
        import tifffile

        he = tifffile.imread(run.image)
        checked = 0
        for i in rows[:: max(1, len(rows) // 6)]:
            cx, cy = adata.obsm["spatial"][i]
            x0, y0 = round(cx - 112), round(cy - 112)
            if x0 < 0 or y0 < 0 or x0 + 224 > he.shape[1] or y0 + 224 > he.shape[0]:
                continue
            crop = he[y0 : y0 + 224, x0 : x0 + 224].astype(int)
            assert np.abs(patches[i].astype(int) - crop).mean() < 3.0, (name, i)
            other = he[y0 + 40 : y0 + 264, x0 : x0 + 224].astype(int)  # 20 µm lower
            if other.shape == crop.shape:
                assert (
                    np.abs(patches[i].astype(int) - other).mean()
                    > 3 * np.abs(patches[i].astype(int) - crop).mean()
                )
            checked += 1
        assert checked >= 4
    # the QC columns travel into the dataset
    assert {"n_low_qv", "n_controls", "n_negative_control_probe"} <= set(adata.obs.columns)


def xenium_aln(run):
    return run.matrix_csv if run.matrix_csv.exists() else run.keypoints_csv


def test_reader_options_are_part_of_the_identity(runs, tmp_path):
    _, a, _ = runs
    out = tmp_path / "paired"
    hx.build("xenium-transcripts", out, src=a.folder)
    assert hx.build("xenium-transcripts", out, src=a.folder)["up_to_date"]
    with pytest.raises(ConfigError, match="other inputs or parameters"):
        hx.build("xenium-transcripts", out, src=a.folder, reader={"min_qv": 30})
    m = hx.build("xenium-transcripts", out, src=a.folder, reader={"min_qv": 30}, overwrite=True)
    assert m["params"]["reader"]["run_a"]["min_qv"] == 30
    adata, _ = load_paired(out)
    assert adata.uns["spatial"]["run_a"]["metadata"]["min_qv"] == 30.0
    with pytest.raises(ConfigError, match="'min_qvv': did you mean 'min_qv'"):
        hx.build("xenium-transcripts", tmp_path / "x", src=a.folder, reader={"min_qvv": 30})


def test_a_bad_keypoint_file_skips_its_sample_with_the_reason(runs, tmp_path):
    _, a, b = runs
    bad = tmp_path / "run_b"
    shutil.copytree(b.folder, bad)
    kp = pd.read_csv(bad / b.keypoints_csv.name)
    kp.loc[2, "alignmentY"] -= 80
    kp.to_csv(bad / b.keypoints_csv.name, index=False)
    src = tmp_path / "runs"
    src.mkdir()
    shutil.copytree(a.folder, src / "run_a")
    shutil.move(bad, src / "run_b")
    m = hx.build("xenium-transcripts", tmp_path / "paired", src=src)
    assert set(m["samples"]) == {"run_a"}
    assert "RMS residual" in m["skipped"]["run_b"] and "keypoints.csv" in m["skipped"]["run_b"]
    # an explicit --alignment/--image wins over the folder's own files
    m = hx.build(
        "xenium-transcripts",
        tmp_path / "paired_b",
        src=src / "run_b",
        image=str(b.image),
        alignment=str(b.keypoints_csv),
    )
    assert set(m["samples"]) == {"run_b"}


def test_a_run_without_image_is_listed_as_skipped(tmp_path):
    x = make_synthetic_xenium(tmp_path / "bare", seed=5)
    x.image.unlink()
    with pytest.raises(ConfigError):
        hx.build("xenium-transcripts", tmp_path / "out", src=x.folder)
    from histoxmodal.data.recipes import find_samples, load_recipe

    (ref,) = find_samples(load_recipe("xenium-transcripts"), [x.folder])
    assert "no registered image" in ref.skip_reason and "_keypoints.csv" in ref.skip_reason
