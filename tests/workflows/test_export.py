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
