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
from histoxmodal.errors import ConfigError, DataError
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
    with pytest.raises(DataError, match="sha256"):
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


def _counts_h5ad(data_dir, folder, *, layer="counts"):
    """squidpy's ``test_data.h5ad`` (its X is log-normalised) with whole-number counts derived
    from it in ``layers[layer]``, written to ``folder/test_data.h5ad``; returns that path and
    the counts ``(49, 1999)``. The image is linked beside it as ``test_img.jpg``."""
    import anndata as ad

    vis = data_dir / "visium" / "squidpy"
    a = ad.read_h5ad(vis / "test_data.h5ad")
    counts = np.rint(np.expm1(a.X.toarray()) * 3).astype(np.int32)
    a.layers[layer] = counts
    folder.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(folder / "test_data.h5ad")
    (folder / "test_img.jpg").symlink_to(vis / "test_img.jpg")
    return folder / "test_data.h5ad", counts


def test_h5ad_with_full_resolution_image(data_dir, tmp_path):
    f, _ = _counts_h5ad(data_dir, tmp_path / "src")
    refs = find_samples(load_recipe("h5ad"), [f], image=f.parent / "test_img.jpg")
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
    with pytest.raises(DataError, match="leaves the dataset folder"):
        split_file(fake, "patient")


def _small_refs(data_dir, tmp_path):
    f = tmp_path / "src" / "test_data.h5ad"
    if not f.exists():
        _counts_h5ad(data_dir, f.parent)
    return find_samples(load_recipe("h5ad"), [f], image=f.parent / "test_img.jpg")


