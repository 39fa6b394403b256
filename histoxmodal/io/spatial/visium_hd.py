"""10x Visium HD (Space Ranger 3+): square bins as they are, or 2 µm bins pooled into squares or
discs of any size, streamed in bounded memory.

The layout read (10x's "Space Ranger outputs" for Visium HD; the folder given, or its ``outs/``)::

    binned_outputs/
      square_002um/ square_008um/ square_016um/      (and any custom square_NNNum/)
        filtered_feature_bc_matrix.h5                 10x's HDF5 matrix (``matrix/``: barcodes,
                                                      data, indices, indptr, shape, features/)
        spatial/tissue_positions.parquet              barcode, in_tissue, array_row, array_col,
                                                      pxl_row_in_fullres, pxl_col_in_fullres
        spatial/scalefactors_json.json                microns_per_pixel, bin_size_um,
                                                      spot_diameter_fullres (the bin's side in
                                                      px), tissue_hires_scalef, tissue_lowres_scalef
        spatial/tissue_hires_image.png, tissue_lowres_image.png   (or in outs/spatial/)

Bin barcodes are named ``s_{bin:03d}um_{array_row:05d}_{array_col:05d}-1``; bin ``(row, col)``
spans ``[col, col + 1) x [row, row + 1)`` times the bin size in µm on the capture array.

A whole 6.5 mm capture area holds about 11 million 2 µm bins (a 3,350 x 3,350 grid), so
:func:`pool_bins` never holds the 2 µm matrix: it reads the HDF5 matrix one block of barcodes
(rows of the grid, as the barcodes sort) at a time, sums each block into its pooled spots with a
sparse product, and folds the partial sums into one sparse result when they pile up. Memory is
bounded by the block plus the pooled result. The pooled spots' centres are placed on the image
by the homography fitted to the positions file (Space Ranger places bins by one), streamed too.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial.common import (
    MissingSpatialFileError,
    SpatialFormatError,
    absolute,
    check_coords_in_image,
    finalize,
    images_from_full,
    is_blank,
    reconcile_mpp,
    require_file,
    unique_gene_names,
)
from histoxmodal.io.spatial.visium_hd_grid import (
    BARCODE_PATTERN,
    POSITION_COLUMNS,
    BinGrid,
    apply_homography,
    fit_homography,
    parse_bin_barcodes,
    read_bin_grid,
)
from histoxmodal.io.spatial.visium_hd_pool import (
    DEFAULT_BLOCK_BINS,
    MATRIX_FILE,
    POOL_SHAPES,
    BinPool,
    pool_bins,
)

log = logging.getLogger(__name__)

__all__ = [
    "BIN_DIR_PATTERN",
    "DEFAULT_BLOCK_BINS",
    "POOL_SHAPES",
    "BinGrid",
    "BinPool",
    "apply_homography",
    "find_visium_hd_outs",
    "fit_homography",
    "parse_bin_barcodes",
    "pool_bins",
    "read_bin_grid",
    "read_visium_hd",
    "resolve_bin_um",
    "visium_hd_bins",
    "visium_hd_image",
    "visium_hd_input_files",
]

BINNED_DIR = "binned_outputs"
#: a bin folder's name, e.g. ``square_008um``
BIN_DIR_PATTERN = re.compile(r"^square_(\d{3})um$")
POSITIONS_FILE = "tissue_positions.parquet"
SCALEFACTORS_FILE = "scalefactors_json.json"


def find_visium_hd_outs(path: str | Path) -> Path:
    """The folder holding ``binned_outputs/``: ``path`` itself or its ``outs/``.

    Raises
    ------
    MissingSpatialFileError
        Neither holds ``binned_outputs/``; the message says what was expected.
    """
    path = Path(path)
    for folder in (path, path / "outs"):
        if (folder / BINNED_DIR).is_dir():
            return folder
    hint = ""
    if BIN_DIR_PATTERN.match(path.name) or path.name == BINNED_DIR:
        hint = "; this looks like a folder inside the output: give Space Ranger's outs/ above it"
    elif (path / "spatial").is_dir() or (path / "outs" / "spatial").is_dir():
        hint = "; it has spatial/ but no binned_outputs/: classic Visium? use read_visium"
    raise MissingSpatialFileError(
        f"{path}: not a Visium HD output folder: no {BINNED_DIR}/ here or in outs/; expected "
        f"Space Ranger's outs/ with {BINNED_DIR}/square_002um/ (and square_008um/, "
        f"square_016um/), each holding {MATRIX_FILE} and spatial/{POSITIONS_FILE}{hint}"
    )


def visium_hd_bins(path: str | Path) -> dict[float, Path]:
    """The bin sizes (µm) of a Visium HD output and their folders, smallest first."""
    binned = find_visium_hd_outs(path) / BINNED_DIR
    found = {}
    for d in sorted(binned.iterdir()):
        m = BIN_DIR_PATTERN.match(d.name)
        if m and d.is_dir():
            found[float(int(m.group(1)))] = d
    if not found:
        raise MissingSpatialFileError(
            f"{binned}: no square_NNNum/ bin folder (square_002um, square_008um, square_016um)"
        )
    return dict(sorted(found.items()))


def _bin_folder(path: Path, bin_um: float) -> Path:
    bins = visium_hd_bins(path)
    if bin_um not in bins:  # the option asks for what the output does not have: usage
        have = ", ".join(f"{b:g}" for b in bins)
        raise ConfigError(
            f"{path}: bin_um={bin_um:g} not in this output (bins of {have} µm: "
            f"{', '.join(p.name for p in bins.values())}); choose one of them, or pool the "
            f"2 µm bins with pool_um="
        )
    return bins[bin_um]


def _spatial_file(bin_dir: Path, name: str) -> Path | None:
    """``name`` in the bin's ``spatial/``, else in ``outs/spatial/``."""
    for folder in (bin_dir / "spatial", bin_dir.parents[1] / "spatial"):
        if (folder / name).is_file():
            return folder / name
    return None


