"""Legacy Spatial Transcriptomics (ST) arrays in the her2st layout.

A her2st root holds ``counts/<S>.tsv.gz`` (spots × genes, spot id ``"{x}x{y}"``),
``spots/<S>_selection.tsv`` (array and pixel coordinates), ``images/<S>.jpg`` for some sections,
and optional ``clusters/<S>-cluster-annotation.tsv.gz`` and
``pathology/<S>_labeled_coordinates.tsv``. The patient is the section id's letter (B4 -> B).

The images carry no pixel size: it is derived from the array, whose spots sit 200 µm apart, by a
least-squares fit of pixel coordinates against array coordinates.
"""

from __future__ import annotations

import gzip
import logging
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial.common import (
    SpatialFormatError,
    absolute,
    check_coords_in_image,
    finalize,
    images_from_full,
    reconcile_mpp,
    require_file,
    unique_gene_names,
)

log = logging.getLogger(__name__)

ST_SPOT_PITCH_UM = 200.0
#: the her2st sections with pathologist region labels (``pathology/<S>_labeled_coordinates.tsv``)
PATHOLOGY_SECTIONS = ("A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1")
ST_SPOT_DIAMETER_UM = 100.0
_SECTION = re.compile(r"^([A-Za-z]+)\d+$")


def st_sections(root: str | Path) -> list[str]:
    """Section ids with a counts file under ``root/counts``, sorted (A1, A2, ..., H3)."""
    root = Path(root)
    names = [p.name.split(".")[0] for p in (root / "counts").glob("*.tsv*")]
    return sorted(names, key=lambda s: (re.sub(r"\d+$", "", s), int(re.sub(r"^\D+", "", s) or 0)))


def pitch_px_per_unit(array_xy: np.ndarray, pixel_xy: np.ndarray) -> list[float]:
    """Pixels per array unit along x and y (least-squares line fits; an axis along which all
    spots share one coordinate gives no estimate)."""
    out = []
    for k in (0, 1):
        if len(np.unique(np.round(array_xy[:, k], 3))) >= 2:
            out.append(abs(float(np.polyfit(array_xy[:, k], pixel_xy[:, k], 1)[0])))
    return out


