"""10x Visium in the Space Ranger layout."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.io.spatial.common import (
    SpatialFormatError,
    check_coords_in_image,
    finalize,
    is_blank,
    reconcile_mpp,
    require_file,
    unique_gene_names,
)

log = logging.getLogger(__name__)

VISIUM_SPOT_DIAMETER_UM = 55.0
#: Space Ranger's ``spot_diameter_fullres`` spans "a theoretical 65 µm spot" (10x's definition),
#: not the 55 µm capture area: using 55 would make every pixel 15 % too small.
SPACERANGER_SPOT_DIAMETER_UM = 65.0
VISIUM_SPOT_PITCH_UM = 100.0
_POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
_MATRICES = (
    "filtered_feature_bc_matrix.h5",
    "raw_feature_bc_matrix.h5",
    "filtered_feature_bc_matrix",
    "raw_feature_bc_matrix",
)


def _read_matrix(path: Path):
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        if path.is_dir():
            return sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=False, gex_only=True)
        return sc.read_10x_h5(path, gex_only=True)


def read_positions(spatial: Path):
    """Spot positions from ``tissue_positions.parquet``, ``tissue_positions.csv`` (with header)
    or ``tissue_positions_list.csv`` (Space Ranger 1.x, no header), indexed by barcode."""
    import pandas as pd

    for name in ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv"):
        p = spatial / name
        if not p.exists():
            continue
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
        elif name == "tissue_positions_list.csv":
            df = pd.read_csv(p, header=None, names=_POSITION_COLUMNS)
        else:
            df = pd.read_csv(p)
        missing = set(_POSITION_COLUMNS) - set(df.columns)
        if missing:
            raise SpatialFormatError(f"{p}: missing columns {sorted(missing)}")
        return df.set_index("barcode"), p
    raise FileNotFoundError(
        f"no spot positions in {spatial}: expected tissue_positions.parquet, "
        f"tissue_positions.csv or tissue_positions_list.csv (Space Ranger's spatial/ folder)"
    )


def _pitch_mpp(pos) -> float | None:
    """µm/px from neighbouring spots: same row, array columns 2 apart, are 100 µm apart."""
    df = pos.sort_values(["array_row", "array_col"])
    key = {
        (r, c): (x, y)
        for r, c, x, y in zip(
            df["array_row"],
            df["array_col"],
            df["pxl_col_in_fullres"],
            df["pxl_row_in_fullres"],
            strict=True,
        )
    }
    d = [
        np.hypot(x - key[(r, c + 2)][0], y - key[(r, c + 2)][1])
        for (r, c), (x, y) in key.items()
        if (r, c + 2) in key
    ]
    return VISIUM_SPOT_PITCH_UM / float(np.median(d)) if d else None


def read_visium(
    path: str | Path,
    *,
    count_file: str | None = None,
    image: str | Path | None = None,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
    mpp: float | None = None,
    in_tissue_only: bool = True,
):
    """Read a Space Ranger output folder into AnnData (contract in :mod:`histoxmodal.keys`).

    Parameters
    ----------
    path
        The folder holding the matrix (``filtered_feature_bc_matrix.h5`` or the ``.mtx``
        folder) and ``spatial/``.
    count_file
        Matrix file or folder name inside ``path``; by default the first of the filtered and raw
        ``.h5`` files and folders that exists.
    image
        The full-resolution image the positions refer to (the one given to Space Ranger).
    sample, patient, batch
        Ids; default the folder name, and the sample.
    mpp
        µm per full-resolution pixel. By default: the full-resolution image's metadata, else the
        spot diameter in ``scalefactors_json.json`` (55 µm); both are checked against the spot
        pitch (100 µm) and a disagreement over 10 % is reported. (The capture spots are 55 µm
        wide, but Space Ranger's ``spot_diameter_fullres`` measures a 65 µm disc.)
    in_tissue_only
        Keep only spots under tissue.
    """
    import anndata as ad
    from PIL import Image

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Visium folder not found: {path}")
    sample = sample or path.name
    names = [count_file] if count_file else list(_MATRICES)
    matrix = next((path / n for n in names if (path / n).exists()), None)
    if matrix is None:
        raise FileNotFoundError(f"{path}: no count matrix ({' or '.join(names)})")
    adata = _read_matrix(matrix)
    spatial = path / "spatial"
    pos, pos_file = read_positions(spatial)
    missing = adata.obs_names.difference(pos.index)
    if len(missing):
        raise SpatialFormatError(
            f"{matrix.name} and {pos_file.name}: {len(missing)} of {adata.n_obs} barcodes of the "
            f"matrix have no position (e.g. {', '.join(missing[:3])}); are they from the same "
            f"Space Ranger run? (positions e.g. {', '.join(pos.index[:3])})"
        )
    pos = pos.loc[adata.obs_names]
    if in_tissue_only:
        keep = pos["in_tissue"].to_numpy() == 1
        adata, pos = adata[keep].copy(), pos[keep]
    adata.var[keys.VAR_GENE_IDS] = adata.var.get("gene_ids", adata.var_names)
    adata.var_names = unique_gene_names(adata.var_names, str(matrix))
    adata.obs[keys.OBS_IN_TISSUE] = pos["in_tissue"].to_numpy() == 1
    adata.obs[keys.OBS_ARRAY_ROW] = pos["array_row"].to_numpy()
    adata.obs[keys.OBS_ARRAY_COL] = pos["array_col"].to_numpy()
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.obsm[keys.OBSM_SPATIAL] = xy
    sf_file = require_file(spatial / "scalefactors_json.json", "Visium scale factors")
    scal = {k: float(v) for k, v in json.loads(sf_file.read_text()).items()}
    images: dict[str, np.ndarray] = {}
    blank = []
    for key, fname in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        p = spatial / fname
        if p.exists():
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
            if is_blank(arr):
                blank.append(key)
                warnings.warn(
                    f"{p}: the image is blank (a placeholder, all one colour); it is "
                    f"left out of uns['spatial'] so plots use the other image",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                images[key] = arr
    meta: dict[str, object] = {
        "format": "visium",
        "matrix": str(matrix),
        "positions": str(pos_file),
        "image_path": None,
        "blank_images": blank,
    }
    candidates: list[tuple[float | None, str]] = [(mpp, "user")]
    if image is not None:
        from histoxmodal.io.slide import open_slide

        image = require_file(Path(image), "full-resolution image")
        with open_slide(image, allow_implausible_mpp=True) as s:
            size = s.dimensions
            candidates.append((s.mpp_info.metadata_mpp, f"image metadata ({s.mpp_info.detail})"))
        meta.update({"image_path": str(image), "image_size": list(size)})
    else:
        ref = images.get("hires"), keys.SCALEF_HIRES
        if ref[0] is None:
            ref = images.get("lowres"), keys.SCALEF_LOWRES
        size = None
        if ref[0] is not None and scal.get(ref[1]):
            h, w = ref[0].shape[:2]
            size = (round(w / scal[ref[1]]), round(h / scal[ref[1]]))
    if size is not None:
        check_coords_in_image(xy, size, f"{sample} ({pos_file.name})", scal)
    if scal.get(keys.SPOT_DIAMETER):
        candidates.append(
            (
                SPACERANGER_SPOT_DIAMETER_UM / scal[keys.SPOT_DIAMETER],
                "scalefactors spot_diameter_fullres (65 µm)",
            )
        )
    candidates.append((_pitch_mpp(pos), "spot pitch (100 µm)"))
    value, source = reconcile_mpp(candidates, sample)
    meta.update({"mpp": value, "mpp_source": source})
    adata = ad.AnnData(adata.X, obs=adata.obs, var=adata.var, obsm=dict(adata.obsm))
    return finalize(
        adata,
        sample=sample,
        patient=patient,
        batch=batch,
        images=images,
        scalefactors=scal,
        metadata=meta,
    )
