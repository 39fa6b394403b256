"""Public synthetic data generators for tests, demos and benchmarks (no downloads)."""

from histoxmodal.testing.slides import SyntheticSlide, make_synthetic_slide

__all__ = ["SyntheticSlide", "make_synthetic_slide"]
