"""Tiling slides to disk: outputs, resume, atomicity, failures and parallel runs (the protocol
shared with features and predict is tested in test_jobs.py)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from histoxmodal import TileSpec, load_tiles, open_slide, tile_slide, tile_slides
from histoxmodal.errors import ConfigError
from histoxmodal.tiling.tissue import detect_tissue


def test_cmu_outputs_match_independent_computation(cmu_svs, tmp_path):
    import openslide

    r = tile_slide(cmu_svs, tmp_path, TileSpec(), save_tiles=True)
    assert r.status == "ok" and r.mpp == pytest.approx(0.499)
    folder = tmp_path / "CMU-1-Small-Region"
    # expected coordinates: the same mask, tiles enumerated with plain loops
    tm = detect_tissue(open_slide(cmu_svs))
    size = round(224 * 0.5 / 0.499)
    dx, dy = tm.downsample
    want = []
    for y in range(0, 2967 - size + 1, size):
        for x in range(0, 2220 - size + 1, size):
            c0, r0 = int(np.floor(x / dx + 0.5)), int(np.floor(y / dy + 0.5))
            c1, r1 = int(np.floor((x + size) / dx + 0.5)), int(np.floor((y + size) / dy + 0.5))
            if tm.mask[r0:r1, c0:c1].mean() >= 0.5:
                want.append((x, y))
    with h5py.File(folder / "coords.h5") as f:
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
        frac = f["tissue_fraction"][:]
    assert [tuple(c) for c in coords.tolist()] == want
    assert r.n_tiles == len(want) > 20
    assert coords.dtype == np.int64 and coords.shape == (len(want), 2)
    assert (frac >= 0.5).all()
    assert attrs["patch_size"] == 224 and attrs["patch_level"] == 0
    assert attrs["patch_size_level0"] == 224 and attrs["target_mpp"] == 0.5
    assert attrs["level0_mpp"] == pytest.approx(0.499)
    m = json.loads((folder / "manifest.json").read_text())
    for key in (
        "slide",
        "mpp",
        "mpp_source",
        "target_mpp",
        "tile_px",
        "tile_px_level0",
        "n_tiles",
        "status",
    ):
        assert key in m
    assert m["slide"] == str(cmu_svs.resolve()) and m["mpp_source"] == "metadata"
    assert m["n_tiles"] == len(want) and m["status"] == "ok" and m["tile_px_level0"] == 224
    gj = json.loads((folder / "tissue.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    from PIL import Image

    from histoxmodal.tiling.outputs import caption_height

    with Image.open(folder / "overlay.png") as im:
        # longest side 1536, aspect of the slide, and the caption band below
        assert im.size == (1149, 1536 + caption_height(1149))
    # stored tile pixels are exactly what OpenSlide returns for those coordinates
    osr = openslide.OpenSlide(str(cmu_svs))
    with load_tiles(folder) as ts:
        assert len(ts) == len(want) and ts.tiles.shape == (len(want), 224, 224, 3)
        assert ts.tiles.chunks == (1, 224, 224, 3)
        for i in (0, len(ts) // 2, len(ts) - 1):
            x, y = ts.coords[i]
            ref = np.asarray(osr.read_region((int(x), int(y)), 0, (224, 224)).convert("RGB"))
            np.testing.assert_array_equal(ts[i], ref)


def test_resampled_tiles_match_read_region_at_mpp(small_slide, tmp_path):
    spec = TileSpec(tile_px=64, target_mpp=0.75, min_tissue=0.3)
    r = tile_slide(small_slide.path, tmp_path, spec, save_tiles=True, workers=2)
    assert r.status == "ok" and r.n_tiles > 5
    s = open_slide(small_slide.path)
    with load_tiles(tmp_path / "small") as ts:
        assert ts.attrs["patch_level"] == 1 and ts.attrs["patch_size"] == 96
        assert ts.attrs["patch_size_level0"] == 192
        for i in range(len(ts)):
            x, y = ts.coords[i]
            np.testing.assert_array_equal(ts[i], s.read_region_at_mpp((x, y), 64, 0.75))


def test_resume_skips_finished_and_ignores_half_written(small_slide, tmp_path):
    spec = TileSpec(tile_px=128, target_mpp=0.5)
    first = tile_slide(small_slide.path, tmp_path, spec)
    manifest = tmp_path / "small" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    again = tile_slide(small_slide.path, tmp_path, spec)
    assert again.status == "skipped" and again.n_tiles == first.n_tiles
    assert manifest.stat().st_mtime_ns == stamp
    # a run killed mid-way leaves only a hidden staging folder, which is cleaned up
    stale = tmp_path / ".small.partial-999-deadbeef"
    stale.mkdir()
    (stale / "coords.h5").write_bytes(b"half")
    # a folder without a finished manifest is not mistaken for output
    (manifest).unlink()
    redo = tile_slide(small_slide.path, tmp_path, spec)
    assert redo.status == "ok" and redo.n_tiles == first.n_tiles
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "small"]
    # other parameters: refused without overwrite, redone with it
    other = tile_slide(small_slide.path, tmp_path, TileSpec(tile_px=64, target_mpp=0.5))
    assert other.status == "failed" and "--overwrite" in other.reason
    assert json.loads(manifest.read_text())["tile_px"] == 128
    over = tile_slide(
        small_slide.path, tmp_path, TileSpec(tile_px=64, target_mpp=0.5), overwrite=True
    )
    assert over.status == "ok" and json.loads(manifest.read_text())["tile_px"] == 64


def test_failures_are_recorded_and_others_go_on(cmu_svs, blank_slide, data_dir, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.svs").write_text("not a slide\n")
    (bad / "cut.svs").write_bytes(cmu_svs.read_bytes()[:400_000])
    shutil.copy(cmu_svs, bad / "good.svs")
    shutil.copy(blank_slide.path, bad / "blank.tif")
    jpeg = data_dir / "her2st" / "images" / "C3.jpg"
    out = tmp_path / "out"
    results = tile_slides([bad, jpeg, tmp_path / "missing.svs"], out, TileSpec())
    by = {r.name: r for r in results}
    assert set(by) == {"notes", "cut", "good", "blank", "C3", "missing"}
    assert by["good"].status == "ok" and by["good"].n_tiles > 20
    assert by["blank"].status == "empty" and by["blank"].n_tiles == 0
    assert by["notes"].status == "failed" and "not a slide format" in by["notes"].reason
    assert by["cut"].status == "failed" and "truncated" in by["cut"].reason
    assert by["C3"].status == "failed" and "--mpp" in by["C3"].reason
    assert by["missing"].status == "failed" and "not found" in by["missing"].reason
    for name in ("notes", "cut", "C3"):
        m = json.loads((out / name / "manifest.json").read_text())
        assert m["status"] == "failed" and m["reason"] == by[name].reason
        assert not (out / name / "coords.h5").exists()
        assert not (out / name / "error.log").exists()  # known errors need no traceback


def test_parallel_slides_equal_sequential(small_slide, blank_slide, cmu_svs, tmp_path):
    inputs = [small_slide.path, blank_slide.path, cmu_svs]
    seq = tile_slides(inputs, tmp_path / "seq", TileSpec(tile_px=128))
    par = tile_slides(inputs, tmp_path / "par", TileSpec(tile_px=128), workers=2)
    assert [(r.name, r.status, r.n_tiles) for r in seq] == [
        (r.name, r.status, r.n_tiles) for r in par
    ]
    for r in seq:
        if r.status == "ok":
            a = load_tiles(tmp_path / "seq" / r.name).coords
            b = load_tiles(tmp_path / "par" / r.name).coords
            np.testing.assert_array_equal(a, b)


def test_inputs_expansion_and_collisions(data_dir, tmp_path):
    fx = data_dir / "wsi" / "openslide-fixtures"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no slides found"):
        tile_slides([empty], tmp_path / "out")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(fx / "small.svs", tmp_path / "a" / "x.svs")
    shutil.copy(fx / "small.svs", tmp_path / "b" / "x.svs")
    with pytest.raises(ConfigError, match="both write to"):
        tile_slides([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
