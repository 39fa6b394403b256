"""``histoxmodal build``: paired datasets from the samples a recipe finds, and cohort stores.

The paired dataset's layout is described in :mod:`histoxmodal.data.store`; in short, on disk
(``DIR``):

- ``adata.h5ad``: expression (raw counts) and all metadata; row i is spot i.
- ``patches.h5``: dataset ``patches`` ``(n_spots, patch_px, patch_px, 3)`` uint8, stored
  contiguously so :func:`load_paired` memory-maps it: row i is spot i's image, read by index
  without loading the rest.
- ``manifest.json``: sources with content hashes, parameters, per-sample counts, skipped samples
  with reasons, QC, gene panel, output and split hashes. Written last: its ``status: complete``
  marks a finished build.
- ``splits/{patient,sample,random}.json``: see :mod:`histoxmodal.data.splits`.

Building is resumable: each sample is first written to ``DIR/.parts/<sample>/`` (atomically); a
restarted build reuses finished parts whose inputs and parameters are unchanged.

One build at a time writes ``DIR``: it holds ``DIR/.build.lock`` (a ``filelock``, released by the
kernel when the process dies), and a second build waits for it. Before the final files are
replaced the manifest is set to ``status: building``, so a build killed while it writes them
leaves a dataset that :func:`load_paired` refuses and that the next run rebuilds, never new files
under the old "complete" manifest. Partial files left by killed builds are removed on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.data.cohort import COHORT_FILE, MODALITIES
from histoxmodal.data.recipes import SampleRef
from histoxmodal.data.store import check_paired, file_record, file_sha256, load_paired, write_store
from histoxmodal.errors import (
    CohortError,
    ConfigError,
    DataError,
    HistoxmodalError,
    MppError,
    RadiologyReadError,
)
from histoxmodal.fileutil import clean_stale, publish_dir, staging_dir, write_json_atomic
from histoxmodal.progress import progress
from histoxmodal.version import __version__

log = logging.getLogger(__name__)

__all__ = ["PairedConfig", "build", "build_cohort", "build_paired", "load_paired"]

GENE_MODES = ("intersection", "union")


@dataclass(frozen=True)
class PairedConfig:
    """Parameters of a paired-dataset build.

    Parameters
    ----------
    patch_um
        Field of view of each patch in µm (112 µm = HEST's 224 px at 0.5 µm/px).
    patch_px
        Patch size in pixels.
    genes
        ``intersection`` (genes measured in every sample) or ``union`` (all genes; a sample's
        missing genes are zeros and ``varm['sample_presence']`` says which were measured).
    min_counts
        Spots with fewer total counts are dropped.
    in_tissue_only
        Drop spots the source marks as outside tissue.
    max_image_mpp_ratio
        A sample whose best image is coarser than this many times the patch resolution
        (``patch_um / patch_px``) is skipped (only a lowres PNG, say) unless ``allow_lowres``.
    allow_lowres
        Build patches even from such images (upsampled; recorded in the manifest).
    seed
        Seed of the random split.
    stain
        A fitted stain normaliser's JSON (:meth:`~histoxmodal.data.stain.StainNormalizer.to_dict`):
        every patch is normalised to it as it is cut (``None``: raw colours). Patches that
        cannot be (background, pen) stay raw; each sample's counts are in the manifest.
    """

    patch_um: float = 112.0
    patch_px: int = 224
    genes: str = "intersection"
    min_counts: int = 0
    in_tissue_only: bool = True
    max_image_mpp_ratio: float = 2.0
    allow_lowres: bool = False
    seed: int = 0
    stain: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.genes not in GENE_MODES:
            raise ConfigError(f"genes={self.genes!r}: expected one of {', '.join(GENE_MODES)}")
        if not self.patch_um > 0 or self.patch_px < 8:
            raise ConfigError(
                f"patch_um={self.patch_um}, patch_px={self.patch_px}: need a "
                f"positive field of view and at least 8 px"
            )
        if self.min_counts < 0:
            raise ConfigError(f"min_counts={self.min_counts} must be >= 0")


def _patch_source(adata, cfg: PairedConfig):
    """The image to cut patches from and the factor mapping ``obsm['spatial']`` onto it."""
    from histoxmodal.io.slide import open_slide
    from histoxmodal.io.slide_readers import ArraySlide
    from histoxmodal.io.spatial import library_id

    lib = library_id(adata)
    entry = adata.uns[keys.UNS_SPATIAL][lib]
    meta, scal, images = entry["metadata"], entry["scalefactors"], entry["images"]
    mpp = meta.get("mpp")
    if mpp is None:
        raise MppError(f"{lib}: unknown pixel size; pass --mpp (µm per full-resolution pixel)")
    if meta.get("image_path"):
        return open_slide(meta["image_path"], mpp=mpp), 1.0, "full-resolution", mpp
    for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
        if key in images and scal.get(sf):
            f = float(scal[sf])
            return ArraySlide(images[key], mpp=mpp / f, name=f"{lib}:{key}"), f, key, mpp / f
    raise ConfigError(
        f"{lib}: no image to cut patches from (no full-resolution image, no "
        f"hires/lowres image); pass --image"
    )


def _check_counts(x, ref: SampleRef, metadata: dict | None = None) -> None:
    """Refuse a sample whose expression ``x`` is not raw counts (the dataset stores int32).

    ``metadata``: the reader's ``uns['spatial'][lib]['metadata']``, for the file to name.

    Raises
    ------
    SpatialFormatError
        Naming the sample, its counts file, what is wrong and what to give instead.
    """
    from histoxmodal.io.spatial import SpatialFormatError
    from histoxmodal.io.spatial.common import MAX_COUNT, counts_problem

    problem = counts_problem(x)
    if problem is None:
        return
    kind, text = problem
    meta = metadata or {}
    where = meta.get("counts") or meta.get("matrix") or meta.get("file")
    where = where or (", ".join(str(p) for p in ref.inputs) or "its inputs")
    if kind == "fraction" and meta.get("format") == "h5ad":
        layers = [str(name) for name in meta.get("layers", [])]
        fix = (
            "give the raw counts layer with a recipe file whose reader section names it "
            f"(`reader: {{layer: NAME}}`; this file's layers: {', '.join(layers) or 'none'}), "
            "or an .h5ad whose X holds the raw counts"
        )
    elif kind == "fraction":
        fix = "give the raw counts the instrument's pipeline wrote, not normalised values"
    else:
        fix = (
            f"raw counts are whole numbers from 0 to {MAX_COUNT}; the file was edited or "
            "does not hold counts: give the original counts file"
        )
    raise SpatialFormatError(
        f"{ref.sample} ({where}): the expression matrix {text}; the dataset stores raw "
        f"integer counts and never casts or truncates other values: {fix}"
    )


def _build_part(ref: SampleRef, cfg: PairedConfig, folder: Path, workers: int) -> dict:
    """Read one sample, apply QC, cut its patches; write ``part.h5ad`` + ``patches.h5``."""
    import h5py

    from histoxmodal.tiling.spots import spot_patches

    adata = ref.load()
    libs = list((adata.uns.get(keys.UNS_SPATIAL) or {}).values())
    _check_counts(adata.X, ref, libs[0].get("metadata") if len(libs) == 1 else None)
    n_read = adata.n_obs
    keep = np.ones(n_read, bool)
    if cfg.in_tissue_only and keys.OBS_IN_TISSUE in adata.obs:
        keep &= adata.obs[keys.OBS_IN_TISSUE].to_numpy(bool)
    n_tissue = int(keep.sum())
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    keep &= totals >= cfg.min_counts
    adata = adata[keep].copy()
    slide, factor, source, src_mpp = _patch_source(adata, cfg)
    target = cfg.patch_um / cfg.patch_px
    if src_mpp > cfg.max_image_mpp_ratio * target and not cfg.allow_lowres:
        raise ConfigError(
            f"only a {source} image at {src_mpp:.2f} µm/px for {target:.2f} µm/px patches "
            f"(each patch would be upsampled {src_mpp / target:.0f}x); give the "
            f"full-resolution image (--image) or pass --allow-lowres"
        )
    if src_mpp > target:
        log.info(
            "%s: patches upsampled %.2fx from the %s (%.2f µm/px)",
            ref.sample,
            src_mpp / target,
            source,
            src_mpp,
        )
    n = adata.n_obs
    border = np.zeros(n, bool)
    norm = None
    if cfg.stain:
        from histoxmodal.data.stain import StainNormalizer

        norm = StainNormalizer.from_dict(cfg.stain)
    with h5py.File(folder / keys.PAIRED_PATCHES_FILE, "w") as f:
        d = f.create_dataset("patches", shape=(n, cfg.patch_px, cfg.patch_px, 3), dtype=np.uint8)
        i = 0
        centres = np.asarray(adata.obsm[keys.OBSM_SPATIAL], np.float64) * factor
        for batch, b in spot_patches(
            slide, centres, patch_um=cfg.patch_um, patch_px=cfg.patch_px, workers=workers
        ):
            d[i : i + len(batch)] = batch if norm is None else norm.apply_many(batch)
            border[i : i + len(batch)] = b
            i += len(batch)
    slide.close()
    adata.obs[keys.OBS_PATCH_BORDER] = border
    adata.obs["patch_source_mpp"] = np.float32(src_mpp)
    # obsm['spatial'] is in the full-resolution image's pixels; the patch source is `factor` x it
    adata.obs[keys.OBS_SPATIAL_MPP] = np.float32(src_mpp * factor)
    adata.write_h5ad(folder / "part.h5ad")
    return {
        "n_spots_read": n_read,
        "n_in_tissue": n_tissue,
        "n_spots": n,
        "n_border": int(border.sum()),
        "patch_source": source,
        "patch_source_mpp": src_mpp,
        "n_genes": int(adata.n_vars),
        "patient": str(adata.obs[keys.OBS_PATIENT].iloc[0]) if n else None,
        **({"stain": norm.counts()} if norm is not None else {}),
    }


def _assemble(parts: list[tuple[str, Path]], cfg: PairedConfig, out: Path) -> dict:
    """Concatenate the parts with a harmonised gene panel into the final files."""
    import anndata as ad
    import h5py
    import pandas as pd

    adatas = [ad.read_h5ad(p / "part.h5ad") for _, p in parts]
    gene_sets = [list(a.var_names) for a in adatas]
    if cfg.genes == "intersection":
        common = set(gene_sets[0]).intersection(*map(set, gene_sets[1:]))
        genes = [g for g in gene_sets[0] if g in common]
        if not genes:
            raise ConfigError("the samples share no gene; use --genes union")
    else:
        seen: dict[str, None] = {}
        for gs in gene_sets:
            seen.update(dict.fromkeys(gs))
        genes = list(seen)
    presence = pd.DataFrame(
        {s: np.isin(genes, gs) for (s, _), gs in zip(parts, gene_sets, strict=True)}, index=genes
    )
    spatial = {}
    for a in adatas:
        spatial.update(a.uns.get(keys.UNS_SPATIAL, {}))
        a.uns = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        joined = ad.concat(adatas, join="outer", merge="first")
    joined = joined[:, genes].copy()
    import scipy.sparse as sp

    joined.X = sp.csr_matrix(joined.X)
    # every part was checked when it was read; a part left by an older build is checked here
    for (sample, folder), a in zip(parts, adatas, strict=True):
        _check_counts(a.X, SampleRef(sample, lambda: None, inputs=[folder / "part.h5ad"]))
    joined.X = joined.X.astype(np.int32)
    joined.varm["sample_presence"] = presence
    for col in (keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH):
        joined.obs[col] = joined.obs[col].astype(str).astype("category")
    joined.uns[keys.UNS_SPATIAL] = spatial
    joined.uns["histoxmodal"] = {
        "patch_um": cfg.patch_um,
        "patch_px": cfg.patch_px,
        "genes": cfg.genes,
    }
    n = joined.n_obs

    def blocks():
        for _, p in parts:
            with h5py.File(p / keys.PAIRED_PATCHES_FILE, "r") as src:
                s = src["patches"]
                for j in range(0, len(s), 256):
                    yield s[j : j + 256]

    write_store(out, joined, blocks(), patch_px=cfg.patch_px, patch_um=cfg.patch_um)
    return {
        "n_spots": int(n),
        "n_genes": len(genes),
        "genes_in_all_samples": int(presence.all(axis=1).sum()),
    }, joined.obs


def build_paired(
    samples: list[SampleRef],
    out_dir: str | Path,
    config: PairedConfig | None = None,
    *,
    recipe: str = "",
    workers: int = 1,
    overwrite: bool = False,
    wait: bool = True,
) -> dict:
    """Build the paired dataset in ``out_dir`` from the samples a recipe found.

    Samples that cannot be used are recorded in the manifest's ``skipped`` with the reason and
    the others go on; those that failed while being read or cut (a truncated or malformed file,
    an image too coarse, no spot passing QC), as opposed to those the recipe found without an
    image, are also listed in ``failed``. The build fails only when no sample is usable.

    ``wait``: when another build holds the folder's lock, wait for it (True) or raise a
    :class:`ConfigError` at once (False).

    Returns
    -------
    dict
        The manifest.
    """
    cfg = config or PairedConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _dataset_lock(out, wait=wait):
        _clean_partials(out)
        return _build_paired_locked(
            samples, out, cfg, recipe=recipe, workers=workers, overwrite=overwrite
        )


@contextmanager
def _dataset_lock(out: Path, *, wait: bool) -> Iterator[None]:
    """Hold the lock of dataset folder ``out``: one build writes it at a time."""
    from filelock import FileLock, Timeout

    lock = FileLock(out / ".build.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise ConfigError(
                f"{out}: another build is writing this dataset (it holds {lock.lock_file}); "
                f"wait for it to finish, or choose another --out"
            ) from None
        log.warning("%s: another build is writing this dataset; waiting for it", out)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _clean_partials(out: Path) -> None:
    """Remove what killed builds left in ``out`` (called under the lock, so none is live)."""
    for name in (keys.PAIRED_ADATA_FILE, keys.PAIRED_PATCHES_FILE):
        (out / f".{name}.partial").unlink(missing_ok=True)
    for d in (out, out / keys.PAIRED_SPLITS_DIR):
        for tmp in d.glob(".*.tmp") if d.is_dir() else []:
            tmp.unlink(missing_ok=True)
    parts = out / ".parts"
    if parts.is_dir():
        for p in parts.iterdir():
            if p.name.startswith("."):
                clean_stale(parts, p.name[1:].split(".partial-")[0].split(".old-")[0])


#: exceptions that make one sample unusable without stopping the build: the readers' own
#: errors, missing and unreadable files (truncated gzip: EOFError)
_SAMPLE_ERRORS = (HistoxmodalError, FileNotFoundError, ValueError, OSError, EOFError)


def _reason(ref: SampleRef, exc: BaseException) -> str:
    """Why ``ref`` failed, naming its files when the message does not already name one."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, HistoxmodalError | FileNotFoundError) or any(
        str(p) in msg for p in ref.inputs
    ):
        return msg
    files = ", ".join(str(p) for p in ref.inputs) or "its inputs"
    return f"{type(exc).__name__}: {msg} (reading {files})"


