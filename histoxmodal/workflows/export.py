"""Exports of a paired dataset to formats other tools read.

- :func:`export_parquet`: Parquet shards with one row per spot: the patch as PNG bytes (the
  Hugging Face ``datasets`` ``Image`` feature), raw counts of the gene panel, and metadata, the
  layout HESCAPE distributes. ``datasets.load_dataset("parquet", data_dir=OUT)`` loads it.
- :func:`export_hest`: HEST-1k style ``patches/<sample>.h5`` (datasets ``img``, ``coords``,
  ``barcode``) and ``st/<sample>.h5ad`` per sample.
- :func:`export_spatialdata`: one SpatialData zarr store, written by ``spatialdata``'s own
  writer, that ``spatialdata.read_zarr`` (napari-spatialdata, LazySlide, squidpy) and
  :func:`histoxmodal.io.read_spatial` open; :func:`to_spatialdata` builds the object from any
  AnnData in the package's layout.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.fileutil import (
    check_output_location,
    check_replaceable,
    clean_stale,
    output_lock,
    publish_dir,
    staging_dir,
    write_json_atomic,
)

log = logging.getLogger(__name__)


def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


#: the manifest every folder export (parquet, hest) writes; it marks the folder as ours
EXPORT_MANIFEST = "export.json"


def _export_format(folder: Path) -> str | None:
    """The format of the earlier histoxmodal export in ``folder``, or None when it is not one."""
    try:
        info = json.loads((folder / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or "source" not in info:
        return None
    return str(info.get("format", "hest"))  # exports before 0.x wrote hest manifests only


def _write_export_json(out: Path, source: str | Path, fmt: str, **fields: object) -> None:
    from histoxmodal.version import __version__

    write_json_atomic(
        out / EXPORT_MANIFEST,
        {
            "format": fmt,
            "source": str(Path(source).resolve()),
            "histoxmodal_version": __version__,
            **fields,
        },
    )


@contextmanager
def export_folder(
    source: str | Path, out: str | Path, *, overwrite: bool, kind: str
) -> Iterator[Path]:
    """Stage an export of ``source`` and swap it in as the whole of ``out`` when it succeeds.

    Before anything is written, ``out`` is checked: not a file, not the current folder or a
    parent of it, not inside or around ``source``, and either absent, empty, or an earlier
    ``kind`` export of ours with ``overwrite``. Old and new files are never mixed: the staged
    folder replaces ``out`` in one rename, and a failed export leaves ``out`` as it was.

    Yields
    ------
    Path
        The staging folder to write into.
    """
    out = Path(out)
    check_output_location(out, inputs=[source])
    check_replaceable(
        out,
        overwrite=overwrite,
        is_ours=lambda p: _export_format(p) == kind,
        kind=f"a histoxmodal {kind} export (with its {EXPORT_MANIFEST})",
    )
    with output_lock(out):  # a second export to `out` would remove this one's staging folder
        clean_stale(out.parent, out.name)
        tmp = staging_dir(out)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, out)


def export_parquet(
    path: str | Path, out: str | Path, *, rows_per_shard: int = 2000, overwrite: bool = False
) -> list[Path]:
    """Write the paired dataset as Parquet shards ``out/data/data-00000-of-000NN.parquet``.

    Columns: ``image`` (struct ``{bytes: PNG, path: null}``), ``expression`` (list of int32 raw
    counts, genes in ``out/genes.txt`` and the schema metadata), ``spot_id``, ``sample``,
    ``patient``, ``batch``, ``x``, ``y`` (full-resolution pixels), ``patch_at_border``.
    The Hugging Face feature types are stored in the schema, so ``datasets`` decodes ``image``
    to a PIL image. ``out/export.json`` records the source and the shards.

    The folder is written whole (see :func:`export_folder`): an earlier export is replaced only
    with ``overwrite``, never merged with, and any other non-empty folder is refused.

    Returns
    -------
    list[Path]
        The shard files.
    """
    with export_folder(path, out, overwrite=overwrite, kind="parquet") as stage:
        names = _write_parquet(path, stage, rows_per_shard)
    return [Path(out) / "data" / n for n in names]


def _write_parquet(path: str | Path, out: Path, rows_per_shard: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from histoxmodal.data.store import load_paired

    adata, patches = load_paired(path)
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
        pq.write_table(table, f, compression="zstd")
        files.append(f.name)
    _write_export_json(
        out,
        path,
        "parquet",
        samples=sorted(set(map(str, adata.obs[keys.OBS_SAMPLE]))),
        files=[f"data/{n}" for n in files],
    )
    return files


def export_hest(path: str | Path, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write HEST-1k style files: ``out/patches/<sample>.h5`` and ``out/st/<sample>.h5ad``.

    Each ``.h5`` holds ``img`` ``(n, px, px, 3)`` uint8, ``coords`` ``(n, 2)`` (spot centres in
    full-resolution pixels) and ``barcode`` ``(n, 1)`` bytes, the keys HEST's loaders read; the
    ``img`` attributes record the patch field of view and pixel size. ``out/export.json`` lists
    the samples written.

    The folder is written whole (see :func:`export_folder`): an earlier export is replaced only
    with ``overwrite``, never merged with, and any other non-empty folder is refused.
    """
    with export_folder(path, out, overwrite=overwrite, kind="hest") as stage:
        samples = _write_hest(path, stage)
    return [Path(out) / "patches" / f"{s}.h5" for s in samples]


