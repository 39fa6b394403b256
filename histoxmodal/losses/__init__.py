"""Contrastive losses, each registered by name: ``create_loss("clip")``, ``list_losses()``,
``describe_loss("symile")``.

All take L2-normalized embeddings ``(batch, dim)`` per modality and return a scalar. Under
``torch.distributed`` they gather every rank's embeddings (with gradients) so the negatives of
each rank's batch are the global batch, as in a single process.
"""

from histoxmodal.losses.contrastive import (
    LOSSES,
    ClipLoss,
    CwclLoss,
    PairwiseClipLoss,
    SigLipLoss,
    SoftClipLoss,
    SymileLoss,
    create_loss,
    describe_loss,
    list_losses,
)

__all__ = [
    "LOSSES",
    "ClipLoss",
    "CwclLoss",
    "PairwiseClipLoss",
    "SigLipLoss",
    "SoftClipLoss",
    "SymileLoss",
    "create_loss",
    "describe_loss",
    "list_losses",
]
