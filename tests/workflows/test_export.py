"""Exports of the paired dataset (``workflows/export.py``): Hugging Face Parquet and HEST."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.data.store import load_paired


def test_parquet_export_loads_in_hf_datasets(her2st_paired, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from histoxmodal.workflows.export import export_parquet

    out, _ = her2st_paired
    adata, patches = load_paired(out)
    files = export_parquet(out, tmp_path / "pq", rows_per_shard=400)
    assert len(files) == 3
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset(
        "parquet",
        data_dir=str(tmp_path / "pq" / "data"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.num_rows == 1015
    row = ds[500]
    np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), patches[500])
    np.testing.assert_array_equal(row["expression"], adata.X[500].toarray().ravel())
    assert row["spot_id"] == adata.obs_names[500] and row["sample"] == adata.obs["sample"].iloc[500]
    genes = (tmp_path / "pq" / "genes.txt").read_text().split()
    assert genes == list(adata.var_names)


def test_hest_export(her2st_paired, tmp_path):
    import anndata as ad
    import h5py

    from histoxmodal.workflows.export import export_hest

    out, _ = her2st_paired
    adata, patches = load_paired(out)
    files = export_hest(out, tmp_path / "hest")
    assert [f.stem for f in files] == ["B4", "C2", "C3", "C4", "C5"]
    with h5py.File(tmp_path / "hest" / "patches" / "C3.h5") as h:
        rows = np.flatnonzero(adata.obs["sample"] == "C3")
        assert h["img"].shape == (180, 224, 224, 3) and h["barcode"].shape == (180, 1)
        np.testing.assert_array_equal(h["img"][7], patches[rows[7]])
        np.testing.assert_allclose(h["coords"][7], adata.obsm["spatial"][rows[7]])
        assert h["barcode"][7, 0].decode() == adata.obs_names[rows[7]].split(":")[1]
    st = ad.read_h5ad(tmp_path / "hest" / "st" / "C3.h5ad")
    assert st.n_obs == 180 and list(st.uns["spatial"]) == ["C3"]


def _export(data, to, out, *extra):
    from histoxmodal.cli.main import main

    return main(["export", "--data", str(data), "--to", to, "--out", str(out), *extra])


def test_overwrite_never_deletes_a_folder_that_is_not_an_export(her2st_paired, tmp_path, capsys):
    data, _ = her2st_paired
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    before = sorted(p.name for p in data.iterdir())
    for to in ("spatialdata", "hest", "parquet"):
        assert _export(data, to, victim, "--overwrite") == 2
        assert "not a" in capsys.readouterr().err
        assert (victim / "thesis.txt").read_text() == "precious"
        assert _export(data, to, data, "--overwrite") == 2
        assert "input" in capsys.readouterr().err
        assert _export(data, to, data / "inside", "--overwrite") == 2
        assert sorted(p.name for p in data.iterdir()) == before
        assert _export(data, to, afile, "--overwrite") == 2
        assert "existing file" in capsys.readouterr().err
        assert afile.read_text() == "keep me"
    assert list(victim.iterdir()) == [victim / "thesis.txt"]
    assert not list(tmp_path.glob(".*partial*"))


def test_out_may_not_be_the_current_folder_or_a_parent(
    her2st_paired, tmp_path, monkeypatch, capsys
):
    data, _ = her2st_paired
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path)):
        assert _export(data, "spatialdata", out, "--overwrite") == 2
        assert "current folder" in capsys.readouterr().err
    assert (work / "notes.txt").read_text() == "mine"


def test_hest_export_replaces_an_earlier_export_whole(her2st_paired, tmp_path):
    import json

    from histoxmodal.workflows.export import export_hest

    data, _ = her2st_paired
    out = tmp_path / "hest"
    export_hest(data, out)
    # an earlier export of other samples into the same folder
    (out / "patches" / "Z9.h5").write_bytes(b"old")
    info = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**info, "samples": ["Z9"]}))
    with pytest.raises(ValueError, match="pass --overwrite"):
        export_hest(data, out)
    assert (out / "patches" / "Z9.h5").exists()
    files = export_hest(data, out, overwrite=True)
    written = sorted(p.name for p in (out / "patches").iterdir())
    assert (
        written
        == sorted(f.name for f in files)
        == [f"{s}.h5" for s in ("B4", "C2", "C3", "C4", "C5")]
    )
    assert json.loads((out / "export.json").read_text())["samples"] == [
        "B4",
        "C2",
        "C3",
        "C4",
        "C5",
    ]
    # a parquet export may not replace a hest one
    from histoxmodal.workflows.export import export_parquet

    with pytest.raises(ValueError, match="not a histoxmodal parquet export"):
        export_parquet(data, out, overwrite=True)


def test_parquet_shards_of_an_earlier_export_do_not_survive(her2st_paired, tmp_path):
    from histoxmodal.workflows.export import export_parquet

    data, _ = her2st_paired
    out = tmp_path / "pq"
    assert len(export_parquet(data, out, rows_per_shard=400)) == 3
    files = export_parquet(data, out, rows_per_shard=2000, overwrite=True)
    assert [f.name for f in files] == ["data-00000-of-00001.parquet"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["data-00000-of-00001.parquet"]
    assert sorted(p.name for p in out.iterdir()) == ["data", "export.json", "genes.txt"]


def test_a_second_export_to_one_out_is_refused_while_the_first_runs(her2st_paired, tmp_path):
    from filelock import FileLock

    from histoxmodal.workflows.export import export_hest

    data, _ = her2st_paired
    theirs = tmp_path / ".hest.partial-999-abcdef01"
    theirs.mkdir()
    with (
        FileLock(tmp_path / ".hest.lock"),
        pytest.raises(ValueError, match="another histoxmodal process"),
    ):
        export_hest(data, tmp_path / "hest")
    assert theirs.exists() and not (tmp_path / "hest").exists()
