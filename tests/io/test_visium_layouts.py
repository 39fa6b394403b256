"""read_visium on every Space Ranger layout, each rewritten from the shared heart sample.

Each test rewrites ``visium/scanpy-heart/1.0.0`` (Space Ranger 1.x:
``filtered_feature_bc_matrix.h5`` and a header-less ``tissue_positions_list.csv``) in its
temporary folder into one layout variant and checks the read against the original files read
another way (h5py / pandas), not against the reader itself.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial import (
    MissingSpatialFileError,
    SpatialFormatError,
    detect_format,
    find_visium_outs,
    read_mtx_folder,
    read_spatial,
    read_visium,
)

LOGGER = "histoxmodal.io.spatial.visium"
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
#: measured on the shared files: 4,992 positions, 4,235 of them under tissue; the filtered
#: matrix is a 100-spot subset, all under tissue, with 932 counts in all
N_POSITIONS, N_IN_TISSUE, N_SPOTS, TOTAL_COUNTS = 4992, 4235, 100, 932


class Source:
    """The shared sample read without histoxmodal: h5py for the matrix, pandas for positions."""

    def __init__(self, root: Path):
        self.root = root
        with h5py.File(root / "filtered_feature_bc_matrix.h5") as f:
            m = f["matrix"]
            n_feat, n_bc = (int(v) for v in m["shape"][:])
            # 10x stores features x barcodes in CSC: as CSR it is barcodes x features
            self.X = sp.csr_matrix(
                (m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_bc, n_feat)
            )
            self.barcodes = [b.decode() for b in m["barcodes"][:]]
            self.ids = [b.decode() for b in m["features/id"][:]]
            self.names = [b.decode() for b in m["features/name"][:]]
        self.pos = pd.read_csv(
            root / "spatial" / "tissue_positions_list.csv", header=None, names=POSITION_COLUMNS
        ).set_index("barcode")

    def xy(self, barcodes) -> np.ndarray:
        """``(n, 2)`` full-resolution (x, y) of ``barcodes``: (pxl_col, pxl_row)."""
        return self.pos.loc[list(barcodes), ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(
            float
        )


@pytest.fixture(scope="module")
def src(data_dir) -> Source:
    s = Source(data_dir / "visium" / "scanpy-heart" / "1.0.0")
    assert s.X.shape == (N_SPOTS, 100) and s.X.sum() == TOTAL_COUNTS
    assert len(s.pos) == N_POSITIONS and int(s.pos["in_tissue"].sum()) == N_IN_TISSUE
    return s


def _copy(src: Source, dst: Path) -> Path:
    shutil.copytree(src.root, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*blank")
        return read_visium(path, **kwargs)


def _barcodes(a) -> list[str]:
    return [n.split(":", 1)[1] for n in a.obs_names]


def _assert_like_source(a, src: Source) -> None:
    """The 100 filtered spots, genes, counts and coordinates of the shared sample, exactly."""
    in_tissue = int(src.pos.loc[src.barcodes, "in_tissue"].sum())
    assert a.n_obs == in_tissue == N_SPOTS
    assert _barcodes(a) == src.barcodes
    assert list(a.var_names) == src.names and list(a.var["gene_ids"]) == src.ids
    assert a.X.dtype == np.int32 and a.X.sum() == TOTAL_COUNTS
    assert (a.X != src.X).nnz == 0
    np.testing.assert_array_equal(np.asarray(a.X.sum(axis=1)).ravel(), src.X.sum(axis=1).A1)
    np.testing.assert_array_equal(a.obsm["spatial"], src.xy(src.barcodes))
    assert a.obs["in_tissue"].all()


def _write_tsv(path: Path, rows: list[list[str]]) -> None:
    text = "".join("\t".join(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def _write_mtx_folder(
    folder: Path,
    X: sp.csr_matrix,
    barcodes: list[str],
    ids: list[str],
    names: list[str],
    *,
    gz: tuple[bool, bool, bool] = (True, True, True),
    features: str = "features.tsv",
    n_cols: int = 3,
) -> Path:
    """``X`` (barcodes x features) as a 10x matrix folder; ``gz`` for matrix, features,
    barcodes."""
    folder.mkdir(parents=True)
    mtx = folder / ("matrix.mtx.gz" if gz[0] else "matrix.mtx")
    coo = X.T.tocoo().astype(np.int32)
    if gz[0]:
        with gzip.open(mtx, "wb") as fh:
            scipy.io.mmwrite(fh, coo)
    else:
        scipy.io.mmwrite(mtx, coo)
    cols = [ids, names, ["Gene Expression"] * len(ids)][:n_cols]
    _write_tsv(
        folder / (features + (".gz" if gz[1] else "")), [list(r) for r in zip(*cols, strict=True)]
    )
    _write_tsv(folder / ("barcodes.tsv" + (".gz" if gz[2] else "")), [[b] for b in barcodes])
    return folder


def _write_10x_h5(path: Path, template: Path, X: sp.csr_matrix, barcodes: list[str]) -> None:
    """The template's 10x HDF5 with another matrix and barcodes (same features)."""
    shutil.copyfile(template, path)
    path.chmod(0o644)
    with h5py.File(path, "r+") as f:
        m = f["matrix"]
        for k in ("data", "indices", "indptr", "barcodes", "shape"):
            del m[k]
        X = sp.csr_matrix(X)
        m["data"] = X.data.astype(np.int32)
        m["indices"] = X.indices.astype(np.int64)
        m["indptr"] = X.indptr.astype(np.int64)
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        m["shape"] = np.array([X.shape[1], X.shape[0]], dtype=np.int32)


