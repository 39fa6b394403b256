"""``build --recipe visium_hd``: Visium HD runs pooled (or read as bins), each spot paired with the
full-resolution H&E around it, from Python and from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import histoxmodal as hx
from histoxmodal import keys
from histoxmodal.cli.main import main
from histoxmodal.io.spatial import read_visium_hd
from histoxmodal.testing import make_synthetic_visium_hd
from histoxmodal.workflows.build import load_paired


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hd_runs")
    a = make_synthetic_visium_hd(root / "run_a", name="run_a", seed=1)
    b = make_synthetic_visium_hd(root / "run_b", name="run_b", rotation_deg=-5.0, seed=2)
    return root, a, b


def test_build_pairs_each_pooled_spot_with_its_tissue(runs, tmp_path):
    import tifffile

    root, a, b = runs
    out = tmp_path / "paired"
    m = hx.build("visium_hd", out, src=root)
    assert m["status"] == "complete" and set(m["samples"]) == {"run_a", "run_b"}
    assert m["params"]["reader"]["run_a"] == {"bin_um": 2, "pool_um": 55, "pool_shape": "square"}
    assert str(a.image) in m["inputs"]["run_a"]
    assert str(a.bin_dir(2) / "filtered_feature_bc_matrix.h5") in m["inputs"]["run_a"]
    assert not any("square_008um" in f for f in m["inputs"]["run_a"])
    adata, patches = load_paired(out)
    for run in (a, b):
        name = run.folder.name
        rows = np.flatnonzero(adata.obs[keys.OBS_SAMPLE] == name)
        direct = read_visium_hd(run.folder, pool_um=55, image=run.image)
        kept = direct[np.asarray(direct.X.sum(axis=1)).ravel() >= 20]
        assert len(rows) == kept.n_obs == m["samples"][name]["n_spots"] > 10
        np.testing.assert_array_equal(adata[rows].X.toarray(), kept.X.toarray())
        np.testing.assert_allclose(adata.obsm["spatial"][rows], kept.obsm["spatial"])
        pooling = adata.uns["spatial"][name]["metadata"]["pooling"]
        assert (pooling["pool_um"], pooling["shape"], pooling["source_bin_um"]) == (55, "square", 2)
        # patch i is the H&E around spot i (112 µm at 0.5 µm/px = 224 px, no resampling)
        he = tifffile.imread(run.image)
        checked = 0
        for i in rows:
            cx, cy = adata.obsm["spatial"][i]
            x0, y0 = round(cx - 112), round(cy - 112)
            if x0 < 0 or y0 < 0 or x0 + 224 > he.shape[1] or y0 + 264 > he.shape[0]:
                continue
            crop = he[y0 : y0 + 224, x0 : x0 + 224].astype(int)
            diff = np.abs(patches[i].astype(int) - crop).mean()
            assert diff < 3.0, (name, i, diff)
            other = he[y0 + 40 : y0 + 264, x0 : x0 + 224].astype(int)  # 20 µm lower
            assert np.abs(patches[i].astype(int) - other).mean() > 3 * diff
            checked += 1
        assert checked >= 3
    assert {"n_bins", "tissue_fraction", "x_um", "y_um"} <= set(adata.obs.columns)


def test_cli_bin_size_pooling_and_bad_values(runs, tmp_path, capsys):
    _, a, _ = runs
    base = ["build", "--recipe", "visium_hd", "--src", str(a.folder), "--patch-px", "16"]
    # --bin-um alone: the 16 µm bins as they are
    out = tmp_path / "bins16"
    assert main([*base, "--bin-um", "16", "--patch-um", "32", "--out", str(out)]) == 0
    r, c = np.nonzero(a.in_tissue[16])
    n = int((a.counts[16][r, c].sum(axis=1) >= 20).sum())
    assert f"built: {n} spots" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["reader"]["run_a"] == {
        "bin_um": 16.0,
        "pool_um": None,
        "pool_shape": "square",
    }
    # 100 µm discs from the 2 µm bins
    out = tmp_path / "discs"
    argv = [*base, "--pool-um", "100", "--pool-shape", "disc", "--min-counts", "0", "--out"]
    assert main([*argv, str(out)]) == 0
    direct = read_visium_hd(a.folder, pool_um=100, pool_shape="disc")
    assert f"built: {direct.n_obs} spots" in capsys.readouterr().out
    adata, _ = load_paired(out)
    assert adata.uns["spatial"]["run_a"]["metadata"]["pooling"]["shape"] == "disc"
    # a bin size the output lacks: exit 2, one line naming the sizes it has
    assert main([*base, "--bin-um", "4", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "bin_um=4 not in this output (bins of 2, 8, 16" in err and "Traceback" not in err
    assert main([*base, "--bin-um", "8", "--pool-shape", "disc", "--out", str(tmp_path / "x")]) == 2
    assert "add --pool-um" in capsys.readouterr().err
    for bad, needle in (
        (["--pool-um", "0"], "argument --pool-um"),
        (["--pool-shape", "hex"], "--pool-shape"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*base, *bad, "--out", str(tmp_path / "x")])
        assert e.value.code == 2 and needle in capsys.readouterr().err
    vis = ["build", "--recipe", "visium", "--src", str(a.folder), "--pool-um", "55"]
    assert main([*vis, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--pool-um: Visium HD reader options" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
