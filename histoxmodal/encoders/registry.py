"""The encoder registry (image and gene towers), shared by the modules that register into it."""

from __future__ import annotations

from torch import nn

from histoxmodal.registry import Registry

ENCODERS: Registry = Registry("encoder")


def _load_all() -> None:
    import histoxmodal.encoders.gene
    import histoxmodal.encoders.image
    import histoxmodal.encoders.medical  # noqa: F401  (each registers on import)


def create_encoder(name: str, **overrides) -> nn.Module:
    """Build an encoder by registered name, or ``"timm:<architecture>"`` for any timm model.

    Keyword arguments go to the entry (``weights=`` path, ``mode="frozen"``, sizes...).
    """
    _load_all()
    if name.startswith("timm:"):
        from histoxmodal.encoders.image import timm_encoder

        return timm_encoder(name[5:], **overrides)
    return ENCODERS.get(name)(**overrides)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell pattern, e.g. ``"uni*"`` or ``"test_*"``."""
    _load_all()
    return ENCODERS.list(pattern)


def describe_encoder(name: str) -> dict:
    """Registration metadata: modality, architecture, weights source, input size, µm/px."""
    _load_all()
    return ENCODERS.describe(name)
