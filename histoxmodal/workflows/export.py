"""Exports of a paired dataset to formats other tools read.

- :func:`export_parquet`: Parquet shards with one row per spot: the patch as PNG bytes (the
  Hugging Face ``datasets`` ``Image`` feature), raw counts of the gene panel, and metadata, the
  layout HESCAPE distributes. ``datasets.load_dataset("parquet", data_dir=OUT)`` loads it.
- :func:`export_hest`: HEST-1k style ``patches/<sample>.h5`` (datasets ``img``, ``coords``,
  ``barcode``) and ``st/<sample>.h5ad`` per sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.fileutil import write_json_atomic


def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def export_parquet(path: str | Path, out: str | Path, *, rows_per_shard: int = 2000) -> list[Path]:
    """Write the paired dataset as Parquet shards ``out/data/data-00000-of-000NN.parquet``.

    Columns: ``image`` (struct ``{bytes: PNG, path: null}``), ``expression`` (list of int32 raw
    counts, genes in ``out/genes.txt`` and the schema metadata), ``spot_id``, ``sample``,
    ``patient``, ``batch``, ``x``, ``y`` (full-resolution pixels), ``patch_at_border``.
    The Hugging Face feature types are stored in the schema, so ``datasets`` decodes ``image``
    to a PIL image.

    Returns
    -------
    list[Path]
        The shard files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from histoxmodal.data.store import load_paired

    adata, patches = load_paired(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    genes = [str(g) for g in adata.var_names]
    (out / "genes.txt").write_text("\n".join(genes) + "\n", encoding="utf-8")
    X = sp.csr_matrix(adata.X)
    xy = np.asarray(adata.obsm[keys.OBSM_SPATIAL], np.float64)
    features = {
        "image": {"_type": "Image"},
        "expression": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"},
        **{
            k: {"dtype": "string", "_type": "Value"}
            for k in ("spot_id", "sample", "patient", "batch")
        },
        "x": {"dtype": "float64", "_type": "Value"},
        "y": {"dtype": "float64", "_type": "Value"},
        "patch_at_border": {"dtype": "bool", "_type": "Value"},
    }
    meta = {
        b"huggingface": json.dumps({"info": {"features": features}}).encode(),
        b"histoxmodal.genes": json.dumps(genes).encode(),
    }
    n = adata.n_obs
    n_shards = max(1, -(-n // rows_per_shard))
    files = []
    border = adata.obs.get(keys.OBS_PATCH_BORDER, np.zeros(n, bool))
    for k in range(n_shards):
        sl = slice(k * rows_per_shard, min(n, (k + 1) * rows_per_shard))
        rows = range(sl.start, sl.stop)
        dense = X[sl].toarray().astype(np.int32)
        table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": _png(np.asarray(patches[i])), "path": None} for i in rows],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                ),
                "expression": pa.array(list(dense), type=pa.list_(pa.int32())),
                "spot_id": pa.array([str(s) for s in adata.obs_names[sl]]),
                "sample": pa.array(adata.obs[keys.OBS_SAMPLE].astype(str).to_numpy()[sl]),
                "patient": pa.array(adata.obs[keys.OBS_PATIENT].astype(str).to_numpy()[sl]),
                "batch": pa.array(adata.obs[keys.OBS_BATCH].astype(str).to_numpy()[sl]),
                "x": pa.array(xy[sl, 0]),
                "y": pa.array(xy[sl, 1]),
                "patch_at_border": pa.array(np.asarray(border, bool)[sl]),
            }
        ).replace_schema_metadata(meta)
        (out / "data").mkdir(exist_ok=True)
        f = out / "data" / f"data-{k:05d}-of-{n_shards:05d}.parquet"
        tmp = f.with_suffix(".parquet.partial")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, f)
        files.append(f)
    return files


def export_hest(path: str | Path, out: str | Path) -> list[Path]:
    """Write HEST-1k style files: ``out/patches/<sample>.h5`` and ``out/st/<sample>.h5ad``.

    Each ``.h5`` holds ``img`` ``(n, px, px, 3)`` uint8, ``coords`` ``(n, 2)`` (spot centres in
    full-resolution pixels) and ``barcode`` ``(n, 1)`` bytes, the keys HEST's loaders read; the
    ``img`` attributes record the patch field of view and pixel size.
    """
    import h5py

    from histoxmodal.data.store import load_paired

    adata, patches = load_paired(path)
    out = Path(out)
    (out / "patches").mkdir(parents=True, exist_ok=True)
    (out / "st").mkdir(parents=True, exist_ok=True)
    cfg = adata.uns.get("histoxmodal", {})
    files = []
    for sample in adata.obs[keys.OBS_SAMPLE].astype(str).unique():
        rows = np.flatnonzero(adata.obs[keys.OBS_SAMPLE].astype(str) == sample)
        f = out / "patches" / f"{sample}.h5"
        tmp = f.with_suffix(".h5.partial")
        with h5py.File(tmp, "w") as h:
            d = h.create_dataset(
                "img",
                data=np.asarray(patches[rows[0] : rows[-1] + 1]),
                chunks=(1, *patches.shape[1:]),
            )
            d.attrs["patch_um"] = cfg.get("patch_um", np.nan)
            d.attrs["pixel_size_um"] = cfg.get("patch_um", np.nan) / cfg.get("patch_px", 1)
            h.create_dataset("coords", data=np.asarray(adata.obsm[keys.OBSM_SPATIAL])[rows])
            barcodes = [n.split(":", 1)[-1] for n in adata.obs_names[rows]]
            h.create_dataset("barcode", data=np.asarray(barcodes, dtype="S")[:, None])
        os.replace(tmp, f)
        sub = adata[rows].copy()
        sub.uns[keys.UNS_SPATIAL] = {sample: adata.uns[keys.UNS_SPATIAL][sample]}
        sub.write_h5ad(out / "st" / f"{sample}.h5ad")
        files.append(f)
    write_json_atomic(
        out / "export.json",
        {"source": str(Path(path).resolve()), "samples": [p.stem for p in files]},
    )
    return files
