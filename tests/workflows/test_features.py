"""histoxmodal features: tile features of slides and tile folders with an image encoder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ENC = "test_uni"  # a tiny ViT: 32 px tiles at 0.5 µm/px, 32-d features


def _grid(slide_path, tile_px=32, mpp=0.5):
    """The tile grid computed directly with the tiling code: (coords, geometry)."""
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.tiling.tissue import detect_tissue

    with open_slide(slide_path) as s:
        geom = TileSpec(tile_px=tile_px, target_mpp=mpp).resolve(s)
        coords, _ = tile_grid(s.dimensions, geom, detect_tissue(s))
    return coords, geom


def _tiles_other_way(slide_path, coords, size_px, mpp):
    """The tiles read one by one with read_region_at_mpp (not the batched tile reader)."""
    from histoxmodal.io.slide import open_slide

    with open_slide(slide_path) as s:
        return np.stack([s.read_region_at_mpp((int(x), int(y)), size_px, mpp) for x, y in coords])


def _encode(tower, tiles):
    """Normalize with the tower's mean/std in numpy and run it: the reference features."""
    pre = tower.preprocess
    x = (tiles.astype(np.float32) / 255.0 - np.array(pre.mean, np.float32)) / np.array(
        pre.std, np.float32
    )
    with torch.no_grad():
        return tower.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _random_tower(name=ENC, seed=0):
    from histoxmodal.encoders import create_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_encoder(name, mode="frozen")


@pytest.fixture(scope="module")
def extracted(small_slide, tmp_path_factory):
    from histoxmodal.workflows.features import extract_features

    out = tmp_path_factory.mktemp("features")
    (r,) = extract_features([small_slide.path], out, encoder=ENC, batch_size=16, workers=2)
    return out, r


def test_features_are_the_encoder_on_the_tile_grid(small_slide, extracted):
    from histoxmodal.version import __version__
    from histoxmodal.workflows.features import read_features

    out, r = extracted
    assert r.status == "ok" and r.n_tiles > 20
    feats, coords, attrs = read_features(out / "small.h5")
    grid, geom = _grid(small_slide.path)
    assert feats.dtype == np.float32 and feats.shape == (len(grid), 32)
    assert coords.dtype == np.int64 and coords.shape == (len(grid), 2)
    np.testing.assert_array_equal(coords, grid)
    ref = _encode(_random_tower(), _tiles_other_way(small_slide.path, grid, 32, 0.5))
    np.testing.assert_allclose(feats, ref, atol=2e-4, rtol=1e-4)
    assert attrs["encoder"] == ENC and attrs["weights_sha256"] == ""
    assert attrs["mpp"] == pytest.approx(0.5) and attrs["level0_mpp"] == pytest.approx(0.25)
    assert attrs["tile_px"] == 32 and attrs["tile_um"] == pytest.approx(16.0)
    assert attrs["patch_size_level0"] == geom.tile_px_level0 == 64
    assert attrs["histoxmodal_version"] == __version__ and attrs["dim"] == 32
    with h5py.File(out / "small.h5") as f:  # the coords.h5 attributes CLAM/TRIDENT read
        assert f["coords"].attrs["patch_size_level0"] == 64
        assert f["tissue_fraction"].shape == (len(grid),)
    record = json.loads((out / "small.json").read_text())
    assert record["status"] == "ok" and record["n_tiles"] == len(grid)
    assert record["input"]["size"] == Path(small_slide.path).stat().st_size