#: the names 10x gives the full-resolution image in its public Visium HD datasets
FULLRES_SUFFIXES = (".btf", ".tif", ".tiff", ".jpg", ".jpeg", ".png")


def resolve_bin_um(bin_um: float | None, pool_um: float | None) -> float:
    """The bins :func:`read_visium_hd` reads: ``bin_um``, or by default 2 µm when pooling and
    8 µm (10x's recommended size) when not."""
    if bin_um is None:
        return 2.0 if pool_um is not None else 8.0
    return float(bin_um)


def visium_hd_image(path: str | Path) -> Path | None:
    """The full-resolution image of a Visium HD run by 10x's names, or ``None``: the one file of
    ``outs/microscope_image/``, else ``*tissue_image.<btf|tif|tiff|jpg|png>`` in the run folder
    or in ``outs/`` (as 10x's public datasets ship it)."""
    outs = find_visium_hd_outs(path)
    micro = outs / "microscope_image"
    if micro.is_dir():
        files = sorted(p for p in micro.iterdir() if p.is_file())
        if len(files) == 1:
            return files[0]
    run = outs.parent if outs.name == "outs" else outs
    for folder in (run, outs):
        found = sorted(
            p
            for p in folder.glob("*tissue_image.*")
            if p.is_file() and p.suffix.lower() in FULLRES_SUFFIXES
        )
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            log.warning("%s: several *tissue_image files (%s); pass --image", folder, found)
    return None


def visium_hd_input_files(path: str | Path, bin_um: float) -> list[Path]:
    """The files :func:`read_visium_hd` reads for bins of ``bin_um``: the matrix, the positions,
    the scale factors and the hires/lowres images (what a dataset's fingerprint hashes)."""
    bin_dir = _bin_folder(Path(path), float(bin_um))
    files = [bin_dir / MATRIX_FILE, bin_dir / "spatial" / POSITIONS_FILE]
    for name in (SCALEFACTORS_FILE, "tissue_hires_image.png", "tissue_lowres_image.png"):
        p = _spatial_file(bin_dir, name)
        if p is not None:
            files.append(p)
    return [p for p in files if p.exists()]


def _load_images(bin_dir: Path, scal: dict[str, float]) -> tuple[dict[str, np.ndarray], list]:
    from PIL import Image

    images, blank = {}, []
    for key, fname in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        p = _spatial_file(bin_dir, fname)
        if p is None:
            continue
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 400_000_000)
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        if is_blank(arr):
            blank.append(key)
        else:
            images[key] = arr
    return images, blank


