"""Pure geometry and masks: tile specs, tissue detection, grids, tile extraction and outputs."""

from histoxmodal.tiling.spec import TileGeometry, TileSpec

__all__ = ["TileGeometry", "TileSpec"]