def _write_hest(path: str | Path, out: Path) -> list[str]:
    import h5py

    from histoxmodal.data.store import load_paired

    adata, patches = load_paired(path)
    (out / "patches").mkdir(parents=True, exist_ok=True)
    (out / "st").mkdir(parents=True, exist_ok=True)
    cfg = adata.uns.get("histoxmodal", {})
    files = []
    for sample in adata.obs[keys.OBS_SAMPLE].astype(str).unique():
        rows = np.flatnonzero(adata.obs[keys.OBS_SAMPLE].astype(str) == sample)
        f = out / "patches" / f"{sample}.h5"
        with h5py.File(f, "w") as h:
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
        sub = adata[rows].copy()
        sub.uns[keys.UNS_SPATIAL] = {sample: adata.uns[keys.UNS_SPATIAL][sample]}
        sub.write_h5ad(out / "st" / f"{sample}.h5ad")
        files.append(f.stem)
    _write_export_json(out, path, "hest", samples=files)
    return files


#: region and instance columns of the table written by :func:`to_spatialdata`
SD_REGION_KEY = "region"
SD_INSTANCE_KEY = "instance_id"
SD_TABLE = "table"
#: the full-resolution pyramid stops before its longer side falls below this
_PYRAMID_MIN_SIDE = 1024
_CHUNK = 2048


def _lazy_full_image(path: str, mpp: float | None):
    """``(3, H, W)`` uint8 dask array reading the slide at ``path`` chunk by chunk."""
    import threading

    import dask
    import dask.array as da

    from histoxmodal.io.slide import open_slide

    slide = open_slide(path, mpp=mpp, allow_implausible_mpp=True)
    lock = threading.Lock()  # slide readers are not all thread-safe

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        with lock:
            return np.moveaxis(slide.read_region((x, y), 0, (w, h)), -1, 0)

    W, H = slide.dimensions
    rows = []
    for y in range(0, H, _CHUNK):
        h = min(_CHUNK, H - y)
        row = [
            da.from_delayed(
                dask.delayed(read)(x, y, min(_CHUNK, W - x), h),
                shape=(3, h, min(_CHUNK, W - x)),
                dtype=np.uint8,
            )
            for x in range(0, W, _CHUNK)
        ]
        rows.append(da.concatenate(row, axis=2))
    return da.concatenate(rows, axis=1), slide


def _pyramid(h: int, w: int) -> list[int]:
    """Scale factors of 2 while the next level keeps its longer side >= the pyramid minimum."""
    out, side = [], max(h, w)
    while side // 2 >= _PYRAMID_MIN_SIDE:
        out.append(2)
        side //= 2
    return out


def _placement(cs: str, scale: float, offset_x: float) -> dict:
    """The transformations of one sample's element: into the sample's own coordinate system
    ``cs`` (full-resolution pixels of its H&E) and into ``global``, where the samples lie side
    by side (shifted by ``offset_x`` full-resolution pixels) instead of on top of each other."""
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    own = Identity() if scale == 1.0 else Scale([scale, scale], axes=("y", "x"))
    if offset_x == 0:
        return {cs: own, "global": own}
    shift = Translation([offset_x], axes=("x",))
    return {cs: own, "global": shift if scale == 1.0 else Sequence([own, shift])}


def _image_element(img: np.ndarray, scale: float, *, pyramid: bool, cs: str, offset_x: float):
    """An ``Image2DModel`` of an ``(h, w, 3)`` image at ``scale`` full-res px per image px."""
    from spatialdata.models import Image2DModel

    arr = np.moveaxis(np.asarray(img), -1, 0)
    factors = _pyramid(*arr.shape[1:]) if pyramid else None
    return Image2DModel.parse(
        arr, dims=("c", "y", "x"), c_coords=["r", "g", "b"][: arr.shape[0]],
        scale_factors=factors or None, transformations=_placement(cs, scale, offset_x),
    )  # fmt: skip


