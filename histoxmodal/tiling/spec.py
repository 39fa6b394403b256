"""Tile geometry: :class:`TileSpec` (what the user asks for) and :class:`TileGeometry` (how it
maps onto one slide's pyramid)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from histoxmodal.errors import ConfigError

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader


@dataclass(frozen=True)
class TileSpec:
    """Tiles of ``tile_px`` pixels at ``target_mpp`` µm/px, on a grid with overlap or stride.

    Parameters
    ----------
    tile_px
        Output tile side in pixels.
    target_mpp
        µm per pixel of the output tiles (0.5 ≈ 20x, 0.25 ≈ 40x).
    overlap_px
        Overlap between neighbouring tiles, in output pixels. Exclusive with ``stride_px``.
    stride_px
        Step between tile origins in output pixels; default ``tile_px - overlap_px``.
    min_tissue
        Minimum fraction of a tile covered by tissue for the tile to be kept (0 keeps all).

    Examples
    --------
    >>> TileSpec(tile_px=224, target_mpp=0.5).tile_um
    112.0
    >>> TileSpec.from_um(256, tile_px=512).target_mpp
    0.5
    """

    tile_px: int = 224
    target_mpp: float = 0.5
    overlap_px: int = 0
    stride_px: int | None = None
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.tile_px, int) or self.tile_px < 1:
            raise ConfigError(f"tile_px={self.tile_px!r} must be a positive integer, e.g. 224")
        if not (
            isinstance(self.target_mpp, int | float)
            and math.isfinite(self.target_mpp)
            and self.target_mpp > 0
        ):
            raise ConfigError(
                f"target_mpp={self.target_mpp!r} must be a positive µm/px, e.g. 0.5 (20x)"
            )
        if self.stride_px is not None and self.overlap_px:
            raise ConfigError("give overlap_px or stride_px, not both")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ConfigError(
                f"overlap_px={self.overlap_px} must be in [0, tile_px={self.tile_px})"
            )
        if self.stride_px is not None and self.stride_px < 1:
            raise ConfigError(f"stride_px={self.stride_px} must be at least 1")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue={self.min_tissue} must be a fraction in [0, 1]")

    @classmethod
    def from_um(cls, tile_um: float, *, tile_px: int = 224, **kwargs: object) -> TileSpec:
        """A spec from the physical field of view: ``tile_um`` µm wide, sampled to ``tile_px``."""
        if not tile_um > 0:
            raise ConfigError(f"tile_um={tile_um!r} must be positive (µm)")
        return cls(tile_px=tile_px, target_mpp=tile_um / tile_px, **kwargs)  # type: ignore[arg-type]

    @property
    def step_px(self) -> int:
        """Grid step in output pixels."""
        return self.stride_px if self.stride_px is not None else self.tile_px - self.overlap_px

    @property
    def tile_um(self) -> float:
        return self.tile_px * self.target_mpp

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def resolve(self, slide: SlideReader) -> TileGeometry:
        """Map this spec onto ``slide``'s pyramid (needs the slide's pixel size)."""
        return TileGeometry.from_spec(self, slide.require_mpp(), slide.level_downsamples)


@dataclass(frozen=True)
class TileGeometry:
    """A :class:`TileSpec` resolved for one slide.

    Attributes
    ----------
    spec
        The requested spec.
    mpp
        The slide's level-0 µm/px.
    tile_px_level0
        Tile side in level-0 pixels, ``round(tile_px * target_mpp / mpp)``.
    step_level0
        Grid step in level-0 pixels.
    read_level
        Pyramid level the pixels are read from: the coarsest level at least as fine as the target.
    read_px
        Tile side in pixels of ``read_level``; resampled to ``tile_px`` when different.
    """

    spec: TileSpec
    mpp: float
    tile_px_level0: int
    step_level0: int
    read_level: int
    read_px: int
    read_downsample: float

    @classmethod
    def from_spec(
        cls, spec: TileSpec, mpp: float, level_downsamples: tuple[float, ...]
    ) -> TileGeometry:
        scale = spec.target_mpp / mpp
        size0 = max(1, round(spec.tile_px * scale))
        step0 = max(1, round(spec.step_px * scale))
        level = 0
        for i, ds in enumerate(level_downsamples):
            if ds <= scale * 1.01:
                level = i
        ds = level_downsamples[level]
        return cls(spec, mpp, size0, step0, level, max(1, round(size0 / ds)), ds)

    @property
    def effective_mpp(self) -> float:
        """The µm/px the tiles really have after rounding the level-0 size to whole pixels."""
        return self.tile_px_level0 * self.mpp / self.spec.tile_px

    @property
    def needs_resize(self) -> bool:
        return self.read_px != self.spec.tile_px
