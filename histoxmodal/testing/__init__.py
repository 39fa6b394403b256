"""Public synthetic data generators for tests, demos and benchmarks (no downloads)."""

from histoxmodal.testing.hescape import HescapeSampleSpec, SyntheticHescape, make_hescape_dataset
from histoxmodal.testing.mil import SyntheticMILCohort, make_mil_cohort
from histoxmodal.testing.slides import (
    LESION,
    LESION_TYPE,
    TISSUE_TYPES,
    SyntheticSlide,
    make_synthetic_slide,
)
from histoxmodal.testing.spatial import SyntheticSpatial, make_synthetic_visium
from histoxmodal.testing.visium_hd import SyntheticVisiumHD, make_synthetic_visium_hd
from histoxmodal.testing.xenium import SyntheticXenium, make_synthetic_xenium

__all__ = [
    "LESION",
    "LESION_TYPE",
    "TISSUE_TYPES",
    "HescapeSampleSpec",
    "SyntheticHescape",
    "SyntheticMILCohort",
    "SyntheticSlide",
    "SyntheticSpatial",
    "SyntheticVisiumHD",
    "SyntheticXenium",
    "make_hescape_dataset",
    "make_mil_cohort",
    "make_synthetic_slide",
    "make_synthetic_visium",
    "make_synthetic_visium_hd",
    "make_synthetic_xenium",
]