def _raw_matrix(src: Source, barcodes: list[str]) -> sp.csr_matrix:
    """Counts for ``barcodes``: the filtered spots keep theirs, every other barcode gets a
    few counts of its own (nonzero, so a barcode wrongly kept changes the sums)."""
    rows = {b: i for i, b in enumerate(src.barcodes)}
    n_genes = src.X.shape[1]
    out = sp.lil_matrix((len(barcodes), n_genes), dtype=np.int64)
    for i, b in enumerate(barcodes):
        if b in rows:
            out[i] = src.X[rows[b]].toarray()
        else:
            out[i, i % n_genes] = i % 5 + 1
    return out.tocsr()


# --- the count matrix ------------------------------------------------------------------------

MTX_VARIANTS = {
    # (matrix, features, barcodes gzipped), features file, its columns
    "spaceranger_gz": ((True, True, True), "features.tsv", 3),
    "uncompressed": ((False, False, False), "features.tsv", 3),
    "matrix_gz_tsv_plain": ((True, False, False), "features.tsv", 3),
    "genes_tsv_2col": ((False, False, False), "genes.tsv", 2),
    "genes_tsv_gz_2col": ((True, True, True), "genes.tsv", 2),
    "genes_tsv_3col": ((False, False, True), "genes.tsv", 3),
}


@pytest.mark.parametrize("variant", sorted(MTX_VARIANTS))
def test_filtered_mtx_folder(src, tmp_path, variant):
    gz, features, n_cols = MTX_VARIANTS[variant]
    dst = _copy(src, tmp_path / "heart")
    (dst / "filtered_feature_bc_matrix.h5").unlink()
    folder = _write_mtx_folder(
        dst / "filtered_feature_bc_matrix",
        src.X,
        src.barcodes,
        src.ids,
        src.names,
        gz=gz,
        features=features,
        n_cols=n_cols,
    )
    a = _read(dst)
    _assert_like_source(a, src)
    meta = a.uns["spatial"]["heart"]["metadata"]
    assert meta["matrix"] == str(folder) and meta["matrix_kind"] == "filtered"
    m = read_mtx_folder(folder)
    assert m.shape == (N_SPOTS, 100)
    assert ("feature_types" in m.var) == (n_cols == 3)


def test_legacy_gene_bc_matrices_genome_folder(src, tmp_path):
    dst = _copy(src, tmp_path / "heart")
    (dst / "filtered_feature_bc_matrix.h5").unlink()
    legacy = dst / "filtered_gene_bc_matrices"
    _write_mtx_folder(
        legacy / "GRCh38",
        src.X,
        src.barcodes,
        src.ids,
        src.names,
        gz=(False, False, False),
        features="genes.tsv",
        n_cols=2,
    )
    _assert_like_source(_read(dst), src)
    # two genomes: the reader cannot choose, and says how to
    shutil.copytree(legacy / "GRCh38", legacy / "mm10")
    with pytest.raises(SpatialFormatError, match=r"GRCh38, mm10.*count_file="):
        _read(dst)
    _assert_like_source(_read(dst, count_file="filtered_gene_bc_matrices/mm10"), src)


