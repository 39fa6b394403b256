"""10x Xenium output, as cells or pooled into pseudo-spots so it trains like Visium.

Two sources: the cell-feature matrix with the cell centroids (``source="cells"``, optionally
pooled by centroid), or the transcripts themselves (``source="transcripts"``:
``transcripts.parquet`` streamed into square bins, quality-filtered, controls counted apart; see
:mod:`~histoxmodal.io.spatial.xenium_transcripts`). Either is placed on a registered H&E through
10x's alignment matrix or Xenium Explorer's keypoints (:mod:`~histoxmodal.io.spatial.alignment`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.io.spatial.alignment import (
    DEFAULT_MAX_RESIDUAL_UM,
    XENIUM_MORPHOLOGY_MPP,
    HEAlignment,
    read_he_alignment,
)
from histoxmodal.io.spatial.common import (
    MissingSpatialFileError,
    SpatialFormatError,
    absolute,
    check_coords_in_image,
    finalize,
    images_from_full,
    reconcile_mpp,
    require_file,
    to_counts_csr,
    unique_gene_names,
)
from histoxmodal.io.spatial.xenium_transcripts import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_MIN_QV,
    pool_transcripts,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PSEUDO_SPOT_UM",
    "SOURCES",
    "XENIUM_MORPHOLOGY_MPP",
    "pool_pseudo_spots",
    "read_alignment",
    "read_xenium",
    "xenium_he_files",
    "xenium_input_files",
]

#: what :func:`read_xenium` reads the counts from
SOURCES = ("cells", "transcripts")
#: pseudo-spot side when pooling transcripts and none is given: HESCAPE's 55 µm (a Visium spot)
DEFAULT_PSEUDO_SPOT_UM = 55.0
TRANSCRIPTS_FILE = "transcripts.parquet"
CELLS_FILES = ("cells.parquet", "cells.csv.gz", "cells.csv")
#: names 10x gives the post-Xenium H&E and its alignment (``<run>_he_image.ome.tif``,
#: ``<run>_he_imagealignment.csv``) and Xenium Explorer its keypoints export
HE_IMAGE_PATTERNS = ("*he_image.ome.tif", "*he_image.ome.tiff", "*he_image.tif", "*he_image.tiff")
HE_ALIGNMENT_PATTERNS = (
    "*he_imagealignment.csv",
    "*he_image_matrix.csv",
    "*he_image_keypoints.csv",
)


def read_alignment(
    alignment: str | Path | np.ndarray,
    *,
    max_residual_um: float = DEFAULT_MAX_RESIDUAL_UM,
    keypoint_units: str = "um",
) -> np.ndarray:
    """A 3 × 3 affine in 10x's convention (H&E pixels → morphology pixels) from a 10x
    ``*_imagealignment.csv``, a Xenium Explorer ``*_keypoints.csv`` (fitted; see
    :func:`~histoxmodal.io.spatial.alignment.read_he_alignment`) or an array."""
    return read_he_alignment(
        alignment, max_residual_um=max_residual_um, keypoint_units=keypoint_units
    ).image_to_morphology


def pool_pseudo_spots(xy_um: np.ndarray, diameter_um: float):
    """Assign cells to square bins of side ``diameter_um`` on a grid anchored at (0, 0).

    Returns
    -------
    assign
        ``(n_spots, n_cells)`` sparse 0/1 matrix; ``assign @ X`` sums the cells' counts.
    centres_um
        ``(n_spots, 2)`` bin centres in µm.
    grid
        ``(n_spots, 2)`` int bin indices ``(col, row)``.
    """
    import scipy.sparse as sp

    if not diameter_um > 0:
        raise SpatialFormatError(f"pseudo_spot_um={diameter_um} must be positive (µm)")
    ij = np.floor(xy_um / diameter_um).astype(np.int64)
    grid, inverse = np.unique(ij, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n = len(xy_um)
    assign = sp.csr_matrix((np.ones(n, np.float32), (inverse, np.arange(n))), shape=(len(grid), n))
    return assign, (grid + 0.5) * diameter_um, grid


def xenium_input_files(path: str | Path, source: str = "cells") -> list[Path] | None:
    """The files of a Xenium output folder that :func:`read_xenium` reads, or ``None``.

    ``source="cells"``: the cell-feature matrix (``cell_feature_matrix.h5`` or the files of the
    ``cell_feature_matrix/`` folder) and the cell table (``cells.parquet``, ``cells.csv.gz``
    or ``cells.csv``); ``None`` when ``path`` holds no cell-feature matrix.
    ``source="transcripts"``: ``transcripts.parquet`` and the cell table when there is one;
    ``None`` without ``transcripts.parquet``. Morphology images and the rest are left out.
    """
    path = Path(path)
    _check_source(source)

    def present(p: Path) -> bool:
        # a FIFO or a link to a device is listed too, so that hashing refuses it by name
        return p.exists() and not p.is_dir()

    if source == "transcripts":
        if not present(path / TRANSCRIPTS_FILE):
            return None
        files = [path / TRANSCRIPTS_FILE]
    elif present(path / "cell_feature_matrix.h5"):
        files = [path / "cell_feature_matrix.h5"]
    elif (path / "cell_feature_matrix").is_dir():
        files = sorted(q for q in (path / "cell_feature_matrix").rglob("*") if present(q))
    else:
        return None
    return files + [path / n for n in CELLS_FILES if present(path / n)][:1]


def xenium_he_files(path: str | Path) -> tuple[Path | None, Path | None]:
    """The post-Xenium H&E image and its alignment file inside a Xenium folder, by 10x's names.

    Image: ``*he_image.ome.tif`` (``.tiff``, or plain ``.tif``); alignment:
    ``*he_imagealignment.csv`` (10x's matrix), else Xenium Explorer's export for that image
    (``*he_image_matrix.csv``, then ``*he_image_keypoints.csv``). ``(None, None)`` parts when
    absent.

    Raises
    ------
    SpatialFormatError
        When several files match one kind: the folder is ambiguous, pass the files explicitly.
    """
    path = Path(path)

    def one(patterns: tuple[str, ...], what: str) -> Path | None:
        for pattern in patterns:
            found = sorted(p for p in path.glob(pattern) if p.is_file())
            if len(found) > 1:
                raise SpatialFormatError(
                    f"{path}: several {what} files ({', '.join(p.name for p in found)}); pass "
                    f"the one to use (--image / --alignment, or image= / alignment=)"
                )
            if found:
                return found[0]
        return None

    return one(HE_IMAGE_PATTERNS, "H&E image"), one(HE_ALIGNMENT_PATTERNS, "H&E alignment")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise SpatialFormatError(f"source={source!r}: expected one of {', '.join(SOURCES)}")


def _check_alignment_scale(aln: HEAlignment, image: Path, where: str) -> None:
    """Warn when the alignment's pixel size and the image's own (its metadata) disagree, the
    sign of keypoints in the other units (µm vs morphology pixels) or of the wrong image."""
    from histoxmodal.io.slide import open_slide

    try:
        with open_slide(image, allow_implausible_mpp=True) as s:
            own = s.mpp_info.metadata_mpp
    except Exception:  # the image was read once already; its metadata is a bonus
        return
    if not own or abs(aln.mpp - own) / own <= 0.1:
        return
    hint = ""
    if aln.kind == "keypoints":
        for units, factor in (("px", XENIUM_MORPHOLOGY_MPP), ("um", 1 / XENIUM_MORPHOLOGY_MPP)):
            if units != aln.keypoint_units and abs(aln.mpp * factor - own) / own <= 0.1:
                word = "morphology pixels" if units == "px" else "µm"
                hint = f"; its fixedX/fixedY look like {word}: pass keypoint_units={units!r}"
    warnings.warn(
        f"{where}: the {aln.kind} alignment ({aln.path or 'array'}) gives {aln.mpp:.4g} µm per "
        f"pixel of {image.name}, whose metadata says {own:.4g}{hint}",
        UserWarning,
        stacklevel=4,
    )


def _place_on_image(
    xy_um: np.ndarray,
    *,
    image: str | Path | None,
    alignment: str | Path | np.ndarray | HEAlignment | None,
    sample: str,
    meta: dict[str, object],
    max_residual_um: float,
    keypoint_units: str,
) -> tuple[np.ndarray, float, str, dict[str, np.ndarray], dict[str, float]]:
    """Spot or cell centres ``(n, 2)`` µm → the image's full-resolution pixels (morphology
    pixels without an image), with the pixel size and its provenance, the hires/lowres images
    and scale factors; records the image and alignment in ``meta``."""
    px = xy_um / XENIUM_MORPHOLOGY_MPP
    mpp = XENIUM_MORPHOLOGY_MPP
    src = "Xenium morphology pixel (0.2125 µm)"
    images: dict[str, np.ndarray] = {}
    scal: dict[str, float] = {}
    if image is not None:
        image = require_file(Path(image), "image")
        images, scal, size = images_from_full(image)
        if alignment is not None:
            aln = read_he_alignment(
                alignment, max_residual_um=max_residual_um, keypoint_units=keypoint_units
            )
            px = aln.um_to_image(xy_um)
            mpp = aln.mpp
            if aln.kind == "keypoints":
                src = (
                    f"Xenium Explorer keypoints ({aln.n_keypoints} pairs, RMS residual "
                    f"{aln.rms_um:.2f} µm)"
                )
            else:
                src += " and alignment"
            meta.update(aln.metadata())
            _check_alignment_scale(aln, image, sample)
        check_coords_in_image(px, size, f"{sample} ({image.name})", scal)
        meta.update({"image_path": absolute(image), "image_size": list(size)})
    return px, mpp, src, images, scal


def read_xenium(
    path: str | Path,
    *,
    source: str = "cells",
    pseudo_spot_um: float | None = None,
    min_cells: int = 1,
    min_qv: float = DEFAULT_MIN_QV,
    image: str | Path | None = None,
    alignment: str | Path | np.ndarray | HEAlignment | None = None,
    max_residual_um: float = DEFAULT_MAX_RESIDUAL_UM,
    keypoint_units: str = "um",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
):
    """Read a Xenium output folder: cells (or cells pooled into pseudo-spots), or transcripts
    pooled into pseudo-spots.

    Parameters
    ----------
    path
        The Xenium output folder. ``source="cells"``: ``cell_feature_matrix.h5`` (or the
        ``cell_feature_matrix/`` folder: ``matrix.mtx.gz``, ``features.tsv.gz``,
        ``barcodes.tsv.gz``, plain or gzipped) and ``cells.parquet``, ``cells.csv.gz`` or
        ``cells.csv``. ``source="transcripts"``: ``transcripts.parquet`` (the cell table, when
        present, only gives ``obs['n_cells']``).
    source
        ``cells`` or ``transcripts`` (:data:`SOURCES`).
    pseudo_spot_um
        Pool into square pseudo-spots of this side (µm) on a grid anchored at (0, 0) µm. For
        cells ``None`` keeps cells; for transcripts ``None`` means 55 µm
        (:data:`DEFAULT_PSEUDO_SPOT_UM`).
    min_cells
        Cells only: pseudo-spots with fewer cells are dropped.
    min_qv
        Transcripts only: keep transcripts with ``qv >= min_qv`` (Xenium's own threshold, 20).
    image
        A registered image (for example the post-Xenium H&E). With ``alignment``, positions are
        mapped into it; without, it is taken to share the morphology image's pixels.
    alignment
        10x's ``*_he_imagealignment.csv`` (3 × 3 affine, image pixels → morphology pixels; its
        inverse maps cells and spots into the image), Xenium Explorer's ``*_keypoints.csv``
        (an affine fitted to the landmark pairs), a 3 × 3 array in 10x's convention, or an
        :class:`~histoxmodal.io.spatial.alignment.HEAlignment`. The kind is told from the file.
    max_residual_um
        A keypoint fit whose RMS residual exceeds this (µm) is refused.
    keypoint_units
        Units of the keypoints' Xenium side: ``um`` (Xenium Explorer) or ``px`` (morphology).
    batch_rows
        Transcripts only: rows read per batch (memory scales with it, not with the file).

    Returns
    -------
    anndata.AnnData
        Genes in ``X`` (raw counts); negative-control probes and codewords, blank, unassigned
        and deprecated codewords apart in ``obsm['control_counts']`` (a DataFrame).
        ``obsm['spatial']`` is in the image's pixels (morphology pixels, 0.2125 µm, when no
        image is given); ``obs['x_um']``/``obs['y_um']`` keep the Xenium µm coordinates (the
        pseudo-spot centres when pooled). From transcripts, ``obs`` also holds the QC counts
        per spot: ``n_low_qv`` (dropped for ``qv < min_qv``), ``n_controls`` and one
        ``n_<category>`` per control category (``n_negative_control_probe``, ...), and
        ``n_cells`` when a cell table is present; ``uns['spatial'][sample]['metadata']``
        records the pooling (``source``, ``pseudo_spot_um``, ``min_qv``, totals read, dropped
        and kept per category) and the alignment (kind, file, keypoint RMS residual in µm).
    """
    _check_source(source)
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Xenium folder not found: {path}")
    sample = sample or path.name
    if source == "transcripts":
        adata, xy_um, meta = _read_transcripts(
            path,
            pseudo_spot_um=DEFAULT_PSEUDO_SPOT_UM if pseudo_spot_um is None else pseudo_spot_um,
            min_qv=min_qv,
            batch_rows=batch_rows,
        )
        pseudo_spot_um = meta["pseudo_spot_um"]
    else:
        adata, xy_um, meta = _read_cells(path, pseudo_spot_um=pseudo_spot_um, min_cells=min_cells)
    px, mpp, src, images, scal = _place_on_image(
        xy_um,
        image=image,
        alignment=alignment,
        sample=sample,
        meta=meta,
        max_residual_um=max_residual_um,
        keypoint_units=keypoint_units,
    )
    adata.obsm[keys.OBSM_SPATIAL] = px
    value, source_mpp = reconcile_mpp([(mpp, src)], sample)
    meta.update({"mpp": value, "mpp_source": source_mpp})
    if pseudo_spot_um is not None:
        scal[keys.SPOT_DIAMETER] = pseudo_spot_um / value
    return finalize(
        adata,
        sample=sample,
        patient=patient,
        batch=batch,
        images=images,
        scalefactors=scal,
        metadata=meta,
    )


def _read_cells(path: Path, *, pseudo_spot_um: float | None, min_cells: int):
    """The cell path of :func:`read_xenium`: ``(adata, xy_um (n, 2), metadata)``."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    mfile = path / "cell_feature_matrix.h5"
    if mfile.is_file():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            full = sc.read_10x_h5(mfile, gex_only=False)
    elif (path / "cell_feature_matrix").is_dir():
        from histoxmodal.io.spatial.visium import read_mtx_folder

        mfile = path / "cell_feature_matrix"
        full = read_mtx_folder(mfile, gex_only=False)
    else:
        hint = (
            "; this folder has transcripts.parquet: read it with source='transcripts'"
            if (path / TRANSCRIPTS_FILE).is_file()
            else ""
        )
        raise MissingSpatialFileError(
            f"{path}: no Xenium cell-feature matrix; expected cell_feature_matrix.h5 or a "
            f"cell_feature_matrix/ folder (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz), "
            f"as Xenium Ranger writes them in the output folder{hint}"
        )
    # the same dtype whatever the file: int32 counts (the .h5 stores them as float32)
    full.X = to_counts_csr(full.X)
    cells_file = _cells_file(path)
    if cells_file is None:
        raise MissingSpatialFileError(
            f"{path}: no cell centroids; expected cells.parquet, cells.csv.gz or cells.csv"
        )
    cells = (
        pd.read_parquet(cells_file) if cells_file.suffix == ".parquet" else pd.read_csv(cells_file)
    )
    # cells.parquet of some Xenium Ranger versions stores the ids as bytes
    cells.index = pd.Index(
        [c.decode() if isinstance(c, bytes) else str(c) for c in cells["cell_id"]]
    )
    missing = full.obs_names.difference(cells.index)
    if len(missing):
        raise SpatialFormatError(
            f"{mfile.name} and {cells_file.name}: {len(missing)} cells of the matrix have no "
            f"centroid (e.g. {', '.join(missing[:3])}); are they from the same run?"
        )
    cells = cells.loc[full.obs_names]
    is_gene = (full.var["feature_types"] == "Gene Expression").to_numpy()
    genes, controls = full[:, is_gene], full[:, ~is_gene]
    xy_um = cells[["x_centroid", "y_centroid"]].to_numpy(np.float64)
    ctrl = pd.DataFrame(
        controls.X.toarray(), index=full.obs_names, columns=[str(c) for c in controls.var_names]
    )
    obs = cells.drop(columns=["cell_id"]).rename(
        columns={"x_centroid": "x_um", "y_centroid": "y_um"}
    )
    X = genes.X
    meta: dict[str, object] = {
        "format": "xenium",
        "matrix": absolute(mfile),
        "cells": absolute(cells_file),
        "image_path": None,
        "n_control_features": int((~is_gene).sum()),
    }
    if pseudo_spot_um is not None:
        assign, centres, grid = pool_pseudo_spots(xy_um, pseudo_spot_um)
        X = assign @ X
        ctrl = pd.DataFrame(assign @ ctrl.to_numpy(), columns=ctrl.columns)
        n_cells = np.asarray(assign.sum(axis=1)).ravel().astype(int)
        obs = pd.DataFrame(
            {
                "x_um": centres[:, 0],
                "y_um": centres[:, 1],
                "n_cells": n_cells,
                keys.OBS_ARRAY_COL: grid[:, 0],
                keys.OBS_ARRAY_ROW: grid[:, 1],
            },
            index=[f"{c}_{r}" for c, r in grid],
        )
        keep = n_cells >= min_cells
        X, obs, ctrl, xy_um = X[keep], obs[keep], ctrl[keep], centres[keep]
        ctrl.index = obs.index
        meta["pseudo_spot_um"] = float(pseudo_spot_um)
    obs[keys.OBS_IN_TISSUE] = True
    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = unique_gene_names(genes.var_names, str(mfile))
    adata.var[keys.VAR_GENE_IDS] = genes.var["gene_ids"].to_numpy()
    adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
    adata.obsm[keys.OBSM_CONTROLS] = ctrl
    return adata, xy_um, meta


