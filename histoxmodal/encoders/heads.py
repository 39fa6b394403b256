"""Projection heads mapping tower features into the shared embedding space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal.errors import ConfigError


class ProjectionHead(nn.Module):
    """Linear or two-layer MLP projection, L2-normalized output.

    Parameters
    ----------
    in_dim, out_dim
        Feature and embedding sizes.
    kind
        ``"linear"`` or ``"mlp"`` (Linear-GELU-Linear with a residual, as in BLEEP).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 128, *, kind: str = "mlp", dropout: float = 0.1
    ) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ConfigError(f"kind={kind!r}: expected 'linear' or 'mlp'")
        self.kind = kind
        self.proj = nn.Linear(in_dim, out_dim)
        if kind == "mlp":
            self.fc = nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim), nn.Dropout(dropout))
            self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.kind == "mlp":
            h = self.norm(h + self.fc(h))
        return F.normalize(h, dim=-1)