def test_raw_mtx_folder_uncompressed_is_cut_to_the_tissue(src, tmp_path, caplog):
    """The issue's case: outs/raw_feature_bc_matrix/ with matrix.mtx, features.tsv and
    barcodes.tsv, no .gz, holding every barcode of the slide."""
    dst = _copy(src, tmp_path / "heart")
    (dst / "filtered_feature_bc_matrix.h5").unlink()
    every = list(src.pos.index)
    raw = _raw_matrix(src, every)
    _write_mtx_folder(
        dst / "raw_feature_bc_matrix", raw, every, src.ids, src.names, gz=(False, False, False)
    )
    caplog.set_level(logging.INFO, logger=LOGGER)
    a = _read(dst)
    on = src.pos["in_tissue"].to_numpy() == 1
    assert a.n_obs == N_IN_TISSUE == int(on.sum())
    assert _barcodes(a) == [b for b, k in zip(every, on, strict=True) if k]
    assert not set(_barcodes(a)) & set(src.pos.index[~on])
    assert a.X.sum() == raw[on].sum() and a.X.sum() < raw.sum()
    rows = [_barcodes(a).index(b) for b in src.barcodes]
    assert (a.X[rows] != src.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["spatial"], src.xy(_barcodes(a)))
    assert a.uns["spatial"]["heart"]["metadata"]["matrix_kind"] == "raw"
    assert (
        f"raw matrix (all {N_POSITIONS} barcodes); keeping the {N_IN_TISSUE} spots" in caplog.text
    )
    # every barcode when asked, with the flag kept in obs
    b = _read(dst, in_tissue_only=False)
    assert b.n_obs == N_POSITIONS and int(b.obs["in_tissue"].sum()) == N_IN_TISSUE
    assert b.X.sum() == raw.sum()


def test_raw_h5_with_off_tissue_barcodes(src, tmp_path):
    dst = _copy(src, tmp_path / "heart")
    (dst / "filtered_feature_bc_matrix.h5").unlink()
    off = list(src.pos.index[src.pos["in_tissue"] == 0][:250])
    barcodes = off[:120] + src.barcodes + off[120:]
    raw = _raw_matrix(src, barcodes)
    _write_10x_h5(
        dst / "raw_feature_bc_matrix.h5", src.root / "filtered_feature_bc_matrix.h5", raw, barcodes
    )
    a = _read(dst)
    _assert_like_source(a, src)
    assert a.uns["spatial"]["heart"]["metadata"]["matrix_kind"] == "raw"
    assert raw.sum() > TOTAL_COUNTS  # the off-tissue barcodes had counts


def test_filtered_is_preferred_over_raw(src, tmp_path):
    dst = _copy(src, tmp_path / "heart")
    every = list(src.pos.index)
    _write_mtx_folder(
        dst / "raw_feature_bc_matrix", _raw_matrix(src, every), every, src.ids, src.names
    )
    a = _read(dst)
    _assert_like_source(a, src)
    meta = a.uns["spatial"]["heart"]["metadata"]
    assert meta["matrix_kind"] == "filtered"
    assert meta["matrix"] == str(dst / "filtered_feature_bc_matrix.h5")


# --- spot positions --------------------------------------------------------------------------


def _rewrite_positions(src: Source, spatial: Path, variant: str) -> str:
    """Replace the positions file by ``variant``; the name of the file written."""
    (spatial / "tissue_positions_list.csv").unlink()
    df = src.pos.reset_index()
    if variant == "csv_header":  # Space Ranger 2.0+
        df.to_csv(spatial / "tissue_positions.csv", index=False)
        return "tissue_positions.csv"
    if variant == "csv_no_header":
        df.to_csv(spatial / "tissue_positions.csv", index=False, header=False)
        return "tissue_positions.csv"
    if variant == "list_with_header":
        df.to_csv(spatial / "tissue_positions_list.csv", index=False)
        return "tissue_positions_list.csv"
    if variant == "csv_header_other_order":
        df[POSITION_COLUMNS[::-1]].to_csv(spatial / "tissue_positions.csv", index=False)
        return "tissue_positions.csv"
    if variant == "parquet":
        df.to_parquet(spatial / "tissue_positions.parquet", index=False)
        return "tissue_positions.parquet"
    if variant == "parquet_barcode_index":
        src.pos.to_parquet(spatial / "tissue_positions.parquet")
        return "tissue_positions.parquet"
    raise AssertionError(variant)