def test_weights_load_through_the_real_path_and_are_checksummed(small_slide, tmp_path):
    from safetensors.torch import save_file

    from histoxmodal.workflows.features import extract_features, read_features

    tower = _random_tower(seed=7)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tower.trunk.state_dict().items()}, str(weights))
    (r,) = extract_features([small_slide.path], tmp_path / "out", encoder=ENC, weights=weights)
    assert r.status == "ok"
    feats, coords, attrs = read_features(tmp_path / "out" / "small.h5")
    assert attrs["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    ref = _encode(tower, _tiles_other_way(small_slide.path, coords, 32, 0.5))
    np.testing.assert_allclose(feats, ref, atol=2e-4, rtol=1e-4)
    other = _encode(_random_tower(seed=0), _tiles_other_way(small_slide.path, coords[:4], 32, 0.5))
    assert not np.allclose(feats[:4], other, atol=1e-3)  # the weights were really loaded


def test_resume_skips_a_finished_slide_and_refuses_another_one(small_slide, extracted, tmp_path):
    import shutil

    from histoxmodal.workflows.features import extract_features

    out, _ = extracted
    before = (out / "small.h5").stat().st_mtime_ns
    (r,) = extract_features([small_slide.path], out, encoder=ENC)
    assert r.status == "skipped" and (out / "small.h5").stat().st_mtime_ns == before
    (r,) = extract_features([small_slide.path], out, encoder="test_phikon")
    assert r.status == "failed" and "another encoder" in r.reason and "--overwrite" in r.reason
    # the same name, another file (a copy has another mtime): refused, not skipped
    copy = tmp_path / "small.tif"
    shutil.copy(small_slide.path, copy)
    os.utime(copy, ns=(1, 1))
    (r,) = extract_features([copy], out, encoder=ENC)
    assert r.status == "failed" and "another slide" in r.reason
    assert (out / "small.h5").stat().st_mtime_ns == before
    (r,) = extract_features([copy], tmp_path / "o2", encoder=ENC)
    (r2,) = extract_features([copy], tmp_path / "o2", encoder=ENC, overwrite=True)
    assert r.status == "ok" and r2.status == "ok"


def test_bad_options_are_one_line(small_slide, tmp_path, capsys):
    from histoxmodal.cli.main import main

    base = ["features", str(small_slide.path), "--out", str(tmp_path / "o")]
    for extra, words in [
        (["--encoder", "uni3"], "unknown encoder 'uni3'"),
        (["--encoder", "test_gene_mlp"], "image encoder"),
        ([], "--encoder NAME"),
        (["--encoder", ENC, "--projection"], "--projection needs --run"),
        (["--encoder", ENC, "--weights", str(tmp_path / "none.pt")], "none.pt"),
        (["--encoder", ENC, "--precision", "fp8"], "--precision 'fp8'"),
        (["--encoder", ENC, "--shard", "2/2"], "--shard"),
    ]:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (extra, err)
    assert not (tmp_path / "o" / "small.h5").exists()


def test_cuda_is_refused_clearly_when_absent():
    from histoxmodal.errors import ConfigError
    from histoxmodal.training.embedding import resolve_device, resolve_precision

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16-mixed", torch.device("cpu")) == torch.bfloat16


def test_tile_folders_are_read_with_and_without_tiles_h5(small_slide, extracted, tmp_path):
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.workflows.features import extract_features, read_features
    from histoxmodal.workflows.tile import tile_slides

    out, _ = extracted
    ref, ref_coords, _ = read_features(out / "small.h5")
    spec = TileSpec(tile_px=32, target_mpp=0.5)
    tile_slides([small_slide.path], tmp_path / "stored", spec, save_tiles=True)
    tile_slides([small_slide.path], tmp_path / "coords_only", spec)
    assert not (tmp_path / "coords_only" / "small" / "tiles.h5").exists()
    for tiles_dir in (tmp_path / "stored" / "small", tmp_path / "coords_only"):
        dest = tmp_path / f"f_{tiles_dir.name}"
        (r,) = extract_features([tiles_dir], dest, encoder=ENC)
        assert r.status == "ok", r.reason
        feats, coords, attrs = read_features(dest / "small.h5")
        np.testing.assert_array_equal(coords, ref_coords)
        np.testing.assert_allclose(feats, ref, atol=1e-5)
        assert attrs["tile_px"] == 32 and attrs["slide"] == str(small_slide.path)


def test_anndata_format(small_slide, extracted, tmp_path):
    import anndata as ad

    from histoxmodal.workflows.features import extract_features, read_features

    ref, coords, _ = read_features(extracted[0] / "small.h5")
    (r,) = extract_features([small_slide.path], tmp_path, encoder=ENC, format="anndata")
    assert r.status == "ok" and not (tmp_path / "small.h5").exists()
    a = ad.read_h5ad(tmp_path / "small.h5ad")
    assert a.X.shape == ref.shape and a.X.dtype == np.float32
    np.testing.assert_allclose(a.X, ref, atol=1e-5)
    np.testing.assert_array_equal(a.obsm["spatial"], coords + 32)  # centres: 64 px tiles
    np.testing.assert_array_equal(a.obs[["x", "y"]].to_numpy(), coords)
    assert a.uns["features"]["encoder"] == ENC and a.uns["features"]["mpp"] == 0.5


def test_a_runs_image_tower_with_and_without_projection(small_slide, tmp_path):
    pytest.importorskip("lightning")
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.features import extract_features, read_features
    from histoxmodal.workflows.train import train

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=16, n_states=2)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": ENC, "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )
    run = train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    px = int(run.patch["patch_px"])
    mpp = float(run.patch["patch_um"]) / px
    for projection, dim in ((False, 32), (True, 8)):
        dest = tmp_path / f"f{projection}"
        (r,) = extract_features([small_slide.path], dest, run=run.path, projection=projection)
        assert r.status == "ok", r.reason
        feats, coords, attrs = read_features(dest / "small.h5")
        assert feats.shape == (len(coords), dim) and attrs["projection"] == projection
        assert attrs["tile_px"] == px and attrs["mpp"] == pytest.approx(mpp, rel=0.02)
        tiles = _tiles_other_way(small_slide.path, coords[:8], px, attrs["mpp"])
        x = torch.from_numpy(tiles.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():  # the module's own path: resize + normalize + tower (+ head)
            m = run.module.eval()
            ref = (m.embed_images(x) if projection else m.image_features(x)).numpy()
        np.testing.assert_allclose(feats[:8], ref, atol=2e-4, rtol=1e-4)


def test_a_foundation_model_without_weights_is_refused_unless_asked(
    small_slide, extracted, tmp_path, capsys
):
    from histoxmodal.cli.main import main
    from histoxmodal.encoders import describe_encoder
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.extractor import load_extractor
    from histoxmodal.workflows.features import read_features

    for name in ("uni", "conch", "virchow2", "ctranspath"):
        assert describe_encoder(name)["needs_weights"] is True
        with pytest.raises(ConfigError, match="--random-weights"):
            load_extractor(name)
    assert (
        main(["features", str(small_slide.path), "--encoder", "uni", "--out", str(tmp_path / "f")])
        == 2
    )
    err = capsys.readouterr().err
    assert "pretrained foundation model" in err and "--weights PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "f").exists()
    with pytest.raises(ConfigError, match="exclude each other"):
        load_extractor(ENC, weights=tmp_path / "w.pt", random_weights=True)
    # a tower run untrained says so in every file
    out, _ = extracted
    _, _, attrs = read_features(out / "small.h5")
    assert attrs["weights"] == "random" and attrs["weights_sha256"] == ""


def test_training_a_foundation_tower_needs_its_weights_or_says_random(tmp_path):
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.config_files import load_config
    from histoxmodal.workflows.train import check_image_weights

    cfg = load_config("frozen_uni_local")
    with pytest.raises(ConfigError, match="model.image_weights is not set"):
        check_image_weights(cfg)
    check_image_weights(load_config("frozen_uni_local", ["model.random_weights=true"]))
    check_image_weights(load_config("frozen_uni_local", [f"model.image_weights={tmp_path}"]))
    check_image_weights(load_config("her2st_small"))  # a small tower of its own
