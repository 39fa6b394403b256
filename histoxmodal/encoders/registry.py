"""The encoder registry (image and gene towers), shared by the modules that register into it."""

from __future__ import annotations

from torch import nn

from histoxmodal.errors import ConfigError, HistoxmodalError
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
    try:
        if name.startswith("timm:"):
            from histoxmodal.encoders.image import timm_encoder

            return timm_encoder(name[5:], **overrides)
        entry = ENCODERS.get(name)
        return entry(**overrides)
    except TypeError as exc:
        if "keyword argument" not in str(exc):
            raise  # a bug, not an option: keep its traceback
        raise _bad_options(name, overrides, exc) from exc
    except ValueError as exc:
        if isinstance(exc, HistoxmodalError):  # already one line naming the fix (bad weights)
            raise
        raise _bad_options(name, overrides, exc) from exc


def _bad_options(name: str, overrides: dict, exc: Exception) -> ConfigError:
    shown = {k: v for k, v in overrides.items() if k not in ("weights",)}
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(
        f"encoder {name!r} cannot be built with {shown}: {first}; check the model's "
        f"image_kwargs / gene_kwargs in the config (see `histoxmodal models {name}`)"
    )


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell pattern, e.g. ``"uni*"`` or ``"test_*"``."""
    _load_all()
    return ENCODERS.list(pattern)


def describe_encoder(name: str) -> dict:
    """Registration metadata: modality, architecture, weights source, input size, µm/px."""
    _load_all()
    return ENCODERS.describe(name)
