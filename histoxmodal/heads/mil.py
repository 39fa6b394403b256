"""Slide/patient-level classification from many spot or tile embeddings (multiple-instance
learning): gated attention MIL (ABMIL, Ilse et al. 2018) and a mean-pooling baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from histoxmodal.errors import ConfigError


class ABMIL(nn.Module):
    """Gated attention pooling over a bag ``(n_instances, dim)``, then a linear classifier."""

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
        a = self.attention(bag)
        return self.classifier(self.drop(a @ bag))


class MeanPoolMIL(nn.Module):
    """The baseline: the mean instance embedding, then a linear classifier."""

    def __init__(self, dim: int, n_classes: int = 2, **_: object) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        return self.classifier(bag.mean(dim=0))


MIL_MODELS = {"abmil": ABMIL, "mean": MeanPoolMIL}


def fit_mil(
    bags: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    model: str = "abmil",
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Module:
    """Train a MIL classifier, one bag per step (bags differ in size).

    Parameters
    ----------
    bags
        One ``(n_instances, dim)`` array per slide or patient.
    labels
        Integer class per bag.
    """
    if model not in MIL_MODELS:
        raise ConfigError(f"model={model!r}: expected one of {', '.join(MIL_MODELS)}")
    if len(bags) != len(labels) or not bags:
        raise ConfigError(f"{len(bags)} bags for {len(labels)} labels")
    torch.manual_seed(seed)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    net = MIL_MODELS[model](bags[0].shape[1], int(y.max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    data = [torch.as_tensor(np.asarray(b, np.float32)) for b in bags]
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(epochs):
        for i in rng.permutation(len(data)):
            loss = nn.functional.cross_entropy(net(data[i])[None], y[i : i + 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict_proba(net: nn.Module, bags: Sequence[np.ndarray]) -> np.ndarray:
    """``(n_bags, n_classes)`` class probabilities."""
    net.eval()
    return np.stack(
        [
            torch.softmax(net(torch.as_tensor(np.asarray(b, np.float32))), dim=0).numpy()
            for b in bags
        ]
    )
