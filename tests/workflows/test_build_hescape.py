"""HESCAPE panels as paired datasets: rows per sample, counts, re-cut patches, HESCAPE's split,
both readers (datasets, pyarrow alone), bounded batches, bad sources, the CLI."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import pytest

from histoxmodal import keys
from histoxmodal.data.splits import Split
from histoxmodal.data.store import load_paired
from histoxmodal.errors import HistoxmodalError
from histoxmodal.io.spatial.hescape import HescapeReader, find_hescape
from histoxmodal.testing import HescapeSampleSpec, make_hescape_dataset
from histoxmodal.testing.hescape import DEFAULT_SAMPLES
from histoxmodal.workflows.build_hescape import build_hescape

#: the field of view and size the tests build: 32 px at 0.5 µm/px (no resizing for the 0.5 µm/px
#: samples, 2x down for 0.25, 1.25x down for 0.4)
PATCH_UM, PATCH_PX = 16.0, 32
UNLISTED = HescapeSampleSpec("TENX999", None, 3, 0.5, (48, 48))
LISTED = {s.name: s for s in DEFAULT_SAMPLES}


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """A panel with both copies of the rows (Parquet, save_to_disk) and a sample in no CSV."""
    pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hescape") / "panel"
    return make_hescape_dataset(root, samples=(*DEFAULT_SAMPLES, UNLISTED), save_to_disk=True)


@pytest.fixture(scope="module")
def built(panel, tmp_path_factory):
    """The panel's Parquet shards built with the default engine: (folder, manifest)."""
    out = tmp_path_factory.mktemp("stores") / "parquet"
    m = build_hescape(
        [panel.parquet_dir, panel.split_dir], out, patch_um=PATCH_UM, patch_px=PATCH_PX,
        batch_size=5,
    )  # fmt: skip
    return out, m


def kept_rows(panel) -> np.ndarray:
    """Generator rows that enter the dataset, in dataset order (rows of listed samples)."""
    return np.flatnonzero(np.isin(panel.names, list(LISTED)))


