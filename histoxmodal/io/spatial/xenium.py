"""10x Xenium cell-level output, optionally pooled into pseudo-spots so it trains like Visium."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from histoxmodal import keys
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

log = logging.getLogger(__name__)

#: µm per pixel of Xenium's morphology image: the pixel space of ``cells`` in pixels
XENIUM_MORPHOLOGY_MPP = 0.2125


def read_alignment(alignment: str | Path | np.ndarray) -> np.ndarray:
    """A 3 × 3 affine from a 10x ``*_imagealignment.csv`` (or an array)."""
    if isinstance(alignment, str | Path):
        p = require_file(Path(alignment), "image alignment matrix")
        a = np.loadtxt(p, delimiter=",")
    else:
        a = np.asarray(alignment, dtype=np.float64)
    if a.shape == (2, 3):
        a = np.vstack([a, [0, 0, 1]])
    if a.shape != (3, 3):
        raise SpatialFormatError(f"image alignment must be a 3 x 3 affine matrix, got {a.shape}")
    return a


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


def xenium_input_files(path: str | Path) -> list[Path] | None:
    """The files of a Xenium output folder that :func:`read_xenium` reads, or ``None``.

    The cell-feature matrix (``cell_feature_matrix.h5`` or the files of the
    ``cell_feature_matrix/`` folder) and the cell table (``cells.parquet``, ``cells.csv.gz``
    or ``cells.csv``); ``None`` when ``path`` holds no cell-feature matrix, i.e. is not a
    Xenium output folder. Transcripts, morphology images and the rest are left out.
    """
    path = Path(path)

    def present(p: Path) -> bool:
        # a FIFO or a link to a device is listed too, so that hashing refuses it by name
        return p.exists() and not p.is_dir()

    if present(path / "cell_feature_matrix.h5"):
        files = [path / "cell_feature_matrix.h5"]
    elif (path / "cell_feature_matrix").is_dir():
        files = sorted(q for q in (path / "cell_feature_matrix").rglob("*") if present(q))
    else:
        return None
    cells = ("cells.parquet", "cells.csv.gz", "cells.csv")
    return files + [path / n for n in cells if present(path / n)][:1]


def read_xenium(
    path: str | Path,
    *,
    pseudo_spot_um: float | None = None,
    min_cells: int = 1,
    image: str | Path | None = None,
    alignment: str | Path | np.ndarray | None = None,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
):
    """Read a Xenium output folder: the cell-feature matrix and the cell centroids.

    Parameters
    ----------
    path
        The Xenium output folder: ``cell_feature_matrix.h5`` (or the ``cell_feature_matrix/``
        folder: ``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``, plain or gzipped)
        and ``cells.parquet``, ``cells.csv.gz`` or ``cells.csv``.
    pseudo_spot_um
        Pool cells into square pseudo-spots of this side (µm) on a grid; ``None`` keeps cells.
    min_cells
        Pseudo-spots with fewer cells are dropped.
    image
        A registered image (for example the post-Xenium H&E). With ``alignment``, cell positions
        are mapped into it; without, it is taken to share the morphology image's pixels.
    alignment
        3 × 3 affine mapping image pixels to Xenium morphology pixels, as 10x exports it
        (``*_he_imagealignment.csv``); its inverse maps cells into the image.

    Returns
    -------
    anndata.AnnData
        Genes in ``X`` (raw counts); negative-control probes and codewords, blank and unassigned
        codewords apart in ``obsm['control_counts']`` (a DataFrame). ``obsm['spatial']`` is in the
        image's pixels (morphology pixels, 0.2125 µm, when no image is given);
        ``obs['x_um']``/``obs['y_um']`` keep the Xenium µm coordinates.
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Xenium folder not found: {path}")
    sample = sample or path.name
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
        raise MissingSpatialFileError(
            f"{path}: no Xenium cell-feature matrix; expected cell_feature_matrix.h5 or a "
            f"cell_feature_matrix/ folder (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz), "
            f"as Xenium Ranger writes them in the output folder"
        )
    # the same dtype whatever the file: int32 counts (the .h5 stores them as float32)
    full.X = to_counts_csr(full.X)
    cells_file = next(
        (path / n for n in ("cells.parquet", "cells.csv.gz", "cells.csv") if (path / n).is_file()),
        None,
    )
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
    px = xy_um / XENIUM_MORPHOLOGY_MPP
    mpp = XENIUM_MORPHOLOGY_MPP
    images: dict[str, np.ndarray] = {}
    scal: dict[str, float] = {}
    if image is not None:
        image = require_file(Path(image), "image")
        images, scal, size = images_from_full(image)
        if alignment is not None:
            a = read_alignment(alignment)
            inv = np.linalg.inv(a)
            px = (np.c_[px, np.ones(len(px))] @ inv.T)[:, :2]
            mpp = XENIUM_MORPHOLOGY_MPP * float(np.sqrt(abs(np.linalg.det(a[:2, :2]))))
        check_coords_in_image(px, size, f"{sample} ({image.name})", scal)
        meta.update({"image_path": absolute(image), "image_size": list(size)})
    adata.obsm[keys.OBSM_SPATIAL] = px
    src = "Xenium morphology pixel (0.2125 µm)" + (
        " and alignment" if alignment is not None else ""
    )
    value, source = reconcile_mpp([(mpp, src)], sample)
    meta.update({"mpp": value, "mpp_source": source})
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