@pytest.mark.parametrize(
    "variant",
    [
        "csv_header",
        "csv_no_header",
        "list_with_header",
        "csv_header_other_order",
        "parquet",
        "parquet_barcode_index",
    ],
)
def test_positions_file(src, tmp_path, variant):
    dst = _copy(src, tmp_path / "heart")
    name = _rewrite_positions(src, dst / "spatial", variant)
    a = _read(dst)
    _assert_like_source(a, src)
    assert a.uns["spatial"]["heart"]["metadata"]["positions"] == str(dst / "spatial" / name)
    np.testing.assert_array_equal(a.obs["array_row"], src.pos.loc[src.barcodes, "array_row"])
    np.testing.assert_array_equal(a.obs["array_col"], src.pos.loc[src.barcodes, "array_col"])


def test_positions_without_header_of_the_wrong_width(src, tmp_path):
    dst = _copy(src, tmp_path / "heart")
    pos = dst / "spatial" / "tissue_positions_list.csv"
    src.pos.reset_index().iloc[:, :5].to_csv(pos, index=False, header=False)
    with pytest.raises(
        SpatialFormatError, match=r"tissue_positions_list\.csv: 5 columns without a header"
    ):
        _read(dst)


# --- the spatial images ----------------------------------------------------------------------


def test_lowres_image_only(src, tmp_path):
    from PIL import Image

    dst = _copy(src, tmp_path / "heart")
    (dst / "spatial" / "tissue_hires_image.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = read_visium(dst)
    assert not [w for w in caught if "blank" in str(w.message)]
    _assert_like_source(a, src)
    lib = a.uns["spatial"]["heart"]
    assert set(lib["images"]) == {"lowres"} and lib["metadata"]["blank_images"] == []
    with Image.open(src.root / "spatial" / "tissue_lowres_image.png") as im:
        np.testing.assert_array_equal(lib["images"]["lowres"], np.asarray(im.convert("RGB")))
    assert lib["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(0.045004502)
    assert lib["metadata"]["mpp"] == pytest.approx(65 / 89.42751063343188)


def test_no_image_at_all(src, tmp_path):
    dst = _copy(src, tmp_path / "heart")
    for name in ("tissue_hires_image.png", "tissue_lowres_image.png"):
        (dst / "spatial" / name).unlink()
    a = _read(dst)
    _assert_like_source(a, src)
    assert a.uns["spatial"]["heart"]["images"] == {}
    assert a.uns["spatial"]["heart"]["metadata"]["mpp"] == pytest.approx(65 / 89.42751063343188)


# --- outs/ or the run folder above it --------------------------------------------------------


def test_given_outs(src, tmp_path, caplog):
    outs = _copy(src, tmp_path / "run1" / "outs")
    caplog.set_level(logging.INFO, logger=LOGGER)
    a = _read(outs)
    _assert_like_source(a, src)
    # the library is named after the run, not "outs"
    assert list(a.uns["spatial"]) == ["run1"] and set(a.obs["sample"]) == {"run1"}
    assert f"reading Space Ranger output {outs}: it holds spatial/" in caplog.text
    assert find_visium_outs(outs) == (outs, "it holds spatial/")


def test_given_the_run_folder_above_outs(src, tmp_path, caplog):
    run = tmp_path / "run1"
    outs = _copy(src, run / "outs")
    caplog.set_level(logging.INFO, logger=LOGGER)
    a = _read(run)
    _assert_like_source(a, src)
    assert list(a.uns["spatial"]) == ["run1"]
    assert a.uns["spatial"]["run1"]["metadata"]["matrix"] == str(
        outs / "filtered_feature_bc_matrix.h5"
    )
    msg = [r.getMessage() for r in caplog.records if r.name == LOGGER and "reading" in r.message]
    assert msg == [
        f"{run}: reading Space Ranger output {outs}: the given folder has no spatial/, its outs/ "
        f"does (a Space Ranger run folder)"
    ]
    assert detect_format(run) == "visium"
    b = _read_spatial(run)
    assert (b.X != a.X).nnz == 0 and list(b.obs_names) == list(a.obs_names)


def _read_spatial(path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*blank")
        return read_spatial(path)


def test_spatial_in_both_the_folder_and_outs(src, tmp_path):
    run = _copy(src, tmp_path / "run1")
    _copy(src, run / "outs")
    folder, why = find_visium_outs(run)
    assert folder == run and why == "it holds spatial/; its outs/ is ignored"


# --- what is missing, said with the folder and the layouts accepted ---------------------------


ACCEPTED = (
    "filtered_feature_bc_matrix.h5, raw_feature_bc_matrix.h5, or a filtered_feature_bc_matrix/ "
    "or raw_feature_bc_matrix/ folder with matrix.mtx[.gz], features.tsv[.gz] (or genes.tsv[.gz]) "
    "and barcodes.tsv[.gz]"
)


@pytest.mark.parametrize("given", ["outs", "run"])
def test_missing_matrix_names_the_folder_and_the_layouts(src, tmp_path, given):
    run = tmp_path / "run1"
    outs = _copy(src, run / "outs")
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(MissingSpatialFileError) as err:
        _read(outs if given == "outs" else run)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert msg.startswith(f"{outs}: no count matrix; expected {ACCEPTED}")
    assert "filtered_gene_bc_matrices/<genome>/" in msg and "count_file=" in msg


def test_missing_pieces_name_themselves(src, tmp_path):
    dst = _copy(src, tmp_path / "heart")
    # a folder that is no Space Ranger output at all
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        MissingSpatialFileError,
        match=rf"^{re.escape(str(empty))}: not a Space Ranger output folder.*"
        + re.escape(ACCEPTED),
    ):
        _read(empty)
    # the spatial/ folder itself given
    with pytest.raises(
        MissingSpatialFileError, match="spatial/ folder itself: give the folder above it"
    ):
        _read(dst / "spatial")
    # a matrix folder without its barcodes
    (dst / "filtered_feature_bc_matrix.h5").unlink()
    mtx = _write_mtx_folder(
        dst / "filtered_feature_bc_matrix", src.X, src.barcodes, src.ids, src.names
    )
    (mtx / "barcodes.tsv.gz").unlink()
    with pytest.raises(
        MissingSpatialFileError,
        match=rf"^{re.escape(str(mtx))}: matrix folder without its barcodes file; expected "
        r"barcodes\.tsv\.gz or barcodes\.tsv$",
    ):
        _read(dst)
    # barcodes of another matrix
    _write_tsv(mtx / "barcodes.tsv", [[b] for b in src.barcodes[:99]])
    with pytest.raises(
        SpatialFormatError, match=r"100 barcodes, but .*barcodes\.tsv 99; are the three files"
    ):
        _read(dst)
    _write_tsv(mtx / "barcodes.tsv", [[b] for b in src.barcodes])
    _assert_like_source(_read(dst), src)
    # no positions
    spatial = dst / "spatial"
    (spatial / "tissue_positions_list.csv").unlink()
    with pytest.raises(
        MissingSpatialFileError,
        match=rf"^{re.escape(str(spatial))}: no spot positions; expected "
        r"tissue_positions\.parquet, tissue_positions\.csv, tissue_positions_list\.csv",
    ):
        _read(dst)
    # no spatial/ at all
    shutil.rmtree(spatial)
    with pytest.raises(
        MissingSpatialFileError,
        match=rf"^{re.escape(str(dst))}: no spatial/ folder; expected spatial/ with",
    ):
        _read(dst)
    with pytest.raises(MissingSpatialFileError, match=r"count_file='nope\.h5' not found"):
        _read(dst, count_file="nope.h5")


def test_build_recipe_finds_runs_at_outs_at_the_run_folder_or_below(src, tmp_path):
    """``build --recipe visium --src`` takes outs/, the run folder, or a folder of runs; the
    dataset fingerprint covers the files the reader reads, not the BAM beside them."""
    from histoxmodal.data.recipes import find_samples, load_recipe

    recipe = load_recipe("visium")
    runs = tmp_path / "runs"
    outs1 = _copy(src, runs / "heart1" / "outs")
    outs2 = _copy(src, runs / "heart2")  # a bare outs/ under another name
    (outs1 / "possorted_genome_bam.bam").write_bytes(b"\0" * 1024)
    (outs1 / "analysis").mkdir()
    (outs1 / "analysis" / "clusters.csv").write_text("Barcode,Cluster\n")
    expected = sorted(
        [outs1 / "filtered_feature_bc_matrix.h5"]
        + [outs1 / "spatial" / p.name for p in (src.root / "spatial").iterdir()]
    )
    for given in (outs1, runs / "heart1"):
        (ref,) = find_samples(recipe, [given])
        assert ref.sample == "heart1" and ref.inputs == expected
    refs = find_samples(recipe, [runs])
    assert [r.sample for r in refs] == ["heart1", "heart2"]
    assert refs[1].inputs[0] == outs2 / "filtered_feature_bc_matrix.h5"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*blank")
        a = refs[0].load()
    _assert_like_source(a, src)
    with pytest.raises(ConfigError, match=r"--src .*empty: no Space Ranger output here or one"):
        (tmp_path / "empty").mkdir()
        find_samples(recipe, [tmp_path / "empty"])