def _same_inputs(recorded: Any, inputs: dict[str, dict[str, str]]) -> bool:
    """Whether a manifest's ``inputs`` (sample -> {path: sha256}) name the same files with the
    same content as ``inputs``, whose paths are resolved.

    Manifests written before paths were resolved hold them relative to the folder that build
    ran in; they are resolved against the current folder, which is how they were compared then.
    """
    if not isinstance(recorded, dict) or set(recorded) != set(inputs):
        return False
    for sample, files in recorded.items():
        if not isinstance(files, dict):
            return False
        if {str(Path(p).resolve()): h for p, h in files.items()} != inputs[sample]:
            return False
    return True


def _build_paired_locked(
    samples: list[SampleRef],
    out: Path,
    cfg: PairedConfig,
    *,
    recipe: str,
    workers: int,
    overwrite: bool,
) -> dict:
    from histoxmodal.data.splits import SPLIT_KINDS, make_split, write_split

    manifest_path = out / keys.PAIRED_MANIFEST_FILE
    t0 = time.perf_counter()
    # resolved paths: the same files give the same record from any working folder
    inputs = {
        r.sample: {str(p.resolve()): file_sha256(p) for p in r.inputs if p.exists()}
        for r in samples
    }
    params = asdict(cfg)
    if params["stain"] is None:  # datasets built before stain normalisation stay up to date
        del params["stain"]
    # the reader options shape the counts too (pseudo-spot size, qv threshold, source)
    options = {r.sample: r.options for r in samples if r.options}
    if options:
        params["reader"] = options
    previous = None
    if manifest_path.exists():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s: unreadable manifest; rebuilding", manifest_path)
    if isinstance(previous, dict) and previous.get("status") == "complete" and not overwrite:
        if previous.get("params") == params and _same_inputs(previous.get("inputs"), inputs):
            try:
                check_paired(out)
            except (ConfigError, DataError) as exc:
                log.warning("%s; rebuilding", exc)
            else:
                log.info("%s is up to date", out)
                return {**previous, "up_to_date": True}
        else:
            raise ConfigError(
                f"{out} holds a dataset built from other inputs or parameters; pass "
                f"--overwrite to rebuild it, or choose another --out"
            )
    parts_dir = out / ".parts"
    parts_dir.mkdir(exist_ok=True)
    per_sample: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    parts: list[tuple[str, Path]] = []
    for ref in progress(samples, total=len(samples), desc="samples", unit="sample", log_items=True):
        if ref.skip_reason:
            skipped[ref.sample] = ref.skip_reason
            continue
        final = parts_dir / ref.sample
        stamp = {"params": params, "inputs": inputs[ref.sample]}
        done = final / "part.json"
        if done.exists() and not overwrite:
            info = json.loads(done.read_text(encoding="utf-8"))
            old = info.get("stamp") or {}
            if old.get("params") == params and _same_inputs(
                {ref.sample: old.get("inputs")}, {ref.sample: inputs[ref.sample]}
            ):
                per_sample[ref.sample] = info["counts"]
                parts.append((ref.sample, final))
                continue
        tmp = staging_dir(final)
        try:
            counts = _build_part(ref, cfg, tmp, workers)
        except _SAMPLE_ERRORS as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            skipped[ref.sample] = failed[ref.sample] = _reason(ref, exc)
            log.warning("%s: skipped: %s", ref.sample, failed[ref.sample])
            continue
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if counts["n_spots"] == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            skipped[ref.sample] = failed[ref.sample] = "no spot passed QC"
            log.warning("%s: skipped: no spot passed QC", ref.sample)
            continue
        write_json_atomic(tmp / "part.json", {"stamp": stamp, "counts": counts})
        publish_dir(tmp, final)
        per_sample[ref.sample] = counts
        parts.append((ref.sample, final))
    if not parts:
        raise ConfigError("no usable sample: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    # From here the final files are replaced one by one: first say so, so that a kill leaves a
    # dataset that is refused and rebuilt, never new files under the old "complete" manifest.
    write_json_atomic(
        manifest_path,
        {
            "status": "building",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
            "params": params,
        },
    )
    totals, obs = _assemble(parts, cfg, out)
    (out / keys.PAIRED_SPLITS_DIR).mkdir(exist_ok=True)
    splits = {}
    for kind in SPLIT_KINDS:
        try:
            split = make_split(obs, kind, seed=cfg.seed)
        except ConfigError as exc:  # e.g. one patient only
            splits[kind] = {"skipped": str(exc)}
            continue
        path = out / keys.PAIRED_SPLITS_DIR / f"{kind}.json"
        splits[kind] = {"file": str(path.relative_to(out)), "sha256": write_split(split, path)}
    manifest = {
        "status": "complete",
        "histoxmodal_version": __version__,
        "recipe": recipe,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
        "qc": {"in_tissue_only": cfg.in_tissue_only, "min_counts": cfg.min_counts},
        "inputs": inputs,
        "samples": per_sample,
        "skipped": skipped,
        "failed": failed,
        **totals,
        "files": {
            name: file_record(out / name)
            for name in (keys.PAIRED_ADATA_FILE, keys.PAIRED_PATCHES_FILE)
        },
        "splits": splits,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(manifest_path, manifest)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return manifest


def _report_text(path: str) -> str:
    from histoxmodal.io.reports import split_sections

    text = Path(path).read_text(encoding="utf-8", errors="replace")
    parts = split_sections(text)
    body = " ".join(parts.get(k, "") for k in ("findings", "impression")).strip()
    return body or text.strip()


def build_cohort(
    manifest: str | Path,
    out: str | Path,
    *,
    anchor: str = "cxr",
    window: str | timedelta | None = "24h",
    image_px: int = 224,
    fs: float = 100.0,
    length_s: float = 10.0,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
) -> dict[str, Any]:
    """Pair, read and store a cohort; returns the manifest written to ``out/manifest.json``.

    Parameters
    ----------
    manifest
        CSV/Parquet with ``patient_id, modality, path[, time, study_id]`` (paths relative to its
        folder and confined to it).
    anchor, window
        One row per record of ``anchor``, partners within ``window`` (see ``pair_cohort``).
    image_px
        Radiographs are windowed to [0, 1] and resized to ``image_px`` square (uint8 stored).
    fs, length_s
        ECGs are resampled to ``fs`` and cropped/padded to ``length_s`` (float16, mV).
    seed, test_fraction, val_fraction
        The patient-level split written to ``splits/patient.json``.
    """
    import h5py

    from histoxmodal.data.splits import digest
    from histoxmodal.io.cohort import pair_cohort
    from histoxmodal.io.ecg import read_ecg
    from histoxmodal.io.radiology import read_radiology
    from histoxmodal.progress import progress

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = pair_cohort(manifest, modalities=MODALITIES, anchor=anchor, window=window)
    n = len(pairs)
    if n == 0:
        raise CohortError(f"{manifest}: no {anchor!r} records to anchor the cohort on")
    n_t = round(fs * length_s)
    cxr = np.zeros((n, image_px, image_px), np.uint8)
    ecg = np.zeros((n, 12, n_t), np.float16)
    lead_mask = np.zeros((n, 12), bool)
    reports = [""] * n
    present = np.zeros((n, len(MODALITIES)), bool)
    failures: list[dict[str, str]] = []
    for i in progress(range(n), total=n, desc="records", unit="row"):
        row = pairs.iloc[i]
        for m_idx, m in enumerate(MODALITIES):
            if not row[f"mask_{m}"]:
                continue
            path = row[f"path_{m}"]
            try:
                if m == "cxr":
                    img = read_radiology(path, size=(image_px, image_px), unit=True)
                    if img.pixels.ndim != 2:
                        raise RadiologyReadError(f"{path}: a volume, not a radiograph")
                    cxr[i] = np.round(img.pixels * 255).astype(np.uint8)
                elif m == "ecg":
                    rec = read_ecg(path, fs=fs, length_s=length_s, missing_leads="mask")
                    ecg[i] = rec.signal.astype(np.float16)
                    lead_mask[i] = rec.lead_mask
                else:
                    reports[i] = _report_text(path)
                present[i, m_idx] = True
            except (OSError, ValueError) as exc:
                failures.append(
                    {"row": str(i), "modality": m, "path": str(path), "error": str(exc)}
                )
                log.warning("cohort row %d: %s not read: %s", i, m, exc)
    patients = pairs["patient_id"].astype(str).to_numpy()
    tmp = out / f".{COHORT_FILE}.partial"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("cxr", data=cxr, chunks=(1, image_px, image_px))
        f.create_dataset("ecg", data=ecg, chunks=(1, 12, n_t))
        f.create_dataset("ecg_lead_mask", data=lead_mask)
        f.create_dataset("report", data=np.array(reports, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("present", data=present)
        f.create_dataset("patient_id", data=patients.astype(object), dtype=h5py.string_dtype())
        f.attrs.update(
            {"modalities": list(MODALITIES), "image_px": image_px, "fs": fs, "length_s": length_s}
        )
    tmp.replace(out / COHORT_FILE)
    # patient-level split: all records of a patient on one side
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(patients))
    n_test, n_val = round(len(uniq) * test_fraction), round(len(uniq) * val_fraction)
    test_p, val_p = set(uniq[:n_test]), set(uniq[n_test : n_test + n_val])
    split = {
        "kind": "patient",
        "seed": seed,
        "n_obs": n,
        "obs_names_sha256": digest([str(p) for p in patients]),
        "folds": [
            {
                "name": "random_patients",
                "held_out": sorted(test_p),
                "test": [i for i in range(n) if patients[i] in test_p],
                "val": [i for i in range(n) if patients[i] in val_p],
            }
        ],
    }
    split["sha256"] = digest(split)
    (out / keys.PAIRED_SPLITS_DIR).mkdir(exist_ok=True)
    write_json_atomic(out / keys.split_path("patient"), split)
    meta = {
        "status": "complete",
        "kind": "cohort",
        "source_manifest": str(Path(manifest).resolve()),
        "anchor": anchor,
        "window": str(window),
        "n_rows": n,
        "n_patients": len(uniq),
        "present": {m: int(present[:, k].sum()) for k, m in enumerate(MODALITIES)},
        "failures": failures,
        "params": {"image_px": image_px, "fs": fs, "length_s": length_s},
        "splits": {"patient": {"file": keys.split_path("patient"), "sha256": split["sha256"]}},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / keys.PAIRED_MANIFEST_FILE, meta)
    return meta


def build(
    recipe: str,
    out: str | Path,
    *,
    src: str | Path | list[str | Path] | None = None,
    manifest: str | Path | None = None,
    image: str | None = None,
    alignment: str | None = None,
    mpp: float | None = None,
    patch_um: float | None = None,
    patch_px: int | None = None,
    genes: str | None = None,
    min_counts: int | None = None,
    in_tissue_only: bool = True,
    allow_lowres: bool = False,
    anchor: str | None = None,
    reader: dict[str, Any] | None = None,
    workers: int = 1,
    overwrite: bool = False,
    stain_normalize: str | None = None,
    stain_target: str | Path | None = None,
) -> dict[str, Any]:
    """Build a dataset from a recipe (``histoxmodal build --list``): a paired dataset from the
    samples the recipe finds under ``src`` (a folder or file, or a list of them), or a cohort
    store from ``manifest`` for the ``cohort`` recipe. Options left ``None`` take the recipe's
    defaults, then the built-in ones.

    ``reader`` overrides the recipe's ``reader`` section, option by option: the keyword options
    of the format's reader, e.g. for Xenium (:func:`~histoxmodal.io.spatial.read_xenium`)
    ``{"source": "transcripts", "pseudo_spot_um": 55, "min_qv": 20, "max_residual_um": 5}``.
    ``alignment`` is 10x's ``*_he_imagealignment.csv`` or Xenium Explorer's
    ``*_keypoints.csv``, told apart by content; without ``image``, a Xenium folder's own
    ``*he_image.ome.tif`` and alignment are used.

    ``stain_normalize`` (``macenko`` or ``reinhard``) with ``stain_target`` (a reference H&E
    image, a folder of tiles or a stain JSON) normalises every spot patch to that stain
    (:func:`~histoxmodal.data.stain.fit_stain_target`); the fitted normaliser is recorded in
    the manifest's ``params.stain``.

    Returns
    -------
    dict
        The dataset's manifest (``up_to_date`` is True when nothing had to be rebuilt).
    """
    from histoxmodal.data.recipes import find_samples, load_recipe

    r = load_recipe(recipe)
    if reader:
        if not isinstance(reader, dict):
            raise ConfigError(f"reader={reader!r}: expected a mapping of reader options")
        r = replace(r, reader={**r.reader, **reader})
    d = r.defaults

    def pick(value, key, default):
        return value if value is not None else d.get(key, default)

    if r.format == "cohort":
        if manifest is None:
            raise ConfigError(
                "the cohort recipe needs --manifest FILE (patient_id, modality, path)"
            )
        return build_cohort(
            manifest,
            out,
            anchor=pick(anchor, "anchor", "cxr"),
            window=d.get("window", "24h"),
            image_px=int(pick(patch_px, "image_px", 224)),
            fs=float(d.get("fs", 100)),
            length_s=float(d.get("length_s", 10)),
        )
    if r.format == "hescape":  # rows already paired with their H&E crops: a builder of its own
        from histoxmodal.workflows.build_hescape import build_from_recipe

        return build_from_recipe(
            r, out, src=src, image=image, alignment=alignment, mpp=mpp, patch_um=patch_um,
            patch_px=patch_px, min_counts=min_counts, allow_lowres=allow_lowres,
            workers=workers, overwrite=overwrite,
        )  # fmt: skip
    if src is None:
        raise ConfigError(f"recipe {r.name!r} needs --src, the folder its samples are found in")
    stain = None
    if (stain_normalize is None) != (stain_target is None):
        raise ConfigError(
            "--stain-normalize and --stain-target go together: give the method (macenko or "
            "reinhard) and the reference image, tile folder or stain JSON"
        )
    if stain_normalize is not None:
        from histoxmodal.data.stain import fit_stain_target

        stain = fit_stain_target(stain_target, stain_normalize).to_dict()
    cfg = PairedConfig(
        patch_um=float(pick(patch_um, "patch_um", 112.0)),
        patch_px=int(pick(patch_px, "patch_px", 224)),
        genes=str(pick(genes, "genes", "intersection")),
        min_counts=int(pick(min_counts, "min_counts", 0)),
        in_tissue_only=in_tissue_only,
        allow_lowres=allow_lowres,
        stain=stain,
    )
    if mpp is not None and not (isinstance(mpp, int | float) and 0 < mpp < 100):
        raise ConfigError(
            f"--mpp {mpp}: the µm per full-resolution pixel must be a number in (0, 100), e.g. "
            "0.25 (40x) or 0.5 (20x); leave it out to use the files' own"
        )  # 0 used to mean "not set" and was silently ignored
    srcs = [src] if isinstance(src, str | Path) else list(src)
    refs = find_samples(r, srcs, image=image, alignment=alignment, mpp=mpp)
    return build_paired(refs, out, cfg, recipe=r.name, workers=workers, overwrite=overwrite)
