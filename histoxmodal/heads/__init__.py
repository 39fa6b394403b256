"""Prediction heads on embeddings, each registered by name with fit / predict / save / load:
expression (``ridge``, ``mlp``, BLEEP-style ``retrieval``), slide/patient labels from bags of
embeddings (``abmil``, ``mean_mil``) and per-spot labels (``linear_probe``).

``create_head("ridge", pca=256)``, ``list_heads()``, ``describe_head("abmil")``;
``head.save(folder)`` and ``load_head(folder)``. Names are imported on first use, and no head
module imports torch until a torch head is fitted or loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY = {
    "HEADS": "histoxmodal.heads.registry",
    "create_head": "histoxmodal.heads.registry",
    "list_heads": "histoxmodal.heads.registry",
    "describe_head": "histoxmodal.heads.registry",
    "load_head": "histoxmodal.heads.registry",
    "Head": "histoxmodal.heads.base",
    "RidgeHead": "histoxmodal.heads.expression",
    "MLPHead": "histoxmodal.heads.expression",
    "RetrievalHead": "histoxmodal.heads.expression",
    "ABMILHead": "histoxmodal.heads.mil",
    "MeanMILHead": "histoxmodal.heads.mil",
    "LinearProbeHead": "histoxmodal.heads.probe",
    "linear_probe": "histoxmodal.heads.probe",
}

__all__ = [  # noqa: RUF022 - grouped: registry, heads
    "HEADS",
    "create_head",
    "list_heads",
    "describe_head",
    "load_head",
    "Head",
    "RidgeHead",
    "MLPHead",
    "RetrievalHead",
    "ABMILHead",
    "MeanMILHead",
    "LinearProbeHead",
    "linear_probe",
]

if TYPE_CHECKING:  # pragma: no cover
    from histoxmodal.heads.base import Head
    from histoxmodal.heads.expression import MLPHead, RetrievalHead, RidgeHead
    from histoxmodal.heads.mil import ABMILHead, MeanMILHead
    from histoxmodal.heads.probe import LinearProbeHead, linear_probe
    from histoxmodal.heads.registry import (
        HEADS,
        create_head,
        describe_head,
        list_heads,
        load_head,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'histoxmodal.heads' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
