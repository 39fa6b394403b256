"""The torch networks inside the MIL heads: gated attention pooling (ABMIL, Ilse et al. 2018)
and mean pooling, each followed by a linear classifier. Usable on their own (e.g. inside a
Lightning module); :mod:`histoxmodal.heads.mil` wraps them as fit / predict / save / load heads.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionMIL(nn.Module):
    """Gated attention pooling over a bag ``(n_instances, dim)``, then a linear classifier.

    Attention logits ``a_i = w · (tanh(V x_i + b_V) ⊙ sigmoid(U x_i + b_U)) + b_w``, weights
    ``softmax(a)`` over the bag, class logits ``C (Σ_i softmax(a)_i x_i) + c``.
    """

    def __init__(
        self, dim: int, n_classes: int = 2, *, hidden: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, n_classes)

    def attention(self, bag: torch.Tensor) -> torch.Tensor:
        """``(n_instances,)`` attention weights summing to one."""
        a = self.w(torch.tanh(self.v(bag)) * torch.sigmoid(self.u(bag))).squeeze(-1)
        return torch.softmax(a, dim=0)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        """``(n_instances, dim)`` bag -> ``(n_classes,)`` logits."""
        a = self.attention(bag)
        return self.classifier(self.drop(a @ bag))


class MeanPoolMIL(nn.Module):
    """The baseline: the mean instance embedding, then a linear classifier."""

    def __init__(self, dim: int, n_classes: int = 2) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        """``(n_instances, dim)`` bag -> ``(n_classes,)`` logits."""
        return self.classifier(bag.mean(dim=0))
