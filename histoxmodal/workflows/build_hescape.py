"""``histoxmodal build --recipe hescape``: one HESCAPE panel as a paired dataset.

The folder written is the paired dataset :func:`histoxmodal.workflows.build.build_paired` writes
(layout in :mod:`histoxmodal.data.store`; :func:`~histoxmodal.data.store.load_paired` and
:class:`~histoxmodal.data.dataset.PairedDataset` open it): ``adata.h5ad`` (raw counts,
``obs['sample' | 'patient' | 'batch']``), the contiguous ``patches.h5``, ``splits/`` and
``manifest.json``. HESCAPE's rows come already paired, so instead of cutting patches from a
slide around spot coordinates:

- each row's H&E crop is re-cut to a fixed field of view: its centre ``patch_um / mpp`` pixels
  (``mpp``: the sample's ``pixel_size_um_estimated`` in its split CSV), resized to
  ``patch_px``; a crop smaller than the field of view asked is refused, naming the sample;
- the genes are the reference's var names, checked against the length of ``gexp``;
- besides the ``patient``, ``sample`` and ``random`` splits of every build, HESCAPE's own
  sample-level split is kept as ``splits/hescape.json`` (one fold: test = ``test.csv``'s
  samples, val = ``val.csv``'s, train = the rest, i.e. ``train.csv``'s). When ``val.csv`` lists
  the test samples (HESCAPE's skin panel) a warning is logged, val is left empty and
  ``val_equals_test`` is recorded in the split file and the manifest.

The rows are read twice, one bounded batch at a time: first everything but the images (names,
counts, metadata: the gene panel and the counts are checked before any image is decoded), then
the images of the rows kept, written straight into ``patches.h5``. Memory holds the counts
matrix (sparse) and the metadata, never the images. The folder is written in a staging folder
beside ``out`` and moved into place with a rename; another build of the same ``out`` is refused
while one runs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, SpatialFormatError
from histoxmodal.fileutil import (
    check_output_location,
    check_replaceable,
    clean_stale,
    output_lock,
    publish_dir,
    staging_dir,
    write_json_atomic,
)
from histoxmodal.version import __version__
from histoxmodal.workflows.build import PairedConfig

if TYPE_CHECKING:
    import pandas as pd

    from histoxmodal.data.recipes import Recipe
    from histoxmodal.io.spatial.hescape import HescapeReader, HescapeSplits

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PATCH_UM", "SPLIT_KIND", "build_from_recipe", "build_hescape", "centre_patch"]

#: HESCAPE's pseudo-spot is 55 µm: the crop centred on it at that field of view is the spot
DEFAULT_PATCH_UM = 55.0
#: the name of HESCAPE's split in ``splits/`` and in the manifest's ``splits``
SPLIT_KIND = "hescape"
#: input files up to this size are hashed into the manifest (the split CSVs, the reference, a
#: small panel's shards); larger shards are recorded by path and size only
HASH_MAX_BYTES = 64 << 20
PATCH_SOURCE = "HESCAPE crop"
#: obs columns of the store; a row metadata column of the same name is kept as ``hescape_<name>``
RESERVED_OBS = (
    keys.OBS_SAMPLE,
    keys.OBS_PATIENT,
    keys.OBS_BATCH,
    keys.OBS_IN_TISSUE,
    keys.OBS_PATCH_BORDER,
    keys.OBS_SPATIAL_MPP,
    "patch_source_mpp",
    "hescape_split",
)


def centre_patch(
    image: np.ndarray, *, mpp: float, patch_um: float, patch_px: int, sample: str = "the sample"
) -> np.ndarray:
    """The centre ``patch_um`` µm of an H&E crop, resized to ``patch_px``.

    The window is ``round(patch_um / mpp)`` pixels, placed as for spots on a slide
    (:func:`~histoxmodal.tiling.spots.patch_windows` around the crop's centre), and resampled as
    slides are (area averaging down, bilinear up).

    Parameters
    ----------
    image
        ``(h, w, 3)`` uint8, centred on the spot.
    mpp
        µm per pixel of ``image``.

    Returns
    -------
    numpy.ndarray
        ``(patch_px, patch_px, 3)`` uint8.

    Raises
    ------
    ConfigError
        The crop is smaller than the field of view, naming ``sample`` and the largest
        ``patch_um`` it allows.
    """
    import cv2

    from histoxmodal.tiling.spots import patch_windows

    h, w = image.shape[:2]
    corners, side = patch_windows(np.array([[w / 2.0, h / 2.0]]), mpp, patch_um)
    x0, y0 = (int(v) for v in corners[0])
    if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
        fits = math.floor(min(h, w) * mpp * 10) / 10
        raise ConfigError(
            f"{sample}: its H&E crops are {w} x {h} px at {mpp:.4g} µm/px "
            f"({w * mpp:.1f} x {h * mpp:.1f} µm), smaller than the {patch_um:g} µm field of "
            f"view asked ({side} px); build with --patch-um {fits:g} or less"
        )
    crop = image[y0 : y0 + side, x0 : x0 + side]
    if side == patch_px:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > patch_px else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (patch_px, patch_px), interpolation=interp)


def _record(path: Path) -> dict[str, Any]:
    """What the manifest records of an input: path, size, SHA-256 when cheap (else ``None``)."""
    from histoxmodal.data.store import file_sha256

    size = path.stat().st_size
    return {
        "path": str(path),
        "size": size,
        "sha256": file_sha256(path) if size <= HASH_MAX_BYTES else None,
    }


def _is_paired_dataset(path: Path) -> bool:
    """Whether ``path`` holds a paired dataset (its manifest), so ``--overwrite`` may replace it."""
    try:
        m = json.loads((path / keys.PAIRED_MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(m, dict) and "status" in m and m.get("kind") != "cohort"


def _previous(out: Path) -> dict | None:
    try:
        m = json.loads((out / keys.PAIRED_MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) else None


def build_hescape(
    src: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    patch_um: float = DEFAULT_PATCH_UM,
    patch_px: int = 224,
    min_counts: int = 0,
    allow_lowres: bool = False,
    overwrite: bool = False,
    batch_size: int = 256,
    workers: int = 1,
    engine: str = "auto",
    seed: int = 0,
    recipe: str = "hescape",
) -> dict[str, Any]:
    """Build the paired dataset ``out`` from one HESCAPE panel found under ``src``.

    Parameters
    ----------
    src
        Folder(s) holding the panel's rows (Parquet shards or a ``save_to_disk`` folder), its
        ``train.csv`` / ``val.csv`` / ``test.csv`` and ``nicheformer_reference.h5ad``
        (:func:`~histoxmodal.io.spatial.hescape.find_hescape`).
    out
        The dataset folder; an earlier dataset there is replaced only with ``overwrite``, and
        left as it is when it was built from the same inputs with the same parameters.
    patch_um
        Field of view of each patch in µm (default 55 µm, HESCAPE's pseudo-spot).
    patch_px
        Patch size in pixels.
    min_counts
        Rows with fewer total counts are dropped.
    allow_lowres
        Build patches even when a sample's crops are more than twice as coarse as the patches
        (``patch_um / patch_px`` µm per pixel), i.e. upsampled more than 2x.
    batch_size
        Most rows read at a time.
    workers
        Threads decoding and resizing images.
    engine
        ``auto`` (``datasets`` when installed, else pyarrow), ``datasets`` or ``pyarrow``.
    seed
        Seed of the ``random`` split.
    recipe
        Recorded in the manifest.

    Returns
    -------
    dict
        The manifest (``up_to_date`` True when nothing had to be rebuilt).

    Raises
    ------
    ConfigError
        A missing or malformed piece of the panel (naming the file), a crop smaller than
        ``patch_um`` (naming the sample), an output that may not be replaced.
    """
    from histoxmodal.data.store import check_paired
    from histoxmodal.io.spatial.hescape import (
        HescapeReader,
        find_hescape,
        read_hescape_genes,
        read_hescape_splits,
    )

    cfg = PairedConfig(
        patch_um=float(patch_um),
        patch_px=int(patch_px),
        min_counts=int(min_counts),
        allow_lowres=bool(allow_lowres),
        seed=int(seed),
    )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: expected a whole number >= 1")
    srcs = [src] if isinstance(src, str | Path) else list(src)
    out_path = check_output_location(out, inputs=srcs)
    t0 = time.perf_counter()
    source = find_hescape(srcs)
    splits = read_hescape_splits(source.splits)
    var = read_hescape_genes(source.reference)
    reader = HescapeReader(source, engine=engine, batch_size=batch_size)
    params = asdict(cfg)
    inputs = {
        "rows": [_record(p) for p in source.row_files],
        "splits": {k: _record(p) for k, p in source.splits.items()},
        "reference": _record(source.reference),
    }
    with output_lock(out_path):
        prev = _previous(out_path)
        same = (
            isinstance(prev, dict)
            and prev.get("status") == "complete"
            and prev.get("recipe") == recipe
            and prev.get("params") == params
            and prev.get("inputs") == inputs
        )
        if same and not overwrite:
            try:
                check_paired(out_path)
            except ConfigError as exc:
                log.warning("%s; rebuilding", exc)
                overwrite = True
            else:
                log.info("%s is up to date", out_path)
                return {**prev, "up_to_date": True}
        check_replaceable(
            out_path, overwrite=overwrite, is_ours=_is_paired_dataset, kind="paired dataset"
        )
        clean_stale(out_path.parent, out_path.name)
        tmp = staging_dir(out_path)
        try:
            manifest = _write(tmp, reader, splits, var, cfg, workers)
            manifest = {
                "status": "complete",
                "histoxmodal_version": __version__,
                "recipe": recipe,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "params": params,
                "qc": {"min_counts": cfg.min_counts},
                "inputs": inputs,
                **manifest,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            write_json_atomic(tmp / keys.PAIRED_MANIFEST_FILE, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, out_path)
    return manifest


def _write(
    tmp: Path,
    reader: HescapeReader,
    splits: HescapeSplits,
    var: pd.DataFrame,
    cfg: PairedConfig,
    workers: int,
) -> dict[str, Any]:
    """Read the rows into ``tmp``'s ``adata.h5ad``, ``patches.h5`` and ``splits/``; returns the
    manifest's entries about them."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from histoxmodal.io.spatial.hescape import COL_IMAGE, CSV_MPP
    from histoxmodal.progress import progress

    source = reader.source
    listed = set(splits.all_samples)
    n_genes = len(var)
    total_rows, n_batches = reader.num_rows, reader.num_batches
    code_of: dict[str, int] = {}
    codes_parts, keep_parts, x_parts, xy_parts = [], [], [], []
    meta_parts: dict[str, list[np.ndarray]] = {}
    rows_per_sample: Counter[str] = Counter()
    low_per_sample: Counter[str] = Counter()
    columns = [c for c in reader.columns if c != COL_IMAGE]
    for batch in progress(
        reader.batches(columns), total=n_batches, desc="hescape rows", unit="batch", log_items=True
    ):
        names = reader.names(batch)
        x = reader.expression(batch)
        if x.shape[1] != n_genes:
            raise SpatialFormatError(
                f"{source.dataset}: gexp holds {x.shape[1]} values per row but "
                f"{source.reference} lists {n_genes} genes; give the reference of this panel "
                f"(hescape's data/<panel>/nicheformer_reference.h5ad) beside its split CSVs"
            )
        _check_counts(x, names, source.dataset)
        codes = np.fromiter((code_of.setdefault(s, len(code_of)) for s in names), np.int32)
        in_split = np.fromiter((s in listed for s in names), bool, len(names))
        keep = in_split & (x.sum(axis=1) >= cfg.min_counts)
        rows_per_sample.update(names.tolist())
        low_per_sample.update(names[in_split & ~keep].tolist())
        codes_parts.append(codes)
        keep_parts.append(keep)
        x_parts.append(sp.csr_matrix(x[keep].astype(np.int32)))
        xy_parts.append(reader.coordinates(batch)[keep])
        for c, v in reader.metadata(batch).items():
            meta_parts.setdefault(c, []).append(v[keep])
    codes_all = np.concatenate(codes_parts) if codes_parts else np.zeros(0, np.int32)
    keep_all = np.concatenate(keep_parts) if keep_parts else np.zeros(0, bool)
    by_code = np.asarray(list(code_of), dtype=object)
    kept = by_code[codes_all[keep_all]]
    skipped = _skipped(splits, rows_per_sample, low_per_sample, kept)
    n = len(kept)
    if n == 0:
        raise ConfigError(
            f"{source.dataset}: no row to keep ({total_rows} rows; "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
            + ")"
        )
    samples = list(dict.fromkeys(kept.tolist()))
    target = cfg.patch_um / cfg.patch_px
    for s in samples:
        m = splits.mpp[s]
        if m > cfg.max_image_mpp_ratio * target and not cfg.allow_lowres:
            raise ConfigError(
                f"{s}: its crops are {m:.3g} µm/px for {target:.3g} µm/px patches (each patch "
                f"would be upsampled {m / target:.2f}x); lower --patch-px, or pass --allow-lowres"
            )
    within = np.zeros(n, np.int64)
    for s in samples:
        rows = np.flatnonzero(kept == s)
        within[rows] = np.arange(len(rows))
    obs_names = [f"{s}:{k}" for s, k in zip(kept.tolist(), within.tolist(), strict=True)]
    crops = _write_patches(
        tmp, reader, codes_all, keep_all, by_code, obs_names, splits, cfg, workers
    )
    mpp_rows = np.array([splits.mpp[s] for s in kept], np.float32)
    obs = pd.DataFrame(index=pd.Index(obs_names))
    obs[keys.OBS_SAMPLE] = pd.Categorical(kept, categories=samples)
    patients = [splits.patient[s] or s for s in kept]
    obs[keys.OBS_PATIENT] = pd.Categorical(patients)
    obs[keys.OBS_BATCH] = pd.Categorical(kept, categories=samples)
    obs["hescape_split"] = pd.Categorical([splits.split_of(s) for s in kept])
    for c, parts in meta_parts.items():
        values = np.concatenate(parts)
        name = f"hescape_{c}" if c in RESERVED_OBS else c
        obs[name] = pd.Categorical(values) if values.dtype == object else values
    for c in sorted({c for s in samples for c in splits.info.get(s, {})}):
        if c not in obs:
            obs[c] = pd.Categorical([splits.info.get(s, {}).get(c) for s in kept])
    obs[keys.OBS_PATCH_BORDER] = np.zeros(n, bool)
    obs["patch_source_mpp"] = mpp_rows
    obs[keys.OBS_SPATIAL_MPP] = mpp_rows
    adata = ad.AnnData(sp.vstack(x_parts, format="csr").astype(np.int32), obs=obs, var=var)
    adata.obsm[keys.OBSM_SPATIAL] = np.concatenate(xy_parts).astype(np.float64)
    genes = list(var.index)
    adata.varm["sample_presence"] = pd.DataFrame(
        {s: np.ones(n_genes, bool) for s in samples}, index=genes
    )
    adata.uns[keys.UNS_SPATIAL] = {
        s: {
            "metadata": {
                "format": "hescape",
                "dataset": str(source.dataset),
                "mpp": splits.mpp[s],
                "mpp_source": f"{splits.where[s]} ({CSV_MPP})",
                "hescape_split": splits.split_of(s),
            }
        }
        for s in samples
    }
    adata.uns["histoxmodal"] = {
        "patch_um": cfg.patch_um,
        "patch_px": cfg.patch_px,
        "genes": cfg.genes,
    }
    adata.write_h5ad(tmp / keys.PAIRED_ADATA_FILE)
    split_entries, hescape = _write_splits(tmp, adata.obs, splits, cfg)
    per_sample = {}
    for s in samples:
        per_sample[s] = {
            "n_rows": rows_per_sample[s],
            "n_below_min_counts": low_per_sample[s],
            "n_spots": int((kept == s).sum()),
            "n_border": 0,
            "patient": splits.patient[s] or s,
            "patient_from": "split CSV" if splits.patient[s] else "sample id (no patient in CSV)",
            "split": splits.split_of(s),
            "patch_source": PATCH_SOURCE,
            "patch_source_mpp": splits.mpp[s],
            "crop_px": [list(hw) for hw in sorted(crops[s])][:5],
            "n_genes": n_genes,
        }
    from histoxmodal.data.store import file_record

    return {
        "source": {
            "format": "hescape",
            "layout": source.layout,
            "dataset": str(source.dataset),
            "reader": reader.engine,
            "batch_size": reader.batch_size,
            "n_rows": len(codes_all),
            "rows_per_sample": dict(rows_per_sample),
        },
        "samples": per_sample,
        "skipped": skipped,
        "failed": {},
        "n_spots": n,
        "n_genes": n_genes,
        "genes_in_all_samples": n_genes,
        "hescape": hescape,
        "files": {
            name: file_record(tmp / name)
            for name in (keys.PAIRED_ADATA_FILE, keys.PAIRED_PATCHES_FILE)
        },
        "splits": split_entries,
    }


def _check_counts(x: np.ndarray, names: np.ndarray, dataset: Path) -> None:
    """Refuse ``gexp`` values that are not raw counts, naming the first sample holding one."""
    from histoxmodal.io.spatial.common import SpatialFormatError, counts_problem

    problem = counts_problem(x)
    if problem is None:
        return
    bad = next((s for s, row in zip(names, x, strict=True) if counts_problem(row)), names[0])
    raise SpatialFormatError(
        f"{dataset}: gexp of sample {bad} {problem[1]}; HESCAPE's gexp holds raw counts and the "
        f"dataset stores them as integers, never cast or truncated: give the panel as published"
    )


def _skipped(
    splits: HescapeSplits, rows: Counter, low: Counter, kept: np.ndarray
) -> dict[str, str]:
    """Why samples of the rows or of the split CSVs are not in the dataset."""
    kept_set = set(kept.tolist())
    out = {}
    for s, n in rows.items():
        if s not in splits.mpp:
            out[s] = (
                f"{n} rows, but in none of train.csv, val.csv, test.csv (no split and no pixel "
                f"size)"
            )
        elif s not in kept_set:
            out[s] = f"no row passed QC ({low[s]} of {n} below min_counts)"
    for s in splits.all_samples:
        if s not in rows:
            out[s] = f"listed in {splits.where[s]} but the rows hold no sample of this name"
            log.warning("%s: %s", s, out[s])
    return out


def _write_patches(
    tmp: Path,
    reader: HescapeReader,
    codes_all: np.ndarray,
    keep_all: np.ndarray,
    by_code: np.ndarray,
    obs_names: list[str],
    splits: HescapeSplits,
    cfg: PairedConfig,
    workers: int,
) -> dict[str, set[tuple[int, int]]]:
    """Second pass: decode, re-cut and write the kept rows' images into ``patches.h5`` (the
    layout of :func:`~histoxmodal.data.store.write_store`); returns each sample's crop sizes."""
    from concurrent.futures import ThreadPoolExecutor

    import h5py
    import pyarrow as pa

    from histoxmodal.io.spatial.common import SpatialFormatError
    from histoxmodal.io.spatial.hescape import COL_IMAGE, COL_NAME, decode_image
    from histoxmodal.progress import progress

    n, px = len(obs_names), cfg.patch_px
    crops: dict[str, set[tuple[int, int]]] = {}
    root = reader.source.dataset

    def cut(job: tuple[Any, str]) -> np.ndarray:
        payload, sample = job
        img = decode_image(payload, root=root)
        crops.setdefault(sample, set()).add(tuple(img.shape[:2]))
        return centre_patch(
            img, mpp=splits.mpp[sample], patch_um=cfg.patch_um, patch_px=px, sample=sample
        )

    n_batches = reader.num_batches
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with h5py.File(tmp / keys.PAIRED_PATCHES_FILE, "w") as f:
            # contiguous (no chunks, no compression) so load_paired can memory-map it
            d = f.create_dataset("patches", shape=(n, px, px, 3), dtype=np.uint8)
            d.attrs["patch_um"] = cfg.patch_um
            d.attrs["patch_px"] = px
            d.attrs["mpp"] = cfg.patch_um / px
            f.create_dataset("obs_names", data=np.asarray(obs_names, dtype="S"))
            row = done = 0
            for batch in progress(
                reader.batches([COL_NAME, COL_IMAGE]),
                total=n_batches,
                desc="hescape patches",
                unit="batch",
                log_items=True,
            ):
                names = reader.names(batch)
                b = len(names)
                if row + b > len(codes_all) or not np.array_equal(
                    by_code[codes_all[row : row + b]], names
                ):
                    raise SpatialFormatError(
                        f"{root}: the rows changed while they were read (row {row}); build "
                        f"again once nothing writes the panel"
                    )
                keep = keep_all[row : row + b]
                row += b
                if not keep.any():
                    continue
                sub = batch.filter(pa.array(keep))
                jobs = list(zip(reader.image_payloads(sub), names[keep].tolist(), strict=True))
                block = np.stack(list(pool.map(cut, jobs) if pool else map(cut, jobs)))
                d[done : done + len(block)] = block
                done += len(block)
            if row != len(codes_all) or done != n:
                raise SpatialFormatError(
                    f"{root}: {row} rows read for images, {len(codes_all)} before; build again "
                    f"once nothing writes the panel"
                )
    finally:
        if pool is not None:
            pool.shutdown()
    return crops


def _write_splits(
    tmp: Path, obs: pd.DataFrame, splits: HescapeSplits, cfg: PairedConfig
) -> tuple[dict, dict]:
    """``splits/{patient,sample,random}.json`` as every build writes them, and HESCAPE's own as
    ``splits/hescape.json``; returns the manifest's ``splits`` and ``hescape`` entries."""
    from histoxmodal.data.splits import (
        SPLIT_KINDS,
        digest,
        make_split,
        obs_names_digest,
        write_split,
    )

    folder = tmp / keys.PAIRED_SPLITS_DIR
    folder.mkdir()
    entries: dict[str, dict] = {}
    for kind in SPLIT_KINDS:
        try:
            split = make_split(obs, kind, seed=cfg.seed)
        except ConfigError as exc:  # e.g. one patient only
            entries[kind] = {"skipped": str(exc)}
            continue
        entries[kind] = {
            "file": keys.split_path(kind),
            "sha256": write_split(split, tmp / keys.split_path(kind)),
        }
    present = set(obs[keys.OBS_SAMPLE].astype(str))
    members = {k: [s for s in splits.samples[k] if s in present] for k in ("train", "val", "test")}
    sample_col = np.asarray(obs[keys.OBS_SAMPLE].astype(str))
    test = np.flatnonzero(np.isin(sample_col, members["test"]))
    val_only = [s for s in members["val"] if s not in members["test"]]
    val = np.flatnonzero(np.isin(sample_col, val_only))
    overlap = [s for s in members["val"] if s in members["test"]]
    warnings = []
    if splits.val_equals_test:
        warnings.append(
            f"val.csv lists the same samples as test.csv ({', '.join(splits.samples['test'])}), "
            f"as HESCAPE's skin panel does: choosing a model on its test samples overstates its "
            f"test scores; {keys.split_path(SPLIT_KIND)} leaves val empty"
        )
    elif overlap:
        warnings.append(
            f"val.csv and test.csv both list {', '.join(overlap)}; "
            f"{keys.split_path(SPLIT_KIND)} keeps them in test only"
        )
    for w in warnings:
        log.warning("%s: %s", splits.files["val"], w)
    hescape = {
        "samples": members,
        "files": {k: str(p) for k, p in splits.files.items()},
        "val_equals_test": splits.val_equals_test,
        "val_test_overlap": overlap,
        "warnings": warnings,
    }
    n = len(obs)
    if len(test) == 0 or len(test) + len(val) >= n:
        why = (
            "no sample of test.csv has rows in the dataset"
            if len(test) == 0
            else "val.csv and test.csv hold every row: nothing is left to train on"
        )
        log.warning("HESCAPE's split not written: %s", why)
        entries[SPLIT_KIND] = {"skipped": why}
        return entries, hescape
    split = {
        "kind": SPLIT_KIND,
        "seed": cfg.seed,
        "n_obs": n,
        "obs_names_sha256": obs_names_digest(obs.index),
        "folds": [
            {
                "name": SPLIT_KIND,
                "held_out": members["test"],
                "test": test.tolist(),
                "val": val.tolist(),
            }
        ],
        "samples": members,
        "val_equals_test": splits.val_equals_test,
        "source": {k: str(p) for k, p in splits.files.items()},
    }
    split["sha256"] = digest(split)
    entries[SPLIT_KIND] = {
        "file": keys.split_path(SPLIT_KIND),
        "sha256": write_split(split, tmp / keys.split_path(SPLIT_KIND)),
    }
    return entries, hescape


def build_from_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    src: str | Path | Sequence[str | Path] | None,
    image: str | None = None,
    alignment: str | None = None,
    mpp: float | None = None,
    patch_um: float | None = None,
    patch_px: int | None = None,
    min_counts: int | None = None,
    allow_lowres: bool = False,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """:func:`build_hescape` with a recipe's defaults, as :func:`histoxmodal.workflows.build.build`
    calls it for ``format: hescape``.

    The gene panel option does not apply (a panel is one gene set), nor do ``--image``,
    ``--alignment`` and ``--mpp``: the crops come with the rows and each sample's pixel size with
    its split CSV; giving them raises a :class:`ConfigError`.
    """
    from histoxmodal.io.spatial.hescape import LAYOUT

    if not src:
        raise ConfigError(f"recipe {recipe.name!r} needs --src: {LAYOUT}")
    given = [
        opt
        for opt, value in (("--image", image), ("--alignment", alignment), ("--mpp", mpp))
        if value is not None
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: not used by the {recipe.name} recipe: the H&E crops come with "
            f"the rows and each sample's µm per pixel with its split CSV "
            f"(pixel_size_um_estimated); leave them out"
        )
    d = recipe.defaults

    def pick(value, key, default):
        return value if value is not None else d.get(key, default)

    return build_hescape(
        src,
        out,
        patch_um=float(pick(patch_um, "patch_um", DEFAULT_PATCH_UM)),
        patch_px=int(pick(patch_px, "patch_px", 224)),
        min_counts=int(pick(min_counts, "min_counts", 0)),
        allow_lowres=allow_lowres,
        workers=workers,
        overwrite=overwrite,
        recipe=recipe.name,
    )