def read_visium_hd(
    path: str | Path,
    *,
    bin_um: float | None = None,
    pool_um: float | None = None,
    pool_shape: str = "square",
    pool_pitch_um: float | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    block_bins: int = DEFAULT_BLOCK_BINS,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
):
    """Read a Visium HD output: one bin size as it is, or its bins pooled into larger spots.

    Parameters
    ----------
    path
        Space Ranger's ``outs/`` (holding ``binned_outputs/``) or the run folder above it.
    bin_um
        The bins read (µm): 2, 8, 16 or a custom size the output holds. Default: 2 when
        pooling, else 8 (10x's recommended size).
    pool_um
        Pool the bins into spots of this size (µm; a square's side or a disc's diameter), e.g.
        55 (HESCAPE's pseudo-spots) or 100 (legacy ST). ``None`` reads the bins as they are.
    pool_shape
        ``square`` or ``disc``.
    pool_pitch_um
        Distance between pooled spots (µm, >= ``pool_um``); default ``pool_um``.
    image
        The full-resolution image given to Space Ranger (the H&E the positions refer to).
    mpp
        µm per full-resolution pixel; by default ``microns_per_pixel`` of the scale factors.
    block_bins
        Pooling only: barcodes read per block.
    sample, patient, batch
        Ids; default the run folder's name (above ``outs/``).

    Returns
    -------
    anndata.AnnData
        Raw counts in ``X`` (spots × genes, CSR int32); ``obsm['spatial']`` the bin or spot
        centres in full-resolution pixels; ``obs['array_row' | 'array_col']`` the bin's array
        indices (pooled: the spot's indices on the pooling grid), ``obs['x_um' | 'y_um']`` the
        centre in µm on the capture array; pooled, also ``n_bins`` (bins under tissue summed)
        and ``tissue_fraction`` (of the bins the spot spans). ``uns['spatial'][sample]``:
        hires/lowres images, scale factors (``spot_diameter_fullres`` and ``bin_size_um`` of
        the spots read) and ``metadata`` with the files, the pixel size and its source and, when
        pooled, ``pooling`` (source bins, size, shape, pitch, bins read and pooled).
    """
    import anndata as ad
    import pandas as pd

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Visium HD folder not found: {path}")
    outs = find_visium_hd_outs(path)
    sample = sample or (outs.resolve().parent.name if outs.name == "outs" else outs.name)
    bin_um = resolve_bin_um(bin_um, pool_um)
    if not (isinstance(bin_um, int | float) and bin_um > 0):
        raise SpatialFormatError(f"bin_um={bin_um!r} must be a bin size in µm, e.g. 2, 8 or 16")
    bin_um = float(bin_um)
    bin_dir = _bin_folder(outs, bin_um)
    mfile = bin_dir / MATRIX_FILE
    if not mfile.is_file():
        raise MissingSpatialFileError(
            f"{bin_dir}: no {MATRIX_FILE}; Space Ranger writes it in every bin folder (the "
            f"matrix-market folder alone cannot be streamed: keep the .h5)"
        )
    pfile = bin_dir / "spatial" / POSITIONS_FILE
    sf_file = _spatial_file(bin_dir, SCALEFACTORS_FILE)
    if not pfile.is_file() or sf_file is None:
        raise MissingSpatialFileError(
            f"{bin_dir}: expected spatial/{POSITIONS_FILE} and spatial/{SCALEFACTORS_FILE}"
        )
    scal = {
        k: float(v)
        for k, v in json.loads(sf_file.read_text()).items()
        if isinstance(v, int | float)
    }
    if scal.get("bin_size_um") and abs(scal["bin_size_um"] - bin_um) > 1e-6:
        raise SpatialFormatError(
            f"{sf_file}: bin_size_um={scal['bin_size_um']:g} but the folder is {bin_dir.name}; "
            f"the scale factors belong to another bin size"
        )
    meta: dict[str, object] = {
        "format": "visium_hd",
        "matrix": absolute(mfile),
        "positions": absolute(pfile),
        "scalefactors_file": absolute(sf_file),
        "bin_um": bin_um,
        "image_path": None,
    }
    if pool_um is None:
        adata, xy = _read_bins(mfile, pfile)
        size_um = bin_um
        grid_px_per_bin = None
    else:
        pool, grid = pool_bins(
            mfile, pfile, bin_um=bin_um, pool_um=pool_um, shape=pool_shape,
            pitch_um=pool_pitch_um, block_bins=block_bins,
        )  # fmt: skip
        centres = pool.centres_um
        xy = apply_homography(grid.homography, centres / bin_um - 0.5)
        gi, gj = pool.grid[:, 0], pool.grid[:, 1]
        obs = pd.DataFrame(
            {
                "x_um": centres[:, 0],
                "y_um": centres[:, 1],
                keys.OBS_ARRAY_ROW: gj,
                keys.OBS_ARRAY_COL: gi,
                "n_bins": pool.n_bins,
                "tissue_fraction": pool.n_bins / np.maximum(pool.n_grid_bins, 1),
                keys.OBS_IN_TISSUE: True,
            },
            index=[f"{pool_shape}_{pool.pool_um:g}um_{j:05d}_{i:05d}" for i, j in pool.grid],
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = ad.AnnData(X=pool.counts, obs=obs)
        adata.var_names = unique_gene_names(pool.genes, str(mfile))
        adata.var[keys.VAR_GENE_IDS] = pool.gene_ids
        adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
        size_um = pool.pool_um
        meta["pooling"] = {
            "source_bin_um": bin_um,
            "pool_um": pool.pool_um,
            "shape": pool.shape,
            "pitch_um": pool.pitch_um,
            "n_bins_read": pool.stats["n_bins_read"],
            "n_bins_pooled": pool.stats["n_bins_pooled"],
            "n_spots": int(adata.n_obs),
            "rule": "a bin belongs to the spot holding its centre",
        }
        meta["homography"] = grid.homography.tolist()
        meta["homography_rms_px"] = grid.rms_px
        grid_px_per_bin = float(
            np.linalg.norm(
                apply_homography(grid.homography, [[grid.n_cols / 2 + 1, grid.n_rows / 2]])
                - apply_homography(grid.homography, [[grid.n_cols / 2, grid.n_rows / 2]])
            )
        )
    adata.obsm[keys.OBSM_SPATIAL] = np.asarray(xy, np.float64)
    candidates: list[tuple[float | None, str]] = [(mpp, "user")]
    if scal.get("microns_per_pixel"):
        candidates.append((scal["microns_per_pixel"], "scalefactors microns_per_pixel"))
    images: dict[str, np.ndarray]
    if image is not None:
        from histoxmodal.io.slide import open_slide

        image = require_file(Path(image), "full-resolution image")
        with open_slide(image, allow_implausible_mpp=True) as s:
            candidates.append((s.mpp_info.metadata_mpp, f"image metadata ({s.mpp_info.detail})"))
        images, own, size = images_from_full(image)
        scal.update(own)
        meta.update({"image_path": absolute(image), "image_size": list(size), "blank_images": []})
    else:
        images, blank = _load_images(bin_dir, scal)
        meta["blank_images"] = blank
        size = None
        for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
            if key in images and scal.get(sf):
                h, w = images[key].shape[:2]
                size = (round(w / scal[sf]), round(h / scal[sf]))
                break
    if size is not None:
        check_coords_in_image(adata.obsm[keys.OBSM_SPATIAL], size, f"{sample} ({pfile.name})", scal)
    if grid_px_per_bin:
        candidates.append((bin_um / grid_px_per_bin, f"bin pitch ({bin_um:g} µm)"))
    value, source = reconcile_mpp(candidates, sample)
    meta.update({"mpp": value, "mpp_source": source})
    scal[keys.SPOT_DIAMETER] = size_um / value
    scal["bin_size_um"] = size_um
    return finalize(
        adata,
        sample=sample,
        patient=patient,
        batch=batch,
        images=images,
        scalefactors=scal,
        metadata=meta,
    )


def _read_bins(mfile: Path, pfile: Path):
    """The bins as they are: ``(adata, xy (n, 2) full-resolution px)``."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        full = sc.read_10x_h5(mfile, gex_only=True)
    if full.n_obs > 2_000_000:
        log.warning(
            "%s: %d bins read as they are (a dense grid of spots); pool them (pool_um=) for a "
            "spot-level dataset",
            mfile,
            full.n_obs,
        )
    pos = pd.read_parquet(pfile, columns=list(POSITION_COLUMNS)).set_index("barcode")
    missing = full.obs_names.difference(pos.index)
    if len(missing):
        raise SpatialFormatError(
            f"{mfile.name} and {pfile}: {len(missing)} of {full.n_obs} bins of the matrix have no "
            f"position (e.g. {', '.join(missing[:3])}); are they from the same bin folder?"
        )
    pos = pos.loc[full.obs_names]
    bin_um = float(BARCODE_PATTERN.match(full.obs_names[0]).group(1)) if full.n_obs else 0.0
    obs = pd.DataFrame(
        {
            "x_um": (pos["array_col"].to_numpy() + 0.5) * bin_um,
            "y_um": (pos["array_row"].to_numpy() + 0.5) * bin_um,
            keys.OBS_ARRAY_ROW: pos["array_row"].to_numpy(),
            keys.OBS_ARRAY_COL: pos["array_col"].to_numpy(),
            keys.OBS_IN_TISSUE: pos["in_tissue"].to_numpy() == 1,
        },
        index=full.obs_names,
    )
    adata = ad.AnnData(X=full.X, obs=obs)
    adata.var_names = unique_gene_names(full.var_names, str(mfile))
    adata.var[keys.VAR_GENE_IDS] = full.var["gene_ids"].to_numpy()
    adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    return adata, xy
