"""Public synthetic data generators for tests, demos and benchmarks (no downloads)."""

from histoxmodal.testing.slides import TISSUE_TYPES, SyntheticSlide, make_synthetic_slide
from histoxmodal.testing.spatial import SyntheticSpatial, make_synthetic_visium

__all__ = [
    "TISSUE_TYPES",
    "SyntheticSlide",
    "SyntheticSpatial",
    "make_synthetic_slide",
    "make_synthetic_visium",
]
