"""Canonical names, defined once: AnnData slots, batch keys and output file names.

Every module that reads or writes these slots imports the constant instead of repeating the string.
"""

from __future__ import annotations

# AnnData contract (the scanpy / squidpy layout; used by the spatial readers).
OBS_SAMPLE = "sample"
OBS_PATIENT = "patient"
OBS_BATCH = "batch"
OBSM_SPATIAL = "spatial"
UNS_SPATIAL = "spatial"
LAYER_COUNTS = "counts"

# Per-slide tiling output (``histoxmodal tile``), one folder per slide.
TILE_COORDS_FILE = "coords.h5"
TILE_STORE_FILE = "tiles.h5"
TILE_MANIFEST_FILE = "manifest.json"
TILE_OVERLAY_FILE = "overlay.png"
TILE_GEOJSON_FILE = "tissue.geojson"
TILE_ERROR_LOG = "error.log"
