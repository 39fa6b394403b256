"""10x Visium in the Space Ranger layout.

Accepted layouts (any Space Ranger version), in the folder given or in its ``outs/``:

- the count matrix: ``filtered_feature_bc_matrix.h5`` / ``raw_feature_bc_matrix.h5``, or a
  ``filtered_feature_bc_matrix/`` / ``raw_feature_bc_matrix/`` folder holding ``matrix.mtx``,
  ``features.tsv`` (or the legacy ``genes.tsv``, 2 or 3 columns) and ``barcodes.tsv``, each plain
  or gzipped, or the legacy ``filtered_gene_bc_matrices/<genome>/`` (Cell Ranger 2). Filtered is
  preferred; a raw matrix is filtered to the spots under tissue.
- ``spatial/``: ``tissue_positions.csv`` or ``tissue_positions_list.csv`` (a header is detected
  from the first line, not the name) or ``tissue_positions.parquet``; ``scalefactors_json.json``;
  the hires and/or lowres image (either may be missing; a blank one is left out).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.io.spatial.common import (
    TISSUE_POSITION_COLUMNS,
    MissingSpatialFileError,
    SpatialFormatError,
    absolute,
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
#: the count matrices Space Ranger writes, in order of preference (filtered before raw)
_MATRICES = (
    "filtered_feature_bc_matrix.h5",
    "filtered_feature_bc_matrix",
    "raw_feature_bc_matrix.h5",
    "raw_feature_bc_matrix",
    # Cell Ranger 2's layout, one subfolder per genome holding genes.tsv
    "filtered_gene_bc_matrices",
    "raw_gene_bc_matrices",
)
_POSITION_FILES = (
    "tissue_positions.parquet",
    "tissue_positions.csv",
    "tissue_positions_list.csv",
)
#: the files of a matrix folder, each accepted plain or gzipped, in order of preference
_MTX_PARTS = {
    "matrix": ("matrix.mtx.gz", "matrix.mtx"),
    "features": ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"),
    "barcodes": ("barcodes.tsv.gz", "barcodes.tsv"),
}
_ACCEPTED_MATRICES = (
    "filtered_feature_bc_matrix.h5, raw_feature_bc_matrix.h5, or a filtered_feature_bc_matrix/ "
    "or raw_feature_bc_matrix/ folder with matrix.mtx[.gz], features.tsv[.gz] (or genes.tsv[.gz]) "
    "and barcodes.tsv[.gz], or a legacy filtered_gene_bc_matrices/<genome>/ folder"
)
_ACCEPTED_SPATIAL = (
    "spatial/ with tissue_positions.csv, tissue_positions_list.csv or tissue_positions.parquet, "
    "and scalefactors_json.json"
)


def visium_input_files(outs: str | Path) -> list[Path]:
    """The files of a Space Ranger ``outs/`` folder that :func:`read_visium` may read.

    The count matrices (``.h5`` files and matrix folders, every layout in
    :data:`_MATRICES`) and everything under ``spatial/``, sorted. The rest of ``outs/`` (BAM
    files, ``molecule_info.h5``, ``analysis/``, the Loupe file) is left out, so a dataset's
    fingerprint neither reads gigabytes of alignments nor changes when they are deleted.
    """
    outs = Path(outs)
    files: list[Path] = []
    # anything that is not a folder is listed, a FIFO or a link to a device too, so that
    # hashing refuses it by name instead of the reader blocking on it
    for name in _MATRICES:
        p = outs / name
        if p.is_dir():
            files.extend(q for q in p.rglob("*") if q.exists() and not q.is_dir())
        elif p.exists():
            files.append(p)
    if (outs / "spatial").is_dir():
        files.extend(q for q in (outs / "spatial").rglob("*") if q.exists() and not q.is_dir())
    return sorted(files)


def find_visium_outs(path: str | Path) -> tuple[Path, str]:
    """The Space Ranger output folder to read for ``path``, and why it was chosen.

    ``path`` itself when it holds ``spatial/`` (Space Ranger's ``outs/``), else ``path/outs``
    when that holds ``spatial/`` (the run folder was given), else whichever of the two holds a
    count matrix (the reader then says what else is missing).

    Raises
    ------
    MissingSpatialFileError
        Neither ``path`` nor ``path/outs`` holds ``spatial/`` or a count matrix.
    """
    path = Path(path)
    outs = path / "outs"
    if (path / "spatial").is_dir():
        extra = "; its outs/ is ignored" if (outs / "spatial").is_dir() else ""
        return path, f"it holds spatial/{extra}"
    if (outs / "spatial").is_dir():
        return outs, "the given folder has no spatial/, its outs/ does (a Space Ranger run folder)"
    for folder in (path, outs):
        if any((folder / n).exists() for n in _MATRICES):
            return folder, "it holds a count matrix (but no spatial/)"
    hint = (
        "; this looks like the spatial/ folder itself: give the folder above it"
        if any((path / n).is_file() for n in _POSITION_FILES)
        else ""
    )
    raise MissingSpatialFileError(
        f"{path}: not a Space Ranger output folder: no count matrix and no spatial/ here or in "
        f"outs/; expected {_ACCEPTED_MATRICES}, and {_ACCEPTED_SPATIAL}{hint}"
    )


def _sample_name(folder: Path) -> str:
    """The folder's name; for Space Ranger's ``outs/``, the run folder's name above it."""
    return folder.resolve().parent.name if folder.name == "outs" else folder.name


def _find_matrix(folder: Path, count_file: str | None) -> Path:
    if count_file:
        p = folder / count_file
        if not p.exists():
            raise MissingSpatialFileError(
                f"{folder}: count_file={count_file!r} not found; accepted: {_ACCEPTED_MATRICES}"
            )
        return p
    p = next((folder / n for n in _MATRICES if (folder / n).exists()), None)
    if p is None:
        raise MissingSpatialFileError(
            f"{folder}: no count matrix; expected {_ACCEPTED_MATRICES} (or pass count_file=)"
        )
    return p


def _mtx_folder(folder: Path) -> Path:
    """``folder``, or its one genome subfolder in Cell Ranger 2's layout
    (``filtered_gene_bc_matrices/GRCh38/``)."""
    if not folder.is_dir():
        raise MissingSpatialFileError(
            f"{folder}: matrix folder not found; expected a folder with matrix.mtx[.gz], "
            f"features.tsv[.gz] (or genes.tsv[.gz]) and barcodes.tsv[.gz]"
        )
    if any((folder / n).is_file() for n in _MTX_PARTS["matrix"]):
        return folder
    subs = sorted(
        d
        for d in folder.iterdir()
        if d.is_dir() and any((d / n).is_file() for n in _MTX_PARTS["matrix"])
    )
    if len(subs) == 1:
        log.info("%s: reading the matrix of genome %s", folder, subs[0].name)
        return subs[0]
    if len(subs) > 1:
        raise SpatialFormatError(
            f"{folder}: one matrix per genome ({', '.join(d.name for d in subs)}); pass "
            f"count_file='{folder.name}/<genome>' to choose one"
        )
    return folder


def _mtx_part(folder: Path, part: str) -> Path:
    names = _MTX_PARTS[part]
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        raise MissingSpatialFileError(
            f"{folder}: matrix folder without its {part} file; expected {' or '.join(names)}"
        )
    if len(found) > 1:
        log.info("%s: several %s files; reading %s", folder, part, found[0].name)
    return found[0]


def read_mtx_folder(folder: str | Path, *, gex_only: bool = True):
    """A 10x matrix folder (Matrix Market) as AnnData, spots x features.

    Reads every layout 10x has written: ``matrix.mtx`` with ``features.tsv`` (v3: id, symbol,
    type) or legacy ``genes.tsv`` (id, symbol), each file plain or gzipped, with
    ``barcodes.tsv``; in ``folder`` or, Cell Ranger 2's layout, in its one genome subfolder.
    (scanpy's ``read_10x_mtx`` ties the compression to the gene file's name: gzipped
    ``features.tsv.gz`` or plain ``genes.tsv`` only.)

    Parameters
    ----------
    folder
        The matrix folder, e.g. ``outs/raw_feature_bc_matrix``.
    gex_only
        Keep only the ``Gene Expression`` features when the file lists feature types.

    Returns
    -------
    AnnData
        ``X`` (n_barcodes, n_features) sparse CSR; ``var_names`` the gene symbols (not made
        unique), ``var['gene_ids']``, ``var['feature_types']`` when listed.
    """
    import anndata as ad
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    folder = _mtx_folder(Path(folder))
    mtx, feat_file, bc_file = (_mtx_part(folder, k) for k in ("matrix", "features", "barcodes"))

    def table(p: Path):
        # keep_default_na: a gene called "NA" stays "NA"
        return pd.read_csv(p, sep="\t", header=None, dtype=str, keep_default_na=False)

    feats, barcodes = table(feat_file), table(bc_file)[0]
    m = scipy.io.mmread(mtx)
    if m.shape != (len(feats), len(barcodes)):
        raise SpatialFormatError(
            f"{mtx}: the matrix is {m.shape[0]} features x {m.shape[1]} barcodes, but "
            f"{feat_file.name} lists {len(feats)} and {bc_file.name} {len(barcodes)}; are the "
            f"three files from the same matrix folder?"
        )
    symbols = feats[1] if feats.shape[1] > 1 else feats[0]
    var = pd.DataFrame({"gene_ids": feats[0].to_numpy()}, index=pd.Index(symbols.to_numpy()))
    if feats.shape[1] > 2:
        var["feature_types"] = feats[2].to_numpy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        adata = ad.AnnData(
            sp.csr_matrix(m.T), obs=pd.DataFrame(index=pd.Index(barcodes.to_numpy())), var=var
        )
        if gex_only and "feature_types" in var:
            adata = adata[:, var["feature_types"].to_numpy() == "Gene Expression"].copy()
    return adata


def _read_matrix(path: Path):
    import scanpy as sc

    if path.is_dir():
        return read_mtx_folder(path, gex_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        return sc.read_10x_h5(path, gex_only=True)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_has_header(p: Path) -> bool:
    """True when the first line of a positions CSV is a header (any non-numeric field after the
    barcode), whatever the file is called."""
    with open(p, encoding="utf-8-sig", newline="") as fh:
        first = fh.readline().strip()
    if not first:
        raise SpatialFormatError(f"{p}: empty positions file; expected one line per spot")
    fields = [f.strip().strip('"') for f in first.split(",")]
    return not all(_is_number(f) for f in fields[1:])


def read_positions(spatial: Path):
    """Spot positions from ``tissue_positions.parquet``, ``tissue_positions.csv`` or
    ``tissue_positions_list.csv``, indexed by barcode.

    Whether a CSV has a header is read from its first line, not its name (Space Ranger 1.x
    writes ``tissue_positions_list.csv`` without one, 2.0+ ``tissue_positions.csv`` with one).

    Returns
    -------
    (DataFrame, Path)
        Columns ``in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres``
        (n_positions rows), and the file read.
    """
    import pandas as pd

    p = next((spatial / n for n in _POSITION_FILES if (spatial / n).is_file()), None)
    if p is None:
        raise MissingSpatialFileError(
            f"{spatial}: no spot positions; expected {', '.join(_POSITION_FILES)} "
            f"(Space Ranger's spatial/ folder)"
        )
    if p.suffix == ".parquet":
        try:
            df = pd.read_parquet(p)
        except ImportError as exc:
            raise SpatialFormatError(
                f"{p}: reading parquet needs pyarrow ({exc}); pip install pyarrow, or convert "
                f"it to tissue_positions.csv"
            ) from exc
        if "barcode" not in df.columns and df.index.name == "barcode":
            df = df.reset_index()
    elif _csv_has_header(p):
        df = pd.read_csv(p)
    else:
        df = pd.read_csv(p, header=None)
        if df.shape[1] != len(TISSUE_POSITION_COLUMNS):
            raise SpatialFormatError(
                f"{p}: {df.shape[1]} columns without a header; expected "
                f"{len(TISSUE_POSITION_COLUMNS)} ({', '.join(TISSUE_POSITION_COLUMNS)}) or a "
                "header naming them"
            )
        df.columns = list(TISSUE_POSITION_COLUMNS)
    missing = set(TISSUE_POSITION_COLUMNS) - set(df.columns)
    if missing:
        raise SpatialFormatError(
            f"{p}: missing columns {sorted(missing)}; expected {', '.join(TISSUE_POSITION_COLUMNS)}"
        )
    df["barcode"] = df["barcode"].astype(str)
    return df.set_index("barcode"), p


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
        Space Ranger's ``outs/`` folder (holding the count matrix and ``spatial/``), or the run
        folder above it; the layouts accepted are listed in :mod:`histoxmodal.io.spatial.visium`.
    count_file
        Matrix file or folder name inside that folder; by default the first that exists of
        ``filtered_feature_bc_matrix(.h5)``, ``raw_feature_bc_matrix(.h5)``. A raw matrix
        holds every barcode of the slide: with ``in_tissue_only`` it is cut to the spots with
        ``in_tissue == 1`` in the positions.
    image
        The full-resolution image the positions refer to (the one given to Space Ranger).
    sample, patient, batch
        Ids; default the folder name (for ``outs/``, the run folder's), and the sample.
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
    folder, why = find_visium_outs(path)
    log.info("%s: reading Space Ranger output %s: %s", path, folder, why)
    sample = sample or _sample_name(folder)
    matrix = _find_matrix(folder, count_file)
    spatial = folder / "spatial"
    if not spatial.is_dir():
        raise MissingSpatialFileError(f"{folder}: no spatial/ folder; expected {_ACCEPTED_SPATIAL}")
    adata = _read_matrix(matrix)
    raw_matrix = matrix.name.startswith("raw")
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
        if raw_matrix:
            log.info(
                "%s: %s is a raw matrix (all %d barcodes); keeping the %d spots with "
                "in_tissue == 1 in %s",
                sample,
                matrix.name,
                adata.n_obs,
                int(keep.sum()),
                pos_file.name,
            )
        adata, pos = adata[keep].copy(), pos[keep]
    elif raw_matrix:
        log.info(
            "%s: %s is a raw matrix; keeping all %d barcodes (in_tissue_only=False)",
            sample,
            matrix.name,
            adata.n_obs,
        )
    adata.var[keys.VAR_GENE_IDS] = adata.var.get("gene_ids", adata.var_names)
    adata.var_names = unique_gene_names(adata.var_names, str(matrix))
    adata.obs[keys.OBS_IN_TISSUE] = pos["in_tissue"].to_numpy() == 1
    adata.obs[keys.OBS_ARRAY_ROW] = pos["array_row"].to_numpy()
    adata.obs[keys.OBS_ARRAY_COL] = pos["array_col"].to_numpy()
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.obsm[keys.OBSM_SPATIAL] = xy
    sf_file = spatial / "scalefactors_json.json"
    if not sf_file.is_file():
        raise MissingSpatialFileError(
            f"{spatial}: Visium scale factors not found (scalefactors_json.json); expected "
            f"{_ACCEPTED_SPATIAL}"
        )
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
        "matrix": absolute(matrix),
        "matrix_kind": "raw" if raw_matrix else "filtered",
        "positions": absolute(pos_file),
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
        meta.update({"image_path": absolute(image), "image_size": list(size)})
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
