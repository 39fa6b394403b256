"""Adversarial batch removal: a batch classifier on the embeddings behind gradient reversal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-lam`` backward (Ganin & Lempitsky 2015)."""
    return _Reverse.apply(x, lam)


class BatchAdversary(nn.Module):
    """Predicts the batch from an embedding through gradient reversal.

    Minimising its cross-entropy trains the classifier to find batch information while the
    reversed gradient trains the encoder to remove it.

    Parameters
    ----------
    dim
        Embedding size.
    n_batches
        Number of batches (classes).
    hidden
        Hidden width of the classifier MLP.
    lam
        Gradient-reversal strength.
    """

    def __init__(self, dim: int, n_batches: int, *, hidden: int = 128, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = lam
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_batches))

    def forward(self, z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(grad_reverse(z, self.lam)), batch)