def _sample_width(entry: dict, xy: np.ndarray, diameter: float) -> float:
    """How wide a sample is in full-resolution pixels: its H&E, else its spots."""
    meta, scal, imgs = (
        entry.get("metadata", {}),
        entry.get("scalefactors", {}),
        entry.get("images", {}),
    )
    widths = [float(xy[:, 0].max() + diameter)] if len(xy) else [0.0]
    size = np.asarray(meta.get("image_size", []), dtype=float).ravel()
    if size.size:  # (width, height) of the full-resolution H&E
        widths.append(float(size[0]))
    for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
        if imgs.get(key) is not None and scal.get(sf):
            widths.append(np.asarray(imgs[key]).shape[1] / float(scal[sf]))
    return max(widths)


def _jsonable(d: dict) -> dict:
    """``d`` without ``None`` values (zarr attributes of AnnData's ``uns`` cannot hold them)."""
    return {k: _jsonable(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def to_spatialdata(adata, *, full_res: bool = True):
    """A ``spatialdata.SpatialData`` of an AnnData in the package's layout.

    For each library of ``uns['spatial']`` (rows by ``obs['sample']`` when there are several),
    in a coordinate system of its own named after it (its full-resolution pixels), as
    spatialdata-io's readers do, and in ``"global"``, where the samples lie side by side along x
    instead of on top of each other:

    - images ``<lib>_hires_image`` (multiscale) and ``<lib>_lowres_image``, scaled by
      ``1 / tissue_*_scalef``; with ``full_res`` and the source image recorded in the
      library's metadata (``image_path``), also ``<lib>_full_image``, a multiscale pyramid read
      chunk by chunk (never the whole image in memory at once);
    - shapes ``<lib>_spots``: circles at ``obsm['spatial']`` with radius
      ``spot_diameter_fullres / 2``, indexed by ``instance_id`` ``0 .. n - 1``;
    - one table ``table`` with ``X``, ``obs``, ``var``, ``obsm['spatial']`` and the libraries'
      scale factors and metadata (``uns['histoxmodal_spatial']``), annotating the shapes by
      ``obs['region']`` and ``obs['instance_id']``.

    Returns
    -------
    spatialdata.SpatialData
        Plus the open slides the lazy full-resolution images read from, as
        ``(sdata, slides)``; close the slides after writing.
    """
    import anndata as ad
    import pandas as pd

    from histoxmodal.io.spatial.spatialdata_zarr import (
        UNS_LIBRARIES,
        element_name,
        import_spatialdata,
    )

    sd = import_spatialdata()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    libs = dict(adata.uns.get(keys.UNS_SPATIAL, {}))
    if not libs:
        raise ValueError(
            "adata has no uns['spatial'] entry: the spots need scale factors "
            "(spot_diameter_fullres); read the data with histoxmodal.io.read_spatial"
        )
    if keys.OBSM_SPATIAL not in adata.obsm:
        raise ValueError("adata has no obsm['spatial'] (spot centres in full-resolution pixels)")
    xy = np.asarray(adata.obsm[keys.OBSM_SPATIAL], np.float64)
    sample_of = (
        adata.obs[keys.OBS_SAMPLE].astype(str).to_numpy()
        if keys.OBS_SAMPLE in adata.obs
        else np.full(adata.n_obs, next(iter(libs)))
    )
    if len(libs) == 1:
        sample_of = np.full(adata.n_obs, next(iter(libs)))
    images, shapes, slides = {}, {}, []
    region = np.empty(adata.n_obs, object)
    instance = np.zeros(adata.n_obs, np.int64)
    stored = {}
    offset_x = 0.0
    for lib, entry in libs.items():
        name = element_name(lib)
        rows = np.flatnonzero(sample_of == str(lib))
        scal = {k: float(v) for k, v in entry.get("scalefactors", {}).items()}
        meta = dict(entry.get("metadata", {}))
        if not scal.get(keys.SPOT_DIAMETER):
            raise ValueError(
                f"uns['spatial'][{lib!r}]['scalefactors'] has no spot_diameter_fullres; set it "
                f"(the spot diameter in full-resolution pixels) to draw the spots"
            )
        for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
            img = entry.get("images", {}).get(key)
            if img is not None and scal.get(sf):
                images[f"{name}_{key}_image"] = _image_element(
                    img, 1.0 / scal[sf], pyramid=key == "hires", cs=name, offset_x=offset_x
                )
        src = meta.get("image_path")
        width = _sample_width(entry, xy[rows], scal[keys.SPOT_DIAMETER])
        if full_res and src and Path(src).is_file():
            full, slide = _lazy_full_image(src, meta.get("mpp"))
            slides.append(slide)
            width = max(width, float(full.shape[2]))
            images[f"{name}_full_image"] = Image2DModel.parse(
                full, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                scale_factors=_pyramid(*full.shape[1:]) or None,
                chunks=(3, 1024, 1024), transformations=_placement(name, 1.0, offset_x),
            )  # fmt: skip
        elif full_res and src:
            log.warning(
                "%s: full-resolution image %s not found; only hires/lowres written", lib, src
            )
        shapes[f"{name}_spots"] = ShapesModel.parse(
            xy[rows], geometry=0, radius=np.full(len(rows), scal[keys.SPOT_DIAMETER] / 2.0),
            index=pd.Index(np.arange(len(rows)), name=SD_INSTANCE_KEY),
            transformations=_placement(name, 1.0, offset_x),
        )  # fmt: skip
        offset_x += width * 1.05  # the next sample starts right of this one, with a gap
        region[rows] = f"{name}_spots"
        instance[rows] = np.arange(len(rows))
        stored[str(lib)] = _jsonable({"scalefactors": scal, "metadata": meta})
    if (region == None).any():  # noqa: E711 - an object array compared elementwise
        raise ValueError(
            f"{int((region == None).sum())} spots belong to no library of uns['spatial'] "  # noqa: E711
            f"(obs['sample'] values {sorted(set(sample_of) - set(map(str, libs)))})"
        )
    obs = adata.obs.copy()
    obs[SD_REGION_KEY] = pd.Categorical(region.astype(str), categories=sorted(shapes))
    obs[SD_INSTANCE_KEY] = instance
    uns = {k: v for k, v in adata.uns.items() if k != keys.UNS_SPATIAL}
    uns[UNS_LIBRARIES] = stored
    table = ad.AnnData(
        adata.X, obs=obs, var=adata.var.copy(), obsm={keys.OBSM_SPATIAL: xy}, uns=uns
    )
    regions = sorted(shapes)
    table = TableModel.parse(
        table,
        region=regions[0] if len(regions) == 1 else regions,
        region_key=SD_REGION_KEY,
        instance_key=SD_INSTANCE_KEY,
    )
    return sd.SpatialData(images=images, shapes=shapes, tables={SD_TABLE: table}), slides


def write_spatialdata(
    adata,
    out: str | Path,
    *,
    full_res: bool = True,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
):
    """Write :func:`to_spatialdata` of ``adata`` to the zarr store ``out`` with
    ``SpatialData.write``, atomically (a staging folder renamed into place).

    ``overwrite`` replaces only an existing SpatialData store; ``out`` may not be a file, the
    current folder or a parent of it, nor lie inside or around ``inputs`` or the full-resolution
    images ``adata`` refers to.

    Returns
    -------
    Path
        The store.
    """
    from histoxmodal.io.spatial.spatialdata_zarr import is_spatialdata_store

    out = Path(out)
    images = [
        m["image_path"]
        for e in adata.uns.get(keys.UNS_SPATIAL, {}).values()
        if isinstance(e, dict) and (m := e.get("metadata") or {}).get("image_path")
    ]
    check_output_location(out, inputs=[*inputs, *images])
    check_replaceable(
        out, overwrite=overwrite, is_ours=is_spatialdata_store, kind="a SpatialData zarr store"
    )
    with output_lock(out):  # a second export to `out` would remove this one's staging folder
        clean_stale(out.parent, out.name)
        sdata, slides = to_spatialdata(adata, full_res=full_res)
        tmp = staging_dir(out)
        tmp.rmdir()  # SpatialData.write creates the store itself
        try:
            import warnings

            with warnings.catch_warnings():
                # zarr's notice about a future default, once per array written
                warnings.filterwarnings(
                    "ignore", message="zarr v3 autosharding", category=UserWarning
                )
                sdata.write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            for s in slides:
                s.close()
        publish_dir(tmp, out)
    return out


def export_spatialdata(
    path: str | Path,
    out: str | Path,
    *,
    full_res: bool = True,
    overwrite: bool = False,
    **read_kwargs: object,
) -> list[Path]:
    """Write a paired dataset (or any spatial input :func:`histoxmodal.io.read_spatial` reads)
    as one SpatialData zarr store ``out``; see :func:`to_spatialdata` for its elements.

    ``histoxmodal.io.read_spatial(out, sample=...)`` reads a sample back with the same counts,
    spot names, genes and coordinates. ``read_kwargs`` go to ``read_spatial`` when ``path`` is
    not a paired dataset (e.g. ``section="C3"`` for a her2st folder).

    Returns
    -------
    list[Path]
        ``[out]``.
    """
    path = Path(path)
    if (path / keys.PAIRED_MANIFEST_FILE).is_file():
        from histoxmodal.data.store import load_paired

        adata, _ = load_paired(path)
    else:
        from histoxmodal.io.spatial import read_spatial

        adata = read_spatial(path, **read_kwargs)
    return [write_spatialdata(adata, out, full_res=full_res, overwrite=overwrite, inputs=(path,))]
