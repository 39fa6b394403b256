"""A small HESCAPE panel in HESCAPE's own schema, with the truth it was made from.

What HESCAPE publishes (see :mod:`histoxmodal.io.spatial.hescape`): rows of ``name``
(``ClassLabel``), ``image`` (``Image``: PNG bytes of an H&E crop centred on the spot), ``gexp``
(``Array2D (1, n_genes)`` of raw counts), ``cell_coords`` and about twenty metadata columns, as
Parquet shards (and here, optionally, a ``datasets`` ``save_to_disk`` folder); the split CSVs
with HEST's metadata columns and ``pixel_size_um_estimated``; and the gene reference
``nicheformer_reference.h5ad``. For tests of ``histoxmodal build --recipe hescape``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["HescapeSampleSpec", "SyntheticHescape", "make_hescape_dataset"]

#: the split CSVs' columns, in HESCAPE's order (its data/<panel>/train.csv)
SPLIT_COLUMNS = (
    "dataset_title",
    "gene_panel",
    "id",
    "organ",
    "disease_state",
    "patient",
    "preservation_method",
    "pixel_size_um_estimated",
    "magnification",
)
#: the rows' string metadata (the dataset card's columns after ``cell_coords``)
STRING_COLUMNS = (
    "source",
    "atlas",
    "age",
    "diagnosis",
    "oncotree_code",
    "tumor_grade",
    "gender",
    "race",
    "treatment_type",
    "therapeutic_agents",
    "tumor_tissue_type",
    "assay",
    "preservation_method",
    "stain",
    "spaceranger",
    "species",
    "cytassist",
)
GENES = ("ACTA2", "KRT8", "EPCAM", "PTPRC", "CD68", "COL1A1", "ERBB2", "MKI67", "VIM", "PECAM1")


@dataclass(frozen=True)
class HescapeSampleSpec:
    """One sample of the generated panel.

    Attributes
    ----------
    name
        Sample id (HEST's ``TENX95``-style id).
    split
        ``train``, ``val``, ``test``, or ``None``: rows in the dataset but in no split CSV.
    n_rows
        Pseudo-spots (rows).
    mpp
        µm per pixel of its crops (``pixel_size_um_estimated``).
    crop_px
        ``(height, width)`` of its H&E crops in pixels.
    patient
        HEST's patient label, ``None`` for an empty cell (as in several HESCAPE CSVs).
    """

    name: str
    split: str | None
    n_rows: int
    mpp: float
    crop_px: tuple[int, int]
    patient: str | None = None


DEFAULT_SAMPLES = (
    HescapeSampleSpec("TENX901", "train", 9, 0.5, (48, 48), "patient 1"),
    HescapeSampleSpec("TENX902", "train", 7, 0.25, (96, 96), None),
    HescapeSampleSpec("NCBI903", "val", 6, 0.4, (64, 80), "patient 3"),
    HescapeSampleSpec("TENX904", "test", 5, 0.5, (40, 40), "patient 4"),
)


@dataclass(frozen=True)
class SyntheticHescape:
    """What :func:`make_hescape_dataset` wrote, and the truth.

    Attributes
    ----------
    root
        The folder written.
    parquet_dir
        The Parquet shards' folder (``root/hf/<panel>``, the Hub's layout).
    parquet_files
        The shards, in order.
    disk_dir
        The ``save_to_disk`` folder (``root/disk/<panel>.dataset``), or ``None``.
    split_dir
        ``root/data/<panel>``: ``train.csv``, ``val.csv``, ``test.csv`` and the reference.
    reference
        ``nicheformer_reference.h5ad``.
    genes
        Gene symbols, the columns of ``gexp`` in order.
    names
        ``(n_rows,)`` sample id of each row, in row order.
    counts
        ``(n_rows, n_genes)`` int64 raw counts, in row order.
    images
        Each row's crop, ``(h, w, 3)`` uint8, in row order.
    centres
        ``(n_rows, 2)`` spot centres (the mean of each row's ``cell_coords``).
    samples
        The samples' specs (after ``val_equals_test``), by name.
    splits
        ``{"train": [...], "val": [...], "test": [...]}`` as the CSVs list them.
    """

    root: Path
    parquet_dir: Path
    parquet_files: list[Path]
    disk_dir: Path | None
    split_dir: Path
    reference: Path
    genes: list[str]
    names: np.ndarray
    counts: np.ndarray
    images: list[np.ndarray]
    centres: np.ndarray
    samples: dict[str, HescapeSampleSpec]
    splits: dict[str, list[str]]

    def rows_of(self, sample: str) -> np.ndarray:
        """Row indices of ``sample``, in row order."""
        return np.flatnonzero(self.names == sample)


def _features(sample_names: list[str], tissues: list[str], n_genes: int, dtype: str) -> dict:
    """The Hugging Face feature types of the rows, as ``datasets`` writes them."""
    value = {"dtype": "string", "_type": "Value"}
    return {
        "name": {"names": sample_names, "_type": "ClassLabel"},
        "image": {"_type": "Image"},
        "gexp": {"shape": [1, n_genes], "dtype": dtype, "_type": "Array2D"},
        "cell_coords": {"shape": [None, 2], "dtype": "float32", "_type": "Array2D"},
        "source": value,
        "atlas": value,
        "age": value,
        "diagnosis": value,
        "cancer": {"dtype": "bool", "_type": "Value"},
        "oncotree_code": value,
        "tissue": {"names": tissues, "_type": "ClassLabel"},
        **{c: value for c in STRING_COLUMNS[4:]},
    }


def _array2d(values: list[np.ndarray], shape: list, dtype: str):
    """An ``Array2D`` column as ``datasets`` stores it: nested lists whose field metadata name
    the extension type (pyarrow reads it so when ``datasets`` is not loaded)."""
    import pyarrow as pa

    inner = pa.from_numpy_dtype(np.dtype(dtype))
    arr = pa.array([v.tolist() for v in values], type=pa.list_(pa.list_(inner)))
    meta = {
        b"ARROW:extension:name": b"datasets.features.features.Array2DExtensionType",
        b"ARROW:extension:metadata": json.dumps([shape, dtype]).encode(),
    }
    return arr, meta


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_hescape_dataset(
    out: str | Path,
    *,
    panel: str = "human-test-panel",
    samples: tuple[HescapeSampleSpec, ...] = DEFAULT_SAMPLES,
    n_genes: int = 10,
    rows_per_shard: int = 8,
    row_group_size: int = 4,
    gexp_dtype: str = "float32",
    val_equals_test: bool = False,
    save_to_disk: bool = False,
    shuffle: bool = True,
    seed: int = 0,
) -> SyntheticHescape:
    """Write a small HESCAPE panel under ``out``.

    Layout (HESCAPE's: the Hub's shards and the hescape repository's ``data/<panel>/``)::

        out/hf/<panel>/train-0000k-of-0000n.parquet
        out/data/<panel>/{train,val,test}.csv, nicheformer_reference.h5ad
        out/disk/<panel>.dataset/            (save_to_disk=True: data-*.arrow, state.json, ...)

    Parameters
    ----------
    samples
        The samples; a spec with ``split=None`` has rows but no line in any split CSV.
    n_genes
        Genes of the panel (the reference's var names, ``gexp``'s width).
    rows_per_shard, row_group_size
        Parquet shard and row-group sizes, small so that batches cross both.
    gexp_dtype
        dtype of ``gexp`` (the counts are whole numbers in any dtype).
    val_equals_test
        Write ``val.csv`` as a copy of ``test.csv``, HESCAPE's skin panel: the ``val`` samples
        move to test.
    save_to_disk
        Also write the rows with ``datasets``' ``save_to_disk`` (needs ``datasets``); ``out``
        then holds two copies of the rows, so give the reader ``out/disk`` or ``out/hf`` with
        ``out/data``.
    shuffle
        Interleave the samples' rows (row order then says nothing of the sample).

    Returns
    -------
    SyntheticHescape
    """
    import anndata as ad
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if n_genes > len(GENES) + 990:
        raise ValueError(f"n_genes={n_genes}: at most {len(GENES) + 990}")
    root = Path(out)
    rng = np.random.default_rng(seed)
    specs = [
        HescapeSampleSpec(s.name, "test", s.n_rows, s.mpp, s.crop_px, s.patient)
        if val_equals_test and s.split == "val"
        else s
        for s in samples
    ]
    genes = [*GENES[:n_genes], *(f"GENE{i:03d}" for i in range(max(0, n_genes - len(GENES))))]
    names = np.concatenate([np.full(s.n_rows, s.name, dtype=object) for s in specs])
    order = rng.permutation(len(names)) if shuffle else np.arange(len(names))
    names = names[order]
    spec_of = {s.name: s for s in specs}
    programmes = rng.gamma(1.0, 4.0, (len(specs), n_genes))
    index = {s.name: k for k, s in enumerate(specs)}
    counts = rng.poisson(programmes[[index[n] for n in names]]).astype(np.int64)
    images, centres, coords = [], [], []
    for n in names:
        h, w = spec_of[n].crop_px
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        c = rng.uniform(500, 5000, 2)
        pts = c + rng.normal(0, 10, (int(rng.integers(1, 5)), 2))
        pts -= pts.mean(axis=0) - c  # the points' mean is the centre, exactly
        centres.append(pts.mean(axis=0))
        coords.append(pts.astype(np.float32))
    sample_names = sorted(spec_of)
    tissues = ["breast", "skin"]
    feats = _features(sample_names, tissues, n_genes, gexp_dtype)
    gexp, gexp_meta = _array2d(
        [c[None].astype(gexp_dtype) for c in counts], [1, n_genes], gexp_dtype
    )
    xy, xy_meta = _array2d(coords, [None, 2], "float32")
    n = len(names)
    code = {s: i for i, s in enumerate(sample_names)}
    strings = {c: [""] * n for c in STRING_COLUMNS}
    strings.update(
        source=["hest"] * n,
        diagnosis=["cancer"] * n,
        oncotree_code=["IDC"] * n,
        assay=["Xenium"] * n,
        preservation_method=["FFPE"] * n,
        stain=["HnE"] * n,
        species=["Homo sapiens"] * n,
        cytassist=["False"] * n,
    )
    columns = {
        "name": pa.array([code[s] for s in names], pa.int64()),
        "image": pa.array(
            [{"bytes": _png(im), "path": None} for im in images],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        ),
        "gexp": gexp,
        "cell_coords": xy,
        **{c: pa.array(strings[c], pa.string()) for c in STRING_COLUMNS[:4]},
        "cancer": pa.array([True] * n),
        "oncotree_code": pa.array(strings["oncotree_code"], pa.string()),
        "tissue": pa.array([i % 2 for i in range(n)], pa.int64()),
        **{c: pa.array(strings[c], pa.string()) for c in STRING_COLUMNS[4:]},
    }
    fields = [
        pa.field(k, v.type, metadata={"gexp": gexp_meta, "cell_coords": xy_meta}.get(k))
        for k, v in columns.items()
    ]
    meta = {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}
    table = pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields, metadata=meta))
    parquet_dir = root / "hf" / panel
    parquet_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-n // rows_per_shard))
    files = []
    for k in range(n_shards):
        f = parquet_dir / f"train-{k:05d}-of-{n_shards:05d}.parquet"
        part = table.slice(k * rows_per_shard, rows_per_shard)
        pq.write_table(part, f, row_group_size=row_group_size)
        files.append(f)
    disk_dir = None
    if save_to_disk:
        import datasets

        disk_dir = root / "disk" / f"{panel}.dataset"
        ds = datasets.Dataset.from_dict(
            {c: table.column(c).to_pylist() for c in table.column_names},
            features=datasets.Features.from_dict(feats),
        )
        ds.save_to_disk(str(disk_dir), num_shards=2)
    split_dir = root / "data" / panel
    split_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        which = "test" if (split == "val" and val_equals_test) else split
        rows = [
            {
                "dataset_title": f"Synthetic {s.name} (Xenium Human Test Panel)",
                "gene_panel": panel.replace("-", "_"),
                "id": s.name,
                "organ": "Breast",
                "disease_state": "Cancer",
                "patient": s.patient,
                "preservation_method": "FFPE",
                "pixel_size_um_estimated": s.mpp,
                "magnification": "40x",
            }
            for s in specs
            if s.split == which
        ]
        pd.DataFrame(rows, columns=list(SPLIT_COLUMNS)).to_csv(
            split_dir / f"{split}.csv", index=False
        )
        splits[split] = [r["id"] for r in rows]
    ref = ad.AnnData(
        rng.poisson(2.0, (10, n_genes)).astype(np.int64),
        obs=pd.DataFrame(
            {"name": pd.Categorical([sample_names[0]] * 10)},
            index=[f"{i:03d}x001" for i in range(10)],
        ),
        var=pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)]}, index=genes),
    )
    ref.layers["counts"] = ref.X.copy()
    reference = split_dir / "nicheformer_reference.h5ad"
    ref.write_h5ad(reference)
    return SyntheticHescape(
        root=root,
        parquet_dir=parquet_dir,
        parquet_files=files,
        disk_dir=disk_dir,
        split_dir=split_dir,
        reference=reference,
        genes=genes,
        names=np.asarray(names, dtype=str),
        counts=counts,
        images=images,
        centres=np.asarray(centres),
        samples=spec_of,
        splits=splits,
    )
