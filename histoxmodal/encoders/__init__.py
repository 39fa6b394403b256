"""Encoders (image and gene towers) and projection heads, registered by name like timm models.

``create_encoder("uni", weights="/path/to/pytorch_model.bin", mode="frozen")``,
``create_encoder("timm:resnet50")``, ``list_encoders("test_*")``. Weights come only from local
files; see :mod:`histoxmodal.encoders.weights`.
"""

from histoxmodal.encoders.heads import ProjectionHead
from histoxmodal.encoders.registry import ENCODERS, create_encoder, describe_encoder, list_encoders

__all__ = ["ENCODERS", "ProjectionHead", "create_encoder", "describe_encoder", "list_encoders"]
