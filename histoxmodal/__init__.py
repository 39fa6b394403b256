"""histoxmodal: spatial transcriptomics and medical multimodal learning.

The top-level namespace is small and lazy: heavy subpackages (OpenSlide, OpenCV, h5py, and later
torch) are imported only when one of their names is first used, so ``import histoxmodal`` and
``histoxmodal --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "open_slide": "histoxmodal.io.slide",
    "SlideReader": "histoxmodal.io.slide",
    "list_readers": "histoxmodal.io.slide",
    "TileSpec": "histoxmodal.tiling.spec",
    "TileGeometry": "histoxmodal.tiling.spec",
    "detect_tissue": "histoxmodal.tiling.tissue",
    "TissueMask": "histoxmodal.tiling.tissue",
    "TissueParams": "histoxmodal.tiling.tissue",
    "tile_grid": "histoxmodal.tiling.grid",
    "iter_tiles": "histoxmodal.tiling.extract",
    "tile_slide": "histoxmodal.tiling.job",
    "tile_slides": "histoxmodal.tiling.job",
    "load_tiles": "histoxmodal.tiling.job",
    "read_spatial": "histoxmodal.io.spatial",
    "read_ecg": "histoxmodal.io.ecg",
    "read_radiology": "histoxmodal.io.radiology",
    "read_reports": "histoxmodal.io.reports",
    "pair_cohort": "histoxmodal.io.cohort",
    "build_paired": "histoxmodal.data.paired",
    "load_paired": "histoxmodal.data.paired",
    "create_encoder": "histoxmodal.encoders",
    "list_encoders": "histoxmodal.encoders",
    "create_loss": "histoxmodal.losses",
    "list_losses": "histoxmodal.losses",
}

__all__ = [  # noqa: RUF022 - grouped by flow: read, tile, run
    "__version__",
    "SlideReader",
    "list_readers",
    "open_slide",
    "TileSpec",
    "TileGeometry",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "tile_grid",
    "iter_tiles",
    "tile_slide",
    "tile_slides",
    "load_tiles",
    "read_spatial",
    "read_ecg",
    "read_radiology",
    "read_reports",
    "pair_cohort",
    "build_paired",
    "load_paired",
    "create_encoder",
    "list_encoders",
    "create_loss",
    "list_losses",
]

if TYPE_CHECKING:  # pragma: no cover
    from histoxmodal.data.paired import build_paired, load_paired
    from histoxmodal.encoders import create_encoder, list_encoders
    from histoxmodal.io.cohort import pair_cohort
    from histoxmodal.io.ecg import read_ecg
    from histoxmodal.io.radiology import read_radiology
    from histoxmodal.io.reports import read_reports
    from histoxmodal.io.slide import SlideReader, list_readers, open_slide
    from histoxmodal.io.spatial import read_spatial
    from histoxmodal.losses import create_loss, list_losses
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.job import load_tiles, tile_slide, tile_slides
    from histoxmodal.tiling.spec import TileGeometry, TileSpec
    from histoxmodal.tiling.tissue import TissueMask, TissueParams, detect_tissue


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'histoxmodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
