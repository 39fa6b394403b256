"""Canonical names, defined once: the AnnData contract, the keys of a training batch, and the
files of tile, dataset and run folders. No other module spells these strings.

The AnnData contract (what every spatial reader returns, validated by
:func:`histoxmodal.io.spatial.validate_spatial`), the scanpy/squidpy layout:

- ``X``: raw integer counts, spots (or cells / pseudo-spots) × genes, sparse CSR. Readers never
  normalize; a source that only holds normalized values is kept and flagged in
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
COHORT_STORE_FILE = "cohort.h5"
COHORT_FAILURES_FILE = "failures.json"


def split_path(kind: str) -> str:
    """Path of a dataset's split file of ``kind``, relative to the dataset folder."""
    return f"{PAIRED_SPLITS_DIR}/{kind}.json"


OBS_PATCH_BORDER = "patch_at_border"
#: µm per unit of ``obsm['spatial']`` (the spots' coordinates), written by ``histoxmodal build``
OBS_SPATIAL_MPP = "spatial_mpp"

# Per-slide tiling output (``histoxmodal tile``), one folder per slide.
TILE_COORDS_FILE = "coords.h5"
TILE_STORE_FILE = "tiles.h5"
TILE_MANIFEST_FILE = "manifest.json"
TILE_OVERLAY_FILE = "overlay.png"
TILE_GEOJSON_FILE = "tissue.geojson"
TILE_ERROR_LOG = "error.log"

# ``status`` of a per-slide record (tile, features and predict manifests). ``empty``: read fine
# but nothing to keep (no tissue); ``busy``: another process holds the slide's lock.
STATUS_OK, STATUS_EMPTY, STATUS_FAILED, STATUS_SKIPPED = "ok", "empty", "failed", "skipped"
STATUS_BUSY = "busy"

# Run folder (``histoxmodal train``): identity, weights, fitted heads, logs.
RUN_FILE = "run.json"  # kind, dataset, split, fold, gene panel, normalization, n_batches
RUN_CONFIG_FILE = "config.json"  # the resolved training config
RUN_WEIGHTS_FILE = "model.safetensors"
RUN_GENES_FILE = "genes.txt"
#: the stain normaliser fitted on the config's stain.target (data.stain; recorded in run.json)
RUN_STAIN_FILE = "stain.json"
GENE_MODEL_MANIFEST = "gene_model.json"  # what `pretrain-genes` trained, on which sections
RUN_GENE_MODEL_DIR = "gene_model"  # a copy of model.gene_weights: the run stands on its own
RUN_HEADS_DIR = "heads"
RUN_CHECKPOINT_DIR = "checkpoints"
RUN_LAST_CHECKPOINT = "last.ckpt"
RUN_CACHE_DIR = "cache"
#: an ensemble run's members (``model.ensemble``): ``members/<i>`` is a run folder of its own
RUN_MEMBERS_DIR = "members"

# Evaluation output (``histoxmodal evaluate``).
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"

# Keys of a training batch (what datasets yield and towers consume).
BATCH_IMAGE = "image"  # uint8 (B, 3, H, W)
BATCH_IMAGE_FEATURES = "image_features"  # (B, d) cached frozen-tower features
BATCH_EXPRESSION = "expression"  # float32 (B, n_genes), normalized as the gene tower states
BATCH_GENE_MASK = "gene_mask"  # bool (B, n_genes): genes measured in the spot's sample
BATCH_INDEX = "index"  # int64 (B,): row in the dataset
BATCH_CXR = "cxr"  # float (B, 1, H, W) radiograph in [0, 1]
BATCH_ECG = "ecg"  # float (B, n_leads, T)
BATCH_ECG_LEAD_MASK = "ecg_lead_mask"  # bool (B, n_leads)
BATCH_REPORT = "report"  # list of B strings
BATCH_PRESENT = "present"  # bool (B, n_modalities)