def _cells_file(path: Path) -> Path | None:
    return next((path / n for n in CELLS_FILES if (path / n).is_file()), None)


def _gene_ids(path: Path, names: list[str]) -> list[str]:
    """Ensembl ids of ``names`` from the run's ``cell_feature_matrix.h5`` when it is there (the
    transcripts table names features by symbol only); the symbol itself otherwise."""
    h5 = path / "cell_feature_matrix.h5"
    if not h5.is_file():
        return list(names)
    import h5py

    try:
        with h5py.File(h5, "r") as f:
            sym = [s.decode() for s in f["matrix/features/name"][:]]
            ids = [s.decode() for s in f["matrix/features/id"][:]]
    except (OSError, KeyError) as exc:
        log.warning("%s: gene ids not read (%s); using the symbols", h5, exc)
        return list(names)
    lookup = dict(zip(sym, ids, strict=False))
    return [lookup.get(n, n) for n in names]


def _read_transcripts(path: Path, *, pseudo_spot_um: float, min_qv: float, batch_rows: int):
    """The transcript path of :func:`read_xenium`: ``(adata, centres_um (n, 2), metadata)``."""
    import anndata as ad
    import pandas as pd

    tfile = path / TRANSCRIPTS_FILE
    if not tfile.is_file():
        raise MissingSpatialFileError(
            f"{path}: no {TRANSCRIPTS_FILE}; source='transcripts' pools Xenium's transcript "
            f"table (Xenium Onboard Analysis writes it in the output folder; older runs have "
            f"only transcripts.csv.gz: convert it with pandas.read_csv(...).to_parquet(...))"
        )
    pool = pool_transcripts(tfile, bin_um=pseudo_spot_um, min_qv=min_qv, batch_rows=batch_rows)
    gene = pool.is_gene
    if not gene.any():
        raise SpatialFormatError(
            f"{tfile}: no gene transcript with qv >= {min_qv:g} (only controls, or every "
            f"transcript below the threshold); lower min_qv or check the file"
        )
    X = pool.counts[:, np.flatnonzero(gene)]
    ctrl_m = pool.counts[:, np.flatnonzero(~gene)]
    ctrl_names = [f for f, g in zip(pool.features, gene, strict=True) if not g]
    ctrl_cats = np.array([c for c, g in zip(pool.categories, gene, strict=True) if not g])
    genes = [f for f, g in zip(pool.features, gene, strict=True) if g]
    grid, centres = pool.grid, pool.centres_um
    index = [f"{c}_{r}" for c, r in grid]
    obs = pd.DataFrame(
        {
            "x_um": centres[:, 0],
            "y_um": centres[:, 1],
            keys.OBS_ARRAY_COL: grid[:, 0],
            keys.OBS_ARRAY_ROW: grid[:, 1],
        },
        index=index,
    )
    cells_file = _cells_file(path)
    if cells_file is not None:
        cols = ["x_centroid", "y_centroid"]
        cells = (
            pd.read_parquet(cells_file, columns=cols)
            if cells_file.suffix == ".parquet"
            else pd.read_csv(cells_file, usecols=cols)
        )
        cij = np.floor(cells.to_numpy(np.float64) / pseudo_spot_um).astype(np.int64)
        per_bin = pd.Series(1, index=pd.MultiIndex.from_arrays(cij.T)).groupby(level=[0, 1]).sum()
        obs["n_cells"] = (
            per_bin.reindex(pd.MultiIndex.from_arrays(grid.T), fill_value=0).to_numpy().astype(int)
        )
    obs["n_low_qv"] = pool.n_low_qv
    ctrl_dense = ctrl_m.toarray()
    obs["n_controls"] = ctrl_dense.sum(axis=1).astype(np.int64)
    for cat in sorted(set(ctrl_cats.tolist())):
        obs[f"n_{cat}"] = ctrl_dense[:, ctrl_cats == cat].sum(axis=1).astype(np.int64)
    obs[keys.OBS_IN_TISSUE] = True
    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = unique_gene_names(genes, str(tfile))
    adata.var[keys.VAR_GENE_IDS] = _gene_ids(path, genes)
    adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
    adata.obsm[keys.OBSM_CONTROLS] = pd.DataFrame(ctrl_dense, index=index, columns=ctrl_names)
    st = pool.stats
    meta: dict[str, object] = {
        "format": "xenium",
        "source": "transcripts",
        "transcripts": absolute(tfile),
        "file": absolute(tfile),
        "cells": absolute(cells_file) if cells_file is not None else None,
        "image_path": None,
        "pseudo_spot_um": float(pseudo_spot_um),
        "min_qv": float(min_qv),
        "n_transcripts": st["n_transcripts"],
        "n_low_qv_dropped": st["n_low_qv"],
        "n_gene_transcripts": st["n_gene"],
        "n_control_transcripts": st["n_control"],
        "control_transcripts_by_category": st["control_by_category"],
        "n_bins_low_qv_only": st["n_bins_low_qv_only"],
        "control_category_source": st["category_source"],
        "n_control_features": len(ctrl_names),
    }
    return adata, centres, meta
