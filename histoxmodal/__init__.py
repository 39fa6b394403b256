"""histoxmodal: spatial transcriptomics and medical multimodal learning.

``import histoxmodal as hx`` gives one surface: the readers (``hx.open_slide``,
``hx.read_spatial``, ...), tile geometry (``hx.TileSpec``, ``hx.detect_tissue``), the workflows
the command line runs (``hx.tile``, ``hx.build``, ``hx.train``, ``hx.embed``, ``hx.evaluate``,
``hx.predict``, ``hx.features``), the run folder (``hx.Run``), and the registries
(``hx.create_encoder`` / ``list_encoders`` / ``describe_encoder``, and the same for losses and
heads). The namespace is lazy: heavy subpackages (OpenSlide, OpenCV, h5py, torch) are imported
only when one of their names is first used, so ``import histoxmodal`` and ``histoxmodal --help``
stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from histoxmodal.version import __version__

# public name -> (module that defines it, its name there), grouped by the flow
_LAZY = {
    # readers
    "open_slide": ("histoxmodal.io.slide", "open_slide"),
    "SlideReader": ("histoxmodal.io.slide", "SlideReader"),
    "list_readers": ("histoxmodal.io.slide", "list_readers"),
    "read_spatial": ("histoxmodal.io.spatial", "read_spatial"),
    "read_visium": ("histoxmodal.io.spatial", "read_visium"),
    "read_visium_hd": ("histoxmodal.io.spatial", "read_visium_hd"),
    "read_st": ("histoxmodal.io.spatial", "read_st"),
    "read_her2st": ("histoxmodal.io.spatial", "read_her2st"),
    "read_xenium": ("histoxmodal.io.spatial", "read_xenium"),
    "read_h5ad": ("histoxmodal.io.spatial", "read_h5ad"),
    "read_ecg": ("histoxmodal.io.ecg", "read_ecg"),
    "read_radiology": ("histoxmodal.io.radiology", "read_radiology"),
    "read_reports": ("histoxmodal.io.reports", "read_reports"),
    "pair_cohort": ("histoxmodal.io.cohort", "pair_cohort"),
    # tiles
    "TileSpec": ("histoxmodal.tiling.spec", "TileSpec"),
    "TileGeometry": ("histoxmodal.tiling.spec", "TileGeometry"),
    "detect_tissue": ("histoxmodal.tiling.tissue", "detect_tissue"),
    "TissueMask": ("histoxmodal.tiling.tissue", "TissueMask"),
    "TissueParams": ("histoxmodal.tiling.tissue", "TissueParams"),
    "tile_grid": ("histoxmodal.tiling.grid", "tile_grid"),
    "iter_tiles": ("histoxmodal.tiling.extract", "iter_tiles"),
    # datasets
    "load_paired": ("histoxmodal.data.store", "load_paired"),
    "Split": ("histoxmodal.data.splits", "Split"),
    "StainNormalizer": ("histoxmodal.data.stain", "StainNormalizer"),
    "fit_stain_target": ("histoxmodal.data.stain", "fit_stain_target"),
    # workflows: what the command line runs, for library users
    "tile": ("histoxmodal.workflows.tile", "tile_slides"),
    "tile_slide": ("histoxmodal.workflows.tile", "tile_slide"),
    "tile_slides": ("histoxmodal.workflows.tile", "tile_slides"),
    "load_tiles": ("histoxmodal.tiling.outputs", "load_tiles"),
    "build": ("histoxmodal.workflows.build", "build"),
    "build_paired": ("histoxmodal.workflows.build", "build_paired"),
    "load_config": ("histoxmodal.workflows.config_files", "load_config"),
    "train": ("histoxmodal.workflows.train", "train"),
    "pretrain_genes": ("histoxmodal.workflows.pretrain_genes", "pretrain_genes"),
    "Run": ("histoxmodal.workflows.run", "Run"),
    "embed": ("histoxmodal.workflows.embed", "embed"),
    "evaluate": ("histoxmodal.workflows.evaluate", "evaluate"),
    "predict": ("histoxmodal.workflows.predict", "predict_expression"),
    "fit_expression_head": ("histoxmodal.workflows.predict", "fit_expression_head"),
    "features": ("histoxmodal.workflows.features", "extract_features"),
    "extract_features": ("histoxmodal.workflows.features", "extract_features"),
    "read_features": ("histoxmodal.workflows.features", "read_features"),
    "list_models": ("histoxmodal.workflows.extractor", "list_models"),
    "predict_slides": ("histoxmodal.workflows.expression_map", "predict_slides"),
    "train_mil": ("histoxmodal.workflows.mil", "train_mil"),
    "predict_mil": ("histoxmodal.workflows.mil", "predict_mil"),
    "MILRun": ("histoxmodal.workflows.mil", "MILRun"),
    # registries
    "create_encoder": ("histoxmodal.encoders", "create_encoder"),
    "list_encoders": ("histoxmodal.encoders", "list_encoders"),
    "describe_encoder": ("histoxmodal.encoders", "describe_encoder"),
    "create_loss": ("histoxmodal.losses", "create_loss"),
    "list_losses": ("histoxmodal.losses", "list_losses"),
    "describe_loss": ("histoxmodal.losses", "describe_loss"),
    "create_head": ("histoxmodal.heads", "create_head"),
    "list_heads": ("histoxmodal.heads", "list_heads"),
    "describe_head": ("histoxmodal.heads", "describe_head"),
}

__all__ = [  # noqa: RUF022 - in the order of the flow, as in _LAZY
    "__version__",
    "open_slide",
    "SlideReader",
    "list_readers",
    "read_spatial",
    "read_visium",
    "read_visium_hd",
    "read_st",
    "read_her2st",
    "read_xenium",
    "read_h5ad",
    "read_ecg",
    "read_radiology",
    "read_reports",
    "pair_cohort",
    "TileSpec",
    "TileGeometry",
    "detect_tissue",
    "TissueMask",
    "TissueParams",
    "tile_grid",
    "iter_tiles",
    "load_paired",
    "Split",
    "StainNormalizer",
    "fit_stain_target",
    "tile",
    "tile_slide",
    "tile_slides",
    "load_tiles",
    "build",
    "build_paired",
    "load_config",
    "train",
    "pretrain_genes",
    "Run",
    "embed",
    "evaluate",
    "predict",
    "fit_expression_head",
    "features",
    "extract_features",
    "read_features",
    "list_models",
    "predict_slides",
    "train_mil",
    "predict_mil",
    "MILRun",
    "create_encoder",
    "list_encoders",
    "describe_encoder",
    "create_loss",
    "list_losses",
    "describe_loss",
    "create_head",
    "list_heads",
    "describe_head",
]

if TYPE_CHECKING:  # pragma: no cover
    from histoxmodal.data.splits import Split
    from histoxmodal.data.stain import StainNormalizer, fit_stain_target
    from histoxmodal.data.store import load_paired
    from histoxmodal.encoders import create_encoder, describe_encoder, list_encoders
    from histoxmodal.heads import create_head, describe_head, list_heads
    from histoxmodal.io.cohort import pair_cohort
    from histoxmodal.io.ecg import read_ecg
    from histoxmodal.io.radiology import read_radiology
    from histoxmodal.io.reports import read_reports
    from histoxmodal.io.slide import SlideReader, list_readers, open_slide
    from histoxmodal.io.spatial import (
        read_h5ad,
        read_her2st,
        read_spatial,
        read_st,
        read_visium,
        read_visium_hd,
        read_xenium,
    )
    from histoxmodal.losses import create_loss, describe_loss, list_losses
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.outputs import load_tiles
    from histoxmodal.tiling.spec import TileGeometry, TileSpec
    from histoxmodal.tiling.tissue import TissueMask, TissueParams, detect_tissue
    from histoxmodal.workflows.build import build, build_paired
    from histoxmodal.workflows.config_files import load_config
    from histoxmodal.workflows.embed import embed
    from histoxmodal.workflows.evaluate import evaluate
    from histoxmodal.workflows.expression_map import predict_slides
    from histoxmodal.workflows.extractor import list_models
    from histoxmodal.workflows.features import extract_features, read_features
    from histoxmodal.workflows.features import extract_features as features
    from histoxmodal.workflows.mil import MILRun, predict_mil, train_mil
    from histoxmodal.workflows.predict import fit_expression_head
    from histoxmodal.workflows.predict import predict_expression as predict
    from histoxmodal.workflows.run import Run
    from histoxmodal.workflows.tile import tile_slide, tile_slides
    from histoxmodal.workflows.tile import tile_slides as tile
    from histoxmodal.workflows.train import train


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'histoxmodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