def _read_counts_table(counts: Path):
    """The ``spots × genes`` table of ``counts``, all cells numeric, or a
    :class:`SpatialFormatError` naming the file (truncated gzip, ragged rows, a word in a
    count cell) instead of an ``EOFError`` or ``TypeError`` naming nothing."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            # a word in a count column gives mixed types: reported below, naming the cell
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            df = pd.read_csv(counts, sep="\t", index_col=0)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SpatialFormatError(
            f"{counts}: unreadable counts table ({type(exc).__name__}: {exc}); the file is "
            f"truncated or corrupt, download or copy it again"
        ) from exc
    df.index = df.index.astype(str)
    # from the dtypes, not column by column: df[c] over ~15k genes took ~1.7 s a section
    bad = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        col = bad[0]
        num = pd.to_numeric(df[col], errors="coerce")
        row = df.index[num.isna() & df[col].notna()]
        where = f"spot {row[0]!r}, value {df.at[row[0], col]!r}" if len(row) else "a cell"
        raise SpatialFormatError(
            f"{counts}: non-numeric count in gene column {col!r} ({where}; {len(bad)} column(s) "
            f"affected); counts must be numbers"
        )
    if df.isna().to_numpy().any():
        n_rows = int(df.isna().any(axis=1).sum())
        first = df.index[df.isna().any(axis=1)][0]
        raise SpatialFormatError(
            f"{counts}: {n_rows} row(s) with missing counts (first: spot {first!r}); the table "
            f"is truncated or ragged, copy it again"
        )
    return df


def read_st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path | None = None,
    *,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
    mpp: float | None = None,
    spot_pitch_um: float = ST_SPOT_PITCH_UM,
    spot_diameter_um: float = ST_SPOT_DIAMETER_UM,
):
    """Read one legacy ST section into AnnData (contract in :mod:`histoxmodal.keys`).

    Parameters
    ----------
    counts
        ``spots × genes`` TSV (optionally gzipped); first column the spot id ``"{x}x{y}"``.
    spots
        Spot selection table with columns ``x y new_x new_y pixel_x pixel_y`` (and ``selected``).
    image
        The full-resolution H&E image the pixel coordinates refer to, if any.
    sample, patient, batch
        Ids; default: the file stem, its letter prefix, and the sample.
    mpp
        µm per image pixel; by default derived from the spot pitch.

    Returns
    -------
    anndata.AnnData
        Spots under tissue (``selected == 1``) present in both tables, raw counts in ``X``.
    """
    import anndata as ad
    import pandas as pd

    counts = require_file(Path(counts), "ST counts table")
    spots = require_file(Path(spots), "ST spot selection table")
    sample = sample or counts.name.split(".")[0]
    m = _SECTION.match(sample)
    patient = patient or (m.group(1) if m else sample)
    df = _read_counts_table(counts)
    # pandas renames repeated headers (GAPDH.1); keep the file's own names to report them
    with gzip.open(counts, "rt") if counts.suffix == ".gz" else open(counts) as fh:
        header = fh.readline().rstrip("\n").split("\t")[1:]
    if len(header) == df.shape[1]:
        df.columns = header
    try:
        sel = pd.read_csv(spots, sep="\t")
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SpatialFormatError(
            f"{spots}: unreadable spot table ({type(exc).__name__}: {exc}); copy it again"
        ) from exc
    missing = {"x", "y", "pixel_x", "pixel_y"} - set(sel.columns)
    if missing:
        raise SpatialFormatError(
            f"{spots}: missing columns {sorted(missing)}; expected x y new_x new_y pixel_x "
            f"pixel_y selected"
        )
    if "selected" in sel.columns:
        sel = sel[sel["selected"] == 1]
    sel.index = [f"{int(x)}x{int(y)}" for x, y in zip(sel["x"], sel["y"], strict=True)]
    common = df.index.intersection(sel.index)
    if len(common) == 0:
        raise SpatialFormatError(
            f"{counts} and {spots}: no spot ids in common (counts e.g. {list(df.index[:3])}, "
            f"selection e.g. {list(sel.index[:3])}); are they the same section?"
        )
    dropped = len(df) - len(common)
    if dropped:
        log.info("%s: %d spots of the counts table are not selected under tissue", sample, dropped)
    df, sel = df.loc[common], sel.loc[common]
    genes = unique_gene_names(df.columns, str(counts))
    adata = ad.AnnData(X=df.to_numpy(), obs=pd.DataFrame(index=list(common)))
    adata.var_names = genes
    adata.var[keys.VAR_GENE_IDS] = [str(c) for c in df.columns]
    adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
    ax = sel["new_x"] if "new_x" in sel.columns else sel["x"]
    ay = sel["new_y"] if "new_y" in sel.columns else sel["y"]
    adata.obs[keys.OBS_ARRAY_COL] = sel["x"].to_numpy()
    adata.obs[keys.OBS_ARRAY_ROW] = sel["y"].to_numpy()
    adata.obs[keys.OBS_IN_TISSUE] = True
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.obsm[keys.OBSM_SPATIAL] = xy
    pitch = pitch_px_per_unit(np.c_[ax, ay], xy)
    pitch_mpp = spot_pitch_um / float(np.mean(pitch)) if pitch else None
    if len(pitch) == 2 and abs(pitch[0] - pitch[1]) / max(pitch) > 0.1:
        log.warning("%s: spot pitch differs between x (%.1f px) and y (%.1f px)", sample, *pitch)
    candidates = [(mpp, "user"), (pitch_mpp, f"spot pitch fit ({spot_pitch_um:g} µm)")]
    images: dict[str, np.ndarray] = {}
    scal: dict[str, float] = {}
    meta: dict[str, object] = {
        "format": "st",
        "counts": absolute(counts),
        "spots": absolute(spots),
        "image_path": None,
    }
    if image is not None:
        image = require_file(Path(image), "H&E image")
        images, scal, size = images_from_full(image)
        check_coords_in_image(xy, size, f"{sample} ({image.name})")
        meta["image_path"] = absolute(image)
        meta["image_size"] = list(size)
    value, source = reconcile_mpp(candidates, sample)
    meta.update({"mpp": value, "mpp_source": source, "pitch_px": pitch})
    scal[keys.SPOT_DIAMETER] = spot_diameter_um / value
    finalize(
        adata,
        sample=sample,
        patient=patient,
        batch=batch,
        images=images,
        scalefactors=scal,
        metadata=meta,
    )
    return adata


def _annotations(root: Path, section: str, adata) -> None:
    """Add her2st's expression clusters and pathologist labels where they exist."""
    import pandas as pd

    ids = [n.split(":", 1)[1] for n in adata.obs_names]
    cl = root / "clusters" / f"{section}-cluster-annotation.tsv.gz"
    if cl.exists():
        t = pd.read_csv(cl, sep="\t")
        if {"x", "y", "label"} <= set(t.columns):
            lab = dict(
                zip(
                    (f"{int(x)}x{int(y)}" for x, y in zip(t["x"], t["y"], strict=True)),
                    t["label"].astype(str),
                    strict=True,
                )
            )
            adata.obs["cluster"] = pd.Categorical([lab.get(i) for i in ids])
    pa = root / "pathology" / f"{section}_labeled_coordinates.tsv"
    if pa.exists():
        t = pd.read_csv(pa, sep="\t").dropna(subset=["x", "y"])
        lab = dict(
            zip(
                (f"{round(x)}x{round(y)}" for x, y in zip(t["x"], t["y"], strict=True)),
                t["label"].astype(str),
                strict=True,
            )
        )
        adata.obs["pathology"] = pd.Categorical([lab.get(i) for i in ids])


