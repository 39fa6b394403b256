"""Canonical names, defined once: the AnnData contract, batch keys and output file names.

The AnnData contract (what every spatial reader returns, validated by
:func:`histoxmodal.io.spatial.validate_spatial`), the scanpy/squidpy layout:

- ``X``: raw integer counts, spots (or cells / pseudo-spots) × genes, sparse CSR. Readers never
  normalise; a source that only holds normalised values is kept and flagged in
  ``uns['spatial'][library_id]['metadata']['counts_are_raw'] = False``.
- ``var_names``: unique gene symbols (duplicates made unique with ``-1``, ``-2`` and a warning);
  ``var['gene_ids']``: stable ids (Ensembl) when the source has them; ``var['feature_types']``.
- ``obs['sample']``: the section / library id; ``obs['patient']``: the donor;
  ``obs['batch']``: the technical batch used by batch correction (the sample unless told
  otherwise); ``obs['in_tissue']`` (bool) where the source says.
- ``obsm['spatial']``: ``(n, 2)`` float ``(x, y)`` in pixels of the full-resolution image.
- ``uns['spatial'][library_id]``: ``images`` (``hires``/``lowres`` RGB uint8), ``scalefactors``
  (``tissue_hires_scalef``, ``tissue_lowres_scalef``, ``spot_diameter_fullres``), and
  ``metadata`` with histoxmodal's provenance: source files, ``mpp`` (µm per full-resolution
  pixel), ``mpp_source`` and, where it exists, the full-resolution image path.
"""

from __future__ import annotations

# AnnData contract
OBS_SAMPLE = "sample"
OBS_PATIENT = "patient"
OBS_BATCH = "batch"
OBS_IN_TISSUE = "in_tissue"
OBS_ARRAY_ROW = "array_row"
OBS_ARRAY_COL = "array_col"
VAR_GENE_IDS = "gene_ids"
VAR_FEATURE_TYPES = "feature_types"
OBSM_SPATIAL = "spatial"
OBSM_CONTROLS = "control_counts"
UNS_SPATIAL = "spatial"
SCALEF_HIRES = "tissue_hires_scalef"
SCALEF_LOWRES = "tissue_lowres_scalef"
SPOT_DIAMETER = "spot_diameter_fullres"

# Paired dataset (``histoxmodal build``): row i of every file is spot i.
PAIRED_ADATA_FILE = "adata.h5ad"
PAIRED_PATCHES_FILE = "patches.h5"
PAIRED_MANIFEST_FILE = "manifest.json"
PAIRED_SPLITS_DIR = "splits"
OBS_PATCH_BORDER = "patch_at_border"

# Per-slide tiling output (``histoxmodal tile``), one folder per slide.
TILE_COORDS_FILE = "coords.h5"
TILE_STORE_FILE = "tiles.h5"
TILE_MANIFEST_FILE = "manifest.json"
TILE_OVERLAY_FILE = "overlay.png"
TILE_GEOJSON_FILE = "tissue.geojson"
TILE_ERROR_LOG = "error.log"