def _quiet_build(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_paired(*args, **kw)


def test_killed_overwrite_is_refused_then_rebuilt(data_dir, tmp_path, monkeypatch):
    import histoxmodal.data.splits as splits

    refs, out = _small_refs(data_dir, tmp_path), tmp_path / "ds"
    _quiet_build(refs, out, PairedConfig(patch_px=32))
    real = splits.write_split

    def killed(*a, **k):  # the process dies after the new data files are in place
        raise KeyboardInterrupt

    monkeypatch.setattr(splits, "write_split", killed)
    with pytest.raises(KeyboardInterrupt):
        _quiet_build(refs, out, PairedConfig(patch_px=16), overwrite=True)
    monkeypatch.setattr(splits, "write_split", real)
    with pytest.raises(DataError, match="did not complete"):
        load_paired(out)
    m = _quiet_build(refs, out, PairedConfig(patch_px=16))
    assert not m.get("up_to_date") and m["params"]["patch_px"] == 16
    assert load_paired(out)[1].shape == (49, 16, 16, 3)


def test_up_to_date_only_when_the_files_match(data_dir, tmp_path):
    refs, out = _small_refs(data_dir, tmp_path), tmp_path / "ds"
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

    refs, out = _small_refs(data_dir, tmp_path), tmp_path / "ds"
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
    refs, out = _small_refs(data_dir, tmp_path), tmp_path / "ds"
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


# --- counts that are not counts, paths from another folder, inputs that are not files --------


def _her2st_copy(data_dir, dst, edits=None, *, link_counts=None):
    """A her2st-layout folder with C3 intact and, for each ``name: value`` of ``edits``, a
    section ``name`` that is C3 with one count cell replaced by ``value`` (a copy; the shared
    data stay untouched). ``link_counts``: sections whose counts file is that symlink target."""
    import gzip

    root = data_dir / "her2st"
    for d in ("counts", "spots", "images"):
        (dst / d).mkdir(parents=True, exist_ok=True)
    lines = gzip.decompress((root / "counts" / "C3.tsv.gz").read_bytes()).decode().split("\n")
    for name, value in {"C3": None, **(edits or {})}.items():
        rows = list(lines)
        if value is not None:
            cells = rows[3].split("\t")
            cells[7] = value
            rows[3] = "\t".join(cells)
        (dst / "counts" / f"{name}.tsv.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
        shutil.copy(root / "spots" / "C3_selection.tsv", dst / "spots" / f"{name}_selection.tsv")
        (dst / "images" / f"{name}.jpg").symlink_to(root / "images" / "C3.jpg")
    for name, target in (link_counts or {}).items():
        (dst / "counts" / f"{name}.tsv.gz").unlink(missing_ok=True)
        (dst / "counts" / f"{name}.tsv.gz").symlink_to(target)
        if not (dst / "spots" / f"{name}_selection.tsv").exists():
            shutil.copy(
                root / "spots" / "C3_selection.tsv", dst / "spots" / f"{name}_selection.tsv"
            )
            (dst / "images" / f"{name}.jpg").symlink_to(root / "images" / "C3.jpg")
    return dst


def test_counts_that_are_not_counts_are_refused_never_cast(data_dir, tmp_path, capsys):
    import pandas as pd

    from histoxmodal.cli.main import main

    edits = {"N1": "-7", "N2": "1e300", "N3": "2.5"}
    src = _her2st_copy(data_dir, tmp_path / "her2st", edits)
    out = tmp_path / "ds"
    args = ["build", "--recipe", "her2st", "--src", str(src), "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([*args, "--patch-px", "16"])
    text = capsys.readouterr().out
    assert rc == 1
    m = json.loads((out / keys.PAIRED_MANIFEST_FILE).read_text())
    assert list(m["samples"]) == ["C3"] and set(m["failed"]) == set(edits)
    for name in edits:  # each names the sample and its counts file, and says what to do
        assert f"{name} (" in m["failed"][name] and f"{name}.tsv.gz" in m["failed"][name]
        assert f"failed {name}: " in text
    assert "negative values (as low as -7)" in m["failed"]["N1"]
    assert "up to 1e+300" in m["failed"]["N2"] and "2147483647" in m["failed"]["N2"]
    assert "non-integer" in m["failed"]["N3"] and "looks normalised" in m["failed"]["N3"]
    assert "raw counts" in m["failed"]["N3"]
    # the sample that was kept holds exactly the file's counts
    adata, _ = load_paired(out)
    assert adata.X.dtype == np.int32
    source = pd.read_csv(data_dir / "her2st" / "counts" / "C3.tsv.gz", sep="\t", index_col=0)
    spots = [s.split(":", 1)[1] for s in adata.obs_names]
    genes = list(adata.var["gene_ids"])
    np.testing.assert_array_equal(adata.X.toarray(), source.loc[spots, genes].to_numpy())


def test_reader_keeps_values_that_are_not_counts_and_says_so(data_dir, tmp_path):
    from histoxmodal.io.spatial import read_her2st

    src = _her2st_copy(data_dir, tmp_path / "her2st", {"N2": "1e300", "N3": "2.5"})
    for name, value in (("N2", 1e300), ("N3", 2.5)):
        with pytest.warns(UserWarning, match="kept unchanged.*not cast"):
            a = read_her2st(src, name)
        x = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X)
        assert (x == value).sum() == 1  # not wrapped to -2147483648 or truncated to 2
        assert x.min() >= 0 and np.issubdtype(x.dtype, np.floating)
        assert a.uns["spatial"][name]["metadata"]["counts_are_raw"] is False


def test_normalised_h5ad_is_refused_then_read_from_the_named_layer(data_dir, tmp_path):
    f, counts = _counts_h5ad(data_dir, tmp_path / "src", layer="raw")
    image = f.parent / "test_img.jpg"
    refs = find_samples(load_recipe("h5ad"), [f], image=image)
    with pytest.raises(ConfigError, match="looks normalised") as err:
        _quiet_build(refs, tmp_path / "a", PairedConfig(patch_px=16))
    assert "test_data.h5ad" in str(err.value) and "reader: {layer: NAME}" in str(err.value)
    assert "layers: raw" in str(err.value)
    assert not (tmp_path / "a" / keys.PAIRED_ADATA_FILE).exists()
    recipe = tmp_path / "raw.yaml"
    recipe.write_text("name: raw\nformat: h5ad\nreader:\n  layer: raw\n")
    refs = find_samples(load_recipe(str(recipe)), [f], image=image)
    m = _quiet_build(refs, tmp_path / "b", PairedConfig(patch_px=16))
    assert m["n_spots"] == 49
    adata, _ = load_paired(tmp_path / "b")
    assert adata.X.dtype == np.int32
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    bad = tmp_path / "nolayer.yaml"
    bad.write_text("name: nolayer\nformat: h5ad\nreader:\n  layer: counts\n")
    refs = find_samples(load_recipe(str(bad)), [f], image=image)
    with pytest.raises(ConfigError, match="no layer 'counts'.*its layers: raw"):
        _quiet_build(refs, tmp_path / "c", PairedConfig(patch_px=16))


def test_build_from_another_folder_is_the_same_build(data_dir, tmp_path, monkeypatch):
    import histoxmodal.data.splits as splits

    _counts_h5ad(data_dir, tmp_path / "data")
    (tmp_path / "a" / "deep").mkdir(parents=True)
    recipe, cfg = load_recipe("h5ad"), PairedConfig(patch_px=16)

    def refs_from(cwd, rel):
        monkeypatch.chdir(cwd)
        return find_samples(recipe, [f"{rel}/test_data.h5ad"], image=f"{rel}/test_img.jpg")

    # a build killed after its sample part was written (the part is kept for the resume)
    real = splits.write_split

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(splits, "write_split", killed)
    with pytest.raises(KeyboardInterrupt):
        _quiet_build(refs_from(tmp_path / "a" / "deep", "../../data"), "../../ds", cfg)
    monkeypatch.setattr(splits, "write_split", real)
    # resumed from another folder: the part is reused, not read again
    refs = refs_from(tmp_path / "a", "../data")
    calls = []
    load = refs[0].load
    refs[0].load = lambda: calls.append(1) or load()
    m = _quiet_build(refs, "../ds", cfg)
    assert calls == [] and m["status"] == "complete"
    # rebuilt from a third folder with the equivalent relative paths: up to date, not refused
    again = _quiet_build(refs_from(tmp_path, "data"), "ds", cfg)
    assert again.get("up_to_date")
    for path in again["inputs"]["test_data"]:
        assert path.startswith("/") and ".." not in path
    # the image path the dataset stores is absolute and opens from anywhere
    monkeypatch.chdir(tmp_path / "a" / "deep")
    adata, _ = load_paired(tmp_path / "ds")
    (lib,) = adata.uns["spatial"].values()
    meta = lib["metadata"]
    from pathlib import Path

    assert Path(meta["image_path"]).is_absolute() and Path(meta["image_path"]).is_file()
    assert Path(meta["file"]).is_absolute() and Path(meta["file"]).is_file()


def test_counts_file_that_is_a_device_or_fifo_is_refused(data_dir, tmp_path):
    import os

    from tests.data.test_store import deadline

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    src = _her2st_copy(data_dir, tmp_path / "her2st", link_counts={"N1": "/dev/zero"})
    refs = find_samples(load_recipe("her2st"), [src])
    with deadline(10), pytest.raises(ConfigError, match=r"N1\.tsv\.gz.*/dev/zero.*character"):
        _quiet_build(refs, tmp_path / "a", PairedConfig(patch_px=16))
    (src / "counts" / "N1.tsv.gz").unlink()
    (src / "counts" / "N1.tsv.gz").symlink_to(fifo)
    refs = find_samples(load_recipe("her2st"), [src])
    with deadline(10), pytest.raises(ConfigError, match=r"N1\.tsv\.gz.*FIFO"):
        _quiet_build(refs, tmp_path / "b", PairedConfig(patch_px=16))


@pytest.mark.parametrize("mpp", [0, -1, 0.0, float("nan"), 1e9])
def test_a_pixel_size_that_makes_no_sense_is_refused_by_the_library(tmp_path, mpp):
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.build import build

    with pytest.raises(ConfigError, match="--mpp"):
        build("her2st", tmp_path / "out", src=tmp_path, mpp=mpp)
    assert not (tmp_path / "out").exists()