def area_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize by exact area averaging (separable overlap weights), rounded: by hand."""

    def weights(n_in: int) -> np.ndarray:
        w = np.zeros((size, n_in))
        s = n_in / size
        for o in range(size):
            lo, hi = o * s, (o + 1) * s
            for i in range(n_in):
                w[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
        return w / w.sum(axis=1, keepdims=True)

    h, w = img.shape[:2]
    out = np.einsum("oi,ijc->ojc", weights(h), img.astype(np.float64))
    out = np.einsum("pj,ojc->opc", weights(w), out)
    return out


def hand_patch(img: np.ndarray, mpp: float) -> np.ndarray:
    """The centre PATCH_UM of ``img`` at PATCH_PX, computed without the package."""
    side = round(PATCH_UM / mpp)
    h, w = img.shape[:2]
    y0, x0 = round(h / 2 - side / 2), round(w / 2 - side / 2)
    crop = img[y0 : y0 + side, x0 : x0 + side]
    return crop.astype(np.float64) if side == PATCH_PX else area_resize(crop, PATCH_PX)


def test_rows_per_sample_and_manifest(panel, built):
    out, m = built
    assert m["status"] == "complete" and m["recipe"] == "hescape"
    assert {s: c["n_spots"] for s, c in m["samples"].items()} == {
        s: spec.n_rows for s, spec in LISTED.items()
    }
    assert m["source"]["rows_per_sample"] == {
        **{s: spec.n_rows for s, spec in LISTED.items()},
        "TENX999": 3,
    }
    assert "none of train.csv, val.csv, test.csv" in m["skipped"]["TENX999"]
    assert m["n_spots"] == 27 and m["n_genes"] == 10 and m["failed"] == {}
    assert m["samples"]["TENX902"]["patient"] == "TENX902"  # empty patient cell: its own
    assert m["samples"]["NCBI903"]["crop_px"] == [[64, 80]]
    # provenance: every input by path and size, hashed (all small here)
    assert [r["path"] for r in m["inputs"]["rows"]] == [str(p) for p in panel.parquet_files]
    for rec in [*m["inputs"]["rows"], *m["inputs"]["splits"].values(), m["inputs"]["reference"]]:
        assert len(rec["sha256"]) == 64 and rec["size"] > 0
    adata, patches = load_paired(out, verify=True)
    assert isinstance(patches, np.memmap) and patches.shape == (27, PATCH_PX, PATCH_PX, 3)
    assert adata.X.dtype == np.int32
    assert adata.obs[keys.OBS_SAMPLE].value_counts().to_dict() == {
        s: spec.n_rows for s, spec in LISTED.items()
    }
    assert set(adata.obs[keys.OBS_PATIENT]) == {"patient 1", "TENX902", "patient 3", "patient 4"}
    assert (adata.obs[keys.OBS_BATCH] == adata.obs[keys.OBS_SAMPLE]).all()
    assert adata.obs["tissue"].iloc[0] in ("breast", "skin")  # ClassLabel decoded
    assert not (tuple(out.parent.glob(".parquet.partial-*")))


def test_genes_and_counts_equal_the_generator(panel, built):
    out, _ = built
    adata, _ = load_paired(out)
    assert list(adata.var_names) == panel.genes
    assert adata.var[keys.VAR_GENE_IDS].iloc[0] == "ENSG00000000000"
    rows = kept_rows(panel)
    assert list(adata.obs[keys.OBS_SAMPLE].astype(str)) == list(panel.names[rows])
    np.testing.assert_array_equal(adata.X.toarray(), panel.counts[rows])
    for i in (0, 7, 26):
        np.testing.assert_array_equal(adata.X[i].toarray()[0], panel.counts[rows[i]])
    np.testing.assert_allclose(adata.obsm[keys.OBSM_SPATIAL], panel.centres[rows], rtol=1e-5)
    mpp = adata.obs[keys.OBS_SPATIAL_MPP].to_numpy()
    np.testing.assert_allclose(mpp, [LISTED[s].mpp for s in panel.names[rows]], rtol=1e-6)


def test_patches_equal_a_crop_cut_by_hand(panel, built):
    out, _ = built
    _, patches = load_paired(out)
    rows = kept_rows(panel)
    seen = set()
    for i, j in enumerate(rows):
        sample = panel.names[j]
        ref = hand_patch(panel.images[j], LISTED[sample].mpp)
        got = np.asarray(patches[i]).astype(np.float64)
        if round(PATCH_UM / LISTED[sample].mpp) == PATCH_PX:
            np.testing.assert_array_equal(got, ref)  # no resampling: the very pixels
        else:
            assert np.abs(got - ref).max() <= 1.0, (sample, i)
        other = rows[(i + 1) % len(rows)]
        if panel.names[other] == sample:  # the patch is this row's, not a neighbour's
            assert np.abs(hand_patch(panel.images[other], LISTED[sample].mpp) - got).mean() > 20
        seen.add(sample)
    assert seen == set(LISTED)


def test_hescape_split_is_kept_by_sample(built):
    out, m = built
    adata, _ = load_paired(out)
    assert set(m["splits"]) == {"patient", "sample", "random", "hescape"}
    split = Split.of_dataset(out, "hescape")
    split.check(adata.obs_names, dataset=out)
    fold = split.fold("hescape")
    sample = adata.obs[keys.OBS_SAMPLE].astype(str).to_numpy()
    np.testing.assert_array_equal(fold.test, np.flatnonzero(sample == "TENX904"))
    np.testing.assert_array_equal(fold.val, np.flatnonzero(sample == "NCBI903"))
    train = fold.train(adata.n_obs)
    assert set(sample[train]) == {"TENX901", "TENX902"} and fold.held_out == ["TENX904"]
    data = json.loads((out / keys.split_path("hescape")).read_text())
    assert data["samples"] == {"train": ["TENX901", "TENX902"], "val": ["NCBI903"],
                               "test": ["TENX904"]}  # fmt: skip
    assert data["val_equals_test"] is False and m["hescape"]["val_equals_test"] is False
    assert len(Split.of_dataset(out, "sample").folds) == 4


def test_val_equal_to_test_warns_and_is_recorded(tmp_path, caplog):
    panel = make_hescape_dataset(tmp_path / "skin", val_equals_test=True, seed=1)
    assert panel.splits["val"] == panel.splits["test"] == ["NCBI903", "TENX904"]
    with caplog.at_level(logging.WARNING):
        m = build_hescape(tmp_path / "skin", tmp_path / "out", patch_um=PATCH_UM,
                          patch_px=PATCH_PX)  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("val.csv lists the same samples as test.csv" in w for w in warned), warned
    assert m["hescape"]["val_equals_test"] is True and m["hescape"]["warnings"]
    data = json.loads((tmp_path / "out" / keys.split_path("hescape")).read_text())
    assert data["val_equals_test"] is True
    fold = Split.of_dataset(tmp_path / "out", "hescape").fold(0)
    adata, _ = load_paired(tmp_path / "out")
    sample = adata.obs[keys.OBS_SAMPLE].astype(str).to_numpy()
    assert len(fold.val) == 0
    np.testing.assert_array_equal(fold.test, np.flatnonzero(np.isin(sample, panel.splits["test"])))


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_pyarrow_alone_gives_the_same_dataset(panel, built, tmp_path, monkeypatch, layout):
    rows = panel.parquet_dir if layout == "parquet" else panel.disk_dir
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails: not installed
    with pytest.raises(ImportError):
        import datasets  # noqa: F401
    m = build_hescape([rows, panel.split_dir], tmp_path / "pa", patch_um=PATCH_UM,
                      patch_px=PATCH_PX, batch_size=4)  # fmt: skip
    assert m["source"]["reader"] == "pyarrow" and m["source"]["layout"] == layout
    a, p = load_paired(tmp_path / "pa")
    b, q = load_paired(built[0])
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    assert a.obs["source"].astype(str).tolist() == b.obs["source"].astype(str).tolist()


def test_save_to_disk_read_with_datasets_and_threads(panel, built, tmp_path):
    m = build_hescape([panel.disk_dir, panel.split_dir], tmp_path / "ds", patch_um=PATCH_UM,
                      patch_px=PATCH_PX, engine="datasets", workers=2)  # fmt: skip
    assert m["source"]["reader"] == "datasets" and m["source"]["layout"] == "save_to_disk"
    a, p = load_paired(tmp_path / "ds")
    b, q = load_paired(built[0])
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


@pytest.mark.parametrize("engine", ["pyarrow", "datasets"])
@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_rows_are_streamed_in_bounded_batches(panel, tmp_path, monkeypatch, engine, layout):
    rows = panel.parquet_dir if layout == "parquet" else panel.disk_dir
    reader = HescapeReader(find_hescape([rows, panel.split_dir]), engine=engine, batch_size=4)
    sizes = [b.num_rows for b in reader.batches(["name"])]
    assert max(sizes) <= 4 and sum(sizes) == reader.num_rows == 30
    assert len(sizes) == reader.num_batches
    seen: list[int] = []
    real = HescapeReader.batches

    def spy(self, columns=None):
        for b in real(self, columns):
            seen.append(b.num_rows)
            yield b

    monkeypatch.setattr(HescapeReader, "batches", spy)
    build_hescape([rows, panel.split_dir], tmp_path / "out", patch_um=PATCH_UM,
                  patch_px=PATCH_PX, batch_size=3, engine=engine)  # fmt: skip
    assert seen and max(seen) <= 3 and sum(seen) == 2 * 30  # two passes, 3 rows at a time


def test_bad_sources_name_the_file(panel, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(panel.parquet_dir, src / "rows")
    shutil.copytree(panel.split_dir, src / "data")
    out = tmp_path / "out"

    def fails(match: str, **kw) -> str:
        with pytest.raises(HistoxmodalError, match=match) as e:
            build_hescape(src, out, patch_um=kw.get("patch_um", PATCH_UM), patch_px=PATCH_PX)
        assert "\n" not in str(e.value) and not out.exists()
        assert not list(tmp_path.glob(".out.partial-*"))
        return str(e.value)

    (src / "data" / "val.csv").rename(tmp_path / "val.csv")
    assert "train.csv, val.csv and test.csv" in fails(r"val\.csv missing")
    (tmp_path / "val.csv").rename(src / "data" / "val.csv")

    (src / "data" / "nicheformer_reference.h5ad").rename(tmp_path / "ref.h5ad")
    fails(r"no nicheformer_reference\.h5ad .*data/<panel>/nicheformer_reference\.h5ad")

    import anndata as ad
    import pandas as pd

    ref = ad.read_h5ad(tmp_path / "ref.h5ad")
    bigger = ad.AnnData(np.zeros((2, 12)), var=pd.DataFrame(index=[*ref.var_names, "X1", "X2"]))
    bigger.write_h5ad(src / "data" / "nicheformer_reference.h5ad")
    msg = fails(r"gexp holds 10 values per row but .*nicheformer_reference\.h5ad lists 12 genes")
    assert str(src / "rows") in msg
    shutil.copy(tmp_path / "ref.h5ad", src / "data" / "nicheformer_reference.h5ad")

    # 20.5 µm is 41 px at 0.5 µm/px: only TENX904's 40 px crops are too small
    msg = fails(r"TENX904: its H&E crops are 40 x 40 px", patch_um=20.5)
    assert "--patch-um 20 or less" in msg
    build_hescape(src, out, patch_um=20, patch_px=PATCH_PX)  # the fixed source builds


def test_paired_dataset_yields_patches(built):
    pytest.importorskip("torch")
    from histoxmodal.data.dataset import PairedDataset

    out, _ = built
    ds = PairedDataset(out, indices=Split.of_dataset(out, "hescape").fold(0).test)
    item = ds[0]
    assert len(ds) == 5 and tuple(item[keys.BATCH_IMAGE].shape) == (3, PATCH_PX, PATCH_PX)
    assert item[keys.BATCH_EXPRESSION].shape == (10,) and ds.categories["sample"][0] == "NCBI903"


def test_cli_build_list_rebuild_and_options(panel, tmp_path, capsys):
    from histoxmodal.cli.main import main

    assert main(["build", "--list"]) == 0
    assert any(line.split()[:2] == ["hescape", "hescape"]
               for line in capsys.readouterr().out.splitlines())  # fmt: skip
    out = str(tmp_path / "cli")
    args = ["build", "--recipe", "hescape", "--src", str(panel.parquet_dir), "--src",
            str(panel.split_dir), "--out", out, "--patch-um", "16", "--patch-px", "32"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "built: 27 spots x 10 genes" in text and "skipped 1: TENX999" in text
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    assert main([*args[:-1], "24"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args[:-1], "24", "--overwrite"]) == 0
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["params"]["patch_px"] == 24
    assert main([*args, "--mpp", "0.5"]) == 2
    assert "--mpp: not used by the hescape recipe" in capsys.readouterr().err
