"""Spatial-omics readers into AnnData, the scanpy/squidpy way (contract in :mod:`histoxmodal.keys`).

``read_spatial(path)`` detects the format from the folder's contents; each format also has its
own reader: :func:`read_visium`, :func:`read_her2st` / :func:`read_st` (legacy ST; the her2st
sections with pathologist labels: :func:`read_her2st_pathology`), :func:`read_xenium`,
:func:`read_h5ad`, :func:`read_spatialdata` (a SpatialData zarr store; needs the ``spatialdata``
extra), :func:`read_visium_hd` (Visium HD bins, or 2 µm bins pooled into squares or discs by
:func:`pool_bins`). Xenium transcripts are pooled by :func:`pool_transcripts` (``read_xenium(...,
source="transcripts")``); H&E alignments (10x's matrix or Xenium Explorer's keypoints) are read by
:func:`read_he_alignment`.
"""

from __future__ import annotations

from pathlib import Path

from histoxmodal.io.spatial.alignment import HEAlignment, fit_affine, read_he_alignment
from histoxmodal.io.spatial.common import MissingSpatialFileError, SpatialFormatError, library_id
from histoxmodal.io.spatial.h5ad import read_h5ad
from histoxmodal.io.spatial.spatialdata_zarr import is_spatialdata_store, read_spatialdata
from histoxmodal.io.spatial.st import (
    PATHOLOGY_SECTIONS,
    read_her2st,
    read_her2st_pathology,
    read_st,
    st_sections,
)
from histoxmodal.io.spatial.visium import (
    find_visium_outs,
    read_mtx_folder,
    read_visium,
    visium_input_files,
)
from histoxmodal.io.spatial.visium_hd import (
    BinPool,
    find_visium_hd_outs,
    pool_bins,
    read_visium_hd,
    resolve_bin_um,
    visium_hd_bins,
    visium_hd_image,
    visium_hd_input_files,
)
from histoxmodal.io.spatial.xenium import read_xenium, xenium_he_files, xenium_input_files
from histoxmodal.io.spatial.xenium_transcripts import TranscriptPool, pool_transcripts

FORMATS = ("visium", "visium_hd", "her2st", "xenium", "h5ad", "spatialdata")

__all__ = [
    "FORMATS",
    "PATHOLOGY_SECTIONS",
    "BinPool",
    "HEAlignment",
    "MissingSpatialFileError",
    "SpatialFormatError",
    "TranscriptPool",
    "detect_format",
    "find_visium_hd_outs",
    "find_visium_outs",
    "fit_affine",
    "is_spatialdata_store",
    "library_id",
    "pool_bins",
    "pool_transcripts",
    "read_h5ad",
    "read_he_alignment",
    "read_her2st",
    "read_her2st_pathology",
    "read_mtx_folder",
    "read_spatial",
    "read_spatialdata",
    "read_st",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "resolve_bin_um",
    "st_sections",
    "visium_hd_bins",
    "visium_hd_image",
    "visium_hd_input_files",
    "visium_input_files",
    "xenium_he_files",
    "xenium_input_files",
]


def detect_format(path: str | Path) -> str:
    """The spatial format of a file or folder, from its contents.

    ``.h5ad`` file -> ``h5ad``; ``cell_feature_matrix.h5`` (or ``transcripts.parquet``) ->
    ``xenium``; ``binned_outputs/`` (or ``outs/binned_outputs/``) -> ``visium_hd``;
    ``spatial/`` (or
    ``outs/spatial/``, a Space Ranger run folder) -> ``visium``; ``counts/`` with ``spots/`` ->
    ``her2st``; a zarr folder (``zarr.json`` or ``.zattrs``) with ``images/``, ``shapes/`` or
    ``tables/`` -> ``spatialdata``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"spatial data not found: {p}")
    if p.is_file():
        if p.suffix == ".h5ad":
            return "h5ad"
        raise SpatialFormatError(
            f"{p}: a single file must be an .h5ad; give the output folder "
            f"of Space Ranger / Xenium or a her2st-layout folder"
        )
    if is_spatialdata_store(p):
        return "spatialdata"
    names = {q.name for q in p.iterdir()}
    if names & {"cell_feature_matrix.h5", "cell_feature_matrix", "transcripts.parquet"}:
        return "xenium"
    if (p / "binned_outputs").is_dir() or (p / "outs" / "binned_outputs").is_dir():
        return "visium_hd"
    if (p / "spatial").is_dir() or (p / "outs" / "spatial").is_dir():
        return "visium"
    if "counts" in names and "spots" in names:
        return "her2st"
    raise SpatialFormatError(
        f"{p}: cannot tell the format (expected a Space Ranger folder with spatial/ or "
        f"outs/spatial/, a Visium HD folder with binned_outputs/, a Xenium folder with "
        f"cell_feature_matrix.h5 or transcripts.parquet, "
        f"a her2st folder with counts/ and spots/, a "
        f"SpatialData .zarr, or an .h5ad); pass format= one of {', '.join(FORMATS)}"
    )


def read_spatial(path: str | Path, format: str | None = None, **kwargs):
    """Read one spatial sample into AnnData; the format is detected when not given.

    Parameters
    ----------
    path
        Space Ranger output folder (``outs/`` or the run folder above it), Xenium output
        folder, ``.h5ad`` file, SpatialData ``.zarr`` store (``sample=`` when it holds
        several), or a her2st-layout folder (then pass ``section=``, e.g. ``"B4"``).
    format
        One of :data:`FORMATS`.
    **kwargs
        Passed to the format's reader (``image=``, ``mpp=``, ``pseudo_spot_um=``, ...); for
        Xenium ``source="transcripts"`` pools ``transcripts.parquet`` (``min_qv=``,
        ``alignment=`` a matrix or keypoints CSV; see :func:`read_xenium`).
    """
    fmt = format or detect_format(path)
    if fmt == "visium":
        return read_visium(path, **kwargs)
    if fmt == "visium_hd":
        return read_visium_hd(path, **kwargs)
    if fmt == "xenium":
        return read_xenium(path, **kwargs)
    if fmt == "h5ad":
        return read_h5ad(path, **kwargs)
    if fmt == "spatialdata":
        return read_spatialdata(path, **kwargs)
    if fmt == "her2st":
        section = kwargs.pop("section", None)
        if section is None:
            raise SpatialFormatError(
                f"{path} holds several ST sections; pass section= one of "
                f"{', '.join(st_sections(path))}"
            )
        return read_her2st(path, section, **kwargs)
    raise SpatialFormatError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
