"""The paired dataset: patch i shows spot i, counts, genes, splits, resume, bad input."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from histoxmodal import keys
from histoxmodal.data.recipes import find_samples, load_recipe
from histoxmodal.data.splits import load_split
from histoxmodal.errors import ConfigError
from histoxmodal.workflows.build import PairedConfig, build_paired, load_paired

HER2ST_SPOTS = {"B4": 283, "C2": 187, "C3": 180, "C4": 184, "C5": 181}


def test_counts_and_manifest(her2st_paired):
    out, m = her2st_paired
    assert {s: c["n_spots"] for s, c in m["samples"].items()} == HER2ST_SPOTS
    assert m["n_spots"] == sum(HER2ST_SPOTS.values())
    assert len(m["skipped"]) == 30 and "no H&E image" in m["skipped"]["A1"]
    assert m["status"] == "complete" and m["params"]["patch_um"] == 112.0
    for sample in HER2ST_SPOTS:
        assert any(p.endswith(f"{sample}.jpg") for p in m["inputs"][sample])
    adata, patches = load_paired(out)
    assert isinstance(patches, np.memmap) and patches.shape == (1015, 224, 224, 3)
    assert list(adata.obs[keys.OBS_SAMPLE].unique()) == list(HER2ST_SPOTS)
    assert adata.X.dtype == np.int32
    assert m["n_genes"] == adata.n_vars and adata.varm["sample_presence"].all().all()


def test_patch_i_shows_spot_i(her2st_paired, data_dir):
    import cv2
    from PIL import Image

    out, _ = her2st_paired
    adata, patches = load_paired(out)
    Image.MAX_IMAGE_PIXELS = None
    rng = np.random.default_rng(0)
    for sample in ("B4", "C5"):
        rows = np.flatnonzero(adata.obs["sample"] == sample)
        mpp = adata.uns["spatial"][sample]["metadata"]["mpp"]
        side = round(112 / mpp)
        with Image.open(data_dir / "her2st" / "images" / f"{sample}.jpg") as im:
            for i in rng.choice(rows, 5, replace=False):
                cx, cy = adata.obsm["spatial"][i]
                x0, y0 = round(cx - side / 2), round(cy - side / 2)
                crop = np.asarray(im.crop((x0, y0, x0 + side, y0 + side)).convert("RGB"))
                ref = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)
                diff = np.abs(patches[i].astype(int) - ref).mean()
                assert diff < 2.0, (sample, i, diff)
                other = rows[(np.searchsorted(rows, i) + 40) % len(rows)]
                assert np.abs(patches[other].astype(int) - ref).mean() > 10


def test_splits_are_saved_with_hashes(her2st_paired):
    out, m = her2st_paired
    adata, _ = load_paired(out)
    folds = load_split(out / m["splits"]["patient"]["file"])
    assert [f.name for f in folds] == ["patient=B", "patient=C"]
    b = folds[0]
    np.testing.assert_array_equal(b.test, np.flatnonzero(adata.obs["patient"] == "B"))
    assert len(b.train(adata.n_obs)) == adata.n_obs - HER2ST_SPOTS["B4"]
    assert len(load_split(out / m["splits"]["sample"]["file"])) == 5
    rnd = load_split(out / m["splits"]["random"]["file"])[0]
    assert len(rnd.test) == round(0.2 * 1015) and not set(rnd.test) & set(rnd.val)
    path = out / m["splits"]["sample"]["file"]
    data = json.loads(path.read_text())
    data["folds"][0]["test"] = data["folds"][0]["test"][1:]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="sha256"):
        load_split(path)


def test_resume_and_rebuild_rules(data_dir, tmp_path):
    recipe = load_recipe("her2st")
    src = [data_dir / "her2st"]
    refs = [r for r in find_samples(recipe, src) if r.sample in ("B4", "C3")]
    out = tmp_path / "ds"
    # a first run that died after one sample: its finished part is reused, stale staging removed
    build_paired(refs[:1], out, PairedConfig(min_counts=50))
    (out / keys.PAIRED_MANIFEST_FILE).unlink()
    stale = out / ".parts" / ".C3.partial-1-dead"
    stale.mkdir(parents=True)
    calls = []
    for r in refs:
        load = r.load
        r.load = lambda load=load, name=r.sample: calls.append(name) or load()
    m = build_paired(refs, out, PairedConfig(min_counts=50))
    assert calls == ["B4", "C3"] or calls == ["C3"]
    assert set(m["samples"]) == {"B4", "C3"} and not (out / ".parts").exists()
    again = build_paired(refs, out, PairedConfig(min_counts=50))
    assert again.get("up_to_date")
    with pytest.raises(ConfigError, match="--overwrite"):
        build_paired(refs, out, PairedConfig(min_counts=10))
    m3 = build_paired(refs, out, PairedConfig(min_counts=10, genes="union"), overwrite=True)
    assert m3["params"]["genes"] == "union" and m3["n_genes"] >= m["n_genes"]
    adata, _ = load_paired(out)
    pres = adata.varm["sample_presence"]
    only_b4 = pres.index[pres["B4"] & ~pres["C3"]]
    assert len(only_b4) > 0
    c3 = (adata.obs["sample"] == "C3").to_numpy()
    assert adata[c3, only_b4].X.sum() == 0


def test_visium_lowres_only_is_refused_then_allowed(data_dir, tmp_path):
    refs = find_samples(load_recipe("visium"), [data_dir / "visium" / "scanpy-heart" / "1.0.0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="--allow-lowres"):
            build_paired(refs, tmp_path / "a", PairedConfig())
        m = build_paired(refs, tmp_path / "b", PairedConfig(allow_lowres=True, patch_px=32))
    s = m["samples"]["1.0.0"]
    assert s["n_spots"] == 100 and s["patch_source"] == "lowres"
    assert s["patch_source_mpp"] == pytest.approx((65 / 89.42751063343188) / 0.045004502)
    # spot coordinates stay in full-resolution pixels: µm per unit is the full-res pixel size,
    # and spots next to each other on the Visium grid (two columns apart) come out 100 µm apart
    from histoxmodal.data.neighbours import spot_coords_um

    adata, _ = load_paired(tmp_path / "b")
    np.testing.assert_allclose(adata.obs["spatial_mpp"], 65 / 89.42751063343188, rtol=1e-6)
    xy, row, col = spot_coords_um(adata), adata.obs["array_row"], adata.obs["array_col"]
    i, j = np.nonzero((row.values[:, None] == row.values) & (col.values[:, None] == col.values + 2))
    assert len(i) > 0
    np.testing.assert_allclose(np.linalg.norm(xy[i] - xy[j], axis=1), 100.0, rtol=0.03)


def test_h5ad_with_full_resolution_image(data_dir, tmp_path):
    vis = data_dir / "visium" / "squidpy"
    refs = find_samples(load_recipe("h5ad"), [vis / "test_data.h5ad"], image=vis / "test_img.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_paired(refs, tmp_path / "h", PairedConfig(patch_px=64))
    s = m["samples"]["test_data"]
    assert s["n_spots"] == 49 and s["patch_source"] == "full-resolution"
    _, patches = load_paired(tmp_path / "h")
    assert patches.shape == (49, 64, 64, 3) and patches.std() > 10


def test_folder_of_visium_samples(data_dir, tmp_path):
    src = data_dir / "visium" / "scanpy-heart" / "1.0.0"
    for name in ("s1", "s2"):
        shutil.copytree(src, tmp_path / "runs" / name)
    refs = find_samples(load_recipe("visium"), [tmp_path / "runs"])
    assert [r.sample for r in refs] == ["s1", "s2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_paired(refs, tmp_path / "ds", PairedConfig(allow_lowres=True, patch_px=16))
    assert m["n_spots"] == 200 and set(m["samples"]) == {"s1", "s2"}
    assert m["splits"]["sample"]["file"] == "splits/sample.json"
    # without patient ids, each sample is its own patient
    folds = load_split(tmp_path / "ds" / m["splits"]["patient"]["file"])
    assert [f.name for f in folds] == ["patient=s1", "patient=s2"]


def test_split_paths_are_confined_to_the_dataset(her2st_paired, tmp_path):
    from histoxmodal.data.splits import split_file

    out, _ = her2st_paired
    assert split_file(out, "patient") == (out / "splits" / "patient.json").resolve()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / keys.PAIRED_MANIFEST_FILE).write_text(
        json.dumps({"splits": {"patient": {"file": "../../etc/passwd"}}})
    )
    with pytest.raises(ConfigError, match="leaves the dataset folder"):
        split_file(fake, "patient")


def _small_refs(data_dir):
    vis = data_dir / "visium" / "squidpy"
    return find_samples(load_recipe("h5ad"), [vis / "test_data.h5ad"], image=vis / "test_img.jpg")


def _quiet_build(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_paired(*args, **kw)


def test_killed_overwrite_is_refused_then_rebuilt(data_dir, tmp_path, monkeypatch):
    import histoxmodal.data.splits as splits

    refs, out = _small_refs(data_dir), tmp_path / "ds"
    _quiet_build(refs, out, PairedConfig(patch_px=32))
    real = splits.write_split

    def killed(*a, **k):  # the process dies after the new data files are in place
        raise KeyboardInterrupt

    monkeypatch.setattr(splits, "write_split", killed)
    with pytest.raises(KeyboardInterrupt):
        _quiet_build(refs, out, PairedConfig(patch_px=16), overwrite=True)
    monkeypatch.setattr(splits, "write_split", real)
    with pytest.raises(ConfigError, match="did not complete"):
        load_paired(out)
    m = _quiet_build(refs, out, PairedConfig(patch_px=16))
    assert not m.get("up_to_date") and m["params"]["patch_px"] == 16
    assert load_paired(out)[1].shape == (49, 16, 16, 3)


def test_up_to_date_only_when_the_files_match(data_dir, tmp_path):
    refs, out = _small_refs(data_dir), tmp_path / "ds"
    m = _quiet_build(refs, out, PairedConfig(patch_px=16))
    assert m["files"][keys.PAIRED_PATCHES_FILE]["size"] == (out / "patches.h5").stat().st_size
    with open(out / keys.PAIRED_PATCHES_FILE, "ab") as fh:  # a file replaced behind its back
        fh.write(b"\0" * 100)
    again = _quiet_build(refs, out, PairedConfig(patch_px=16))
    assert not again.get("up_to_date")
    assert _quiet_build(refs, out, PairedConfig(patch_px=16)).get("up_to_date")


def test_second_build_on_one_folder_waits_or_refuses(data_dir, tmp_path):
    import subprocess
    import sys

    refs, out = _small_refs(data_dir), tmp_path / "ds"
    out.mkdir()
    # another process holds the folder's lock for 2 s, as a running build does
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
            "l.acquire(); print('held', flush=True); time.sleep(2)",
            str(out / ".build.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another build is writing"):
            _quiet_build(refs, out, PairedConfig(patch_px=16), wait=False)
        assert not (out / keys.PAIRED_MANIFEST_FILE).exists()
        m = _quiet_build(refs, out, PairedConfig(patch_px=16))  # waits for the holder
        assert holder.poll() is not None and m["status"] == "complete"
    finally:
        holder.kill()
        holder.wait()


def test_stale_partial_files_are_cleaned(data_dir, tmp_path):
    refs, out = _small_refs(data_dir), tmp_path / "ds"
    out.mkdir()
    stale = [out / ".adata.h5ad.partial", out / ".patches.h5.partial"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    dead = out / ".parts" / ".test_data.partial-1-dead"
    dead.mkdir(parents=True)
    (dead / "patches.h5").write_bytes(b"\0")
    _quiet_build(refs, out, PairedConfig(patch_px=16))
    assert not any(p.exists() for p in stale) and not (out / ".parts").exists()
    left = sorted(p.name for p in out.iterdir())
    assert left == [".build.lock", "adata.h5ad", "manifest.json", "patches.h5", "splits"]


def _bad_her2st(data_dir, dst):
    """C3 intact, C4 with a truncated counts file, C5 with a word in a count cell, B4 with a
    spot table missing its pixel columns (a copy; the shared data stay untouched)."""
    import gzip

    import pandas as pd

    root = data_dir / "her2st"
    for d in ("counts", "spots", "images"):
        (dst / d).mkdir(parents=True)
    for s in ("B4", "C3", "C4", "C5"):
        shutil.copy(root / "counts" / f"{s}.tsv.gz", dst / "counts")
        shutil.copy(root / "spots" / f"{s}_selection.tsv", dst / "spots")
        (dst / "images" / f"{s}.jpg").symlink_to(root / "images" / f"{s}.jpg")
    c4 = dst / "counts" / "C4.tsv.gz"
    raw = c4.read_bytes()
    c4.write_bytes(raw[: len(raw) // 2])
    c5 = dst / "counts" / "C5.tsv.gz"
    lines = gzip.decompress(c5.read_bytes()).decode().split("\n")
    cells = lines[3].split("\t")
    cells[7] = "n/a?"
    lines[3] = "\t".join(cells)
    c5.write_bytes(gzip.compress("\n".join(lines).encode()))
    b4 = dst / "spots" / "B4_selection.tsv"
    pd.read_csv(b4, sep="\t").drop(columns=["pixel_x"]).to_csv(b4, sep="\t", index=False)
    return dst


def test_bad_samples_are_recorded_and_the_rest_built(data_dir, tmp_path, capsys):
    from histoxmodal.cli.main import main

    src = _bad_her2st(data_dir, tmp_path / "her2st")
    out = tmp_path / "ds"
    args = ["build", "--recipe", "her2st", "--src", str(src), "--out", str(out)]
    rc = main([*args, "--patch-px", "16"])
    text = capsys.readouterr().out
    assert rc == 1
    m = json.loads((out / keys.PAIRED_MANIFEST_FILE).read_text())
    assert m["status"] == "complete" and list(m["samples"]) == ["C3"]
    assert set(m["failed"]) == {"B4", "C4", "C5"} and set(m["skipped"]) == {"B4", "C4", "C5"}
    assert "C4.tsv.gz" in m["failed"]["C4"] and "truncated" in m["failed"]["C4"]
    assert "C5.tsv.gz" in m["failed"]["C5"] and "'n/a?'" in m["failed"]["C5"]
    assert "B4_selection.tsv" in m["failed"]["B4"] and "pixel_x" in m["failed"]["B4"]
    for s in ("B4", "C4", "C5"):
        assert f"failed {s}: " in text
    assert load_paired(out)[0].n_obs == m["samples"]["C3"]["n_spots"] > 170
    # the rerun is up to date but still says the dataset lacks those samples
    assert main([*args, "--patch-px", "16"]) == 1 and "up to date" in capsys.readouterr().out