def read_her2st(
    root: str | Path,
    section: str | None = None,
    *,
    mpp: float | None = None,
    join: str = "inner",
):
    """Read a section of a her2st-layout folder (image attached when ``images/<S>.jpg`` exists).

    Adds ``obs['cluster']`` (expression clusters) and ``obs['pathology']`` (pathologist regions)
    where the folder has them. With ``section=None`` every section is read and concatenated
    (``join="inner"``: genes measured in all sections; ``"outer"``: all genes, zeros elsewhere),
    with ``obs['sample']``/``obs['patient']`` telling them apart: the gene side of all 35 sections
    and 8 patients, for pretraining and batch correction of gene encoders.
    """
    root = Path(root)
    if not (root / "counts").is_dir():
        raise FileNotFoundError(f"{root}: not a her2st-layout folder (no counts/ inside)")
    if section is None:
        import warnings

        import anndata as ad

        parts = [read_her2st(root, s, mpp=mpp) for s in st_sections(root)]
        spatial = {}
        for a in parts:
            spatial.update(a.uns.pop(keys.UNS_SPATIAL))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            out = ad.concat(parts, join=join, merge="first")
        # concat keeps only the obs columns every section has; the annotations exist for some
        import pandas as pd

        for col in ("cluster", "pathology"):
            if any(col in a.obs for a in parts):
                values = [
                    a.obs[col].astype(object)
                    if col in a.obs
                    else pd.Series(None, index=a.obs_names)
                    for a in parts
                ]
                out.obs[col] = pd.Categorical(pd.concat(values).loc[out.obs_names])
        for col in (keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH):
            out.obs[col] = out.obs[col].astype(str).astype("category")
        out.uns[keys.UNS_SPATIAL] = spatial
        return out
    counts = next(iter(sorted((root / "counts").glob(f"{section}.tsv*"))), None)
    if counts is None:
        raise FileNotFoundError(
            f"{root}: no counts for section {section!r}; sections: {', '.join(st_sections(root))}"
        )
    image = root / "images" / f"{section}.jpg"
    adata = read_st(
        counts,
        root / "spots" / f"{section}_selection.tsv",
        image if image.exists() else None,
        sample=section,
        mpp=mpp,
    )
    _annotations(root, section, adata)
    return adata


def read_her2st_pathology(root: str | Path, sections: Sequence[str] = PATHOLOGY_SECTIONS):
    """The her2st sections with pathologist labels, concatenated (genes in all of them).

    ``read_her2st(root, None)`` reads every section, most of them unlabelled; this reads only
    the labelled ``sections`` and fails on one without labels.

    Returns
    -------
    anndata.AnnData
        ``(n_spots, n_genes)`` raw counts with ``obs['pathology']``, ``obs['sample']``,
        ``obs['patient']``, ``obs['batch']`` (categorical) and no ``uns['spatial']``.
    """
    import warnings

    import anndata as ad

    parts = []
    for s in sections:
        a = read_her2st(root, s)
        if "pathology" not in a.obs:
            raise ConfigError(
                f"sections: {s} has no pathology/{s}_labeled_coordinates.tsv under {root}; "
                f"labelled sections are {', '.join(PATHOLOGY_SECTIONS)}"
            )
        a.obs["pathology"] = a.obs["pathology"].astype(object)
        a.uns.pop(keys.UNS_SPATIAL, None)
        parts.append(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        out = ad.concat(parts, join="inner", merge="first")
    for col in ("pathology", keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH):
        out.obs[col] = out.obs[col].astype(str).astype("category")
    return out
