"""Slide/patient-level classification from many spot or tile embeddings (multiple-instance
learning): gated attention MIL (:class:`ABMILHead`, Ilse et al. 2018) and a mean-pooling baseline
(:class:`MeanMILHead`).

A bag is one ``(n_instances, d)`` array per slide or patient; bags differ in size, so training
takes one bag per step. Importing this module does not import torch; the networks
(:class:`~histoxmodal.heads.mil_modules.GatedAttentionMIL`,
:class:`~histoxmodal.heads.mil_modules.MeanPoolMIL`) are imported when a head is fitted or loaded,
and ``from histoxmodal.heads.mil import GatedAttentionMIL`` still works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histoxmodal.errors import ConfigError
from histoxmodal.heads.base import Head, HeadState, decode_labels, encode_labels
from histoxmodal.heads.registry import register_head

_BAGS = "bags: a list of (n_instances, d) embedding arrays, one per slide or patient"


def __getattr__(name: str) -> Any:
    if name in ("GatedAttentionMIL", "MeanPoolMIL"):
        from histoxmodal.heads import mil_modules

        return getattr(mil_modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_bags(bags: Sequence[np.ndarray], dim: int | None = None) -> list[np.ndarray]:
    """Validated float32 bags, all ``(n_i >= 1, dim)``."""
    if isinstance(bags, np.ndarray) and bags.ndim == 2:
        raise ConfigError(
            f"bags is one {bags.shape} array: pass a list of (n_instances, d) arrays, one per "
            "slide or patient (for a single bag, [bag])"
        )
    out = [np.asarray(b, np.float32) for b in bags]
    if not out:
        raise ConfigError("bags is empty: pass at least one (n_instances, d) array")
    dim = out[0].shape[-1] if dim is None else dim
    for i, b in enumerate(out):
        if b.ndim != 2 or len(b) == 0 or b.shape[1] != dim:
            raise ConfigError(
                f"bags[{i}] has shape {b.shape}: expected (n_instances >= 1, {dim}), "
                "the embedding size of the bags the head was fitted on"
            )
        if not np.isfinite(b).all():
            raise ConfigError(f"bags[{i}] holds NaN or infinite values; drop those instances")
    return out


class _MILHead(Head):
    """fit / predict_proba / predict shared by the MIL heads; subclasses build the network."""

    _fitted_attrs = ("net_", "classes_", "n_features_")

    def _build(self, dim: int, n_classes: int):
        raise NotImplementedError

    def fit(self, bags: Sequence[np.ndarray], labels: Sequence) -> _MILHead:
        """Train on ``bags`` (one ``(n_instances, d)`` array each) and one label per bag.

        Labels may be any sortable values; ``classes_`` holds them in ``np.unique`` order, the
        column order of :meth:`predict_proba`. AdamW on the cross-entropy, one bag per step, bag
        order shuffled each epoch; the result depends only on ``seed`` (torch's global random
        state is left untouched).
        """
        import torch
        from torch import nn

        data = _as_bags(bags)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(data):
            raise ConfigError(
                f"{len(data)} bags for labels of shape {labels.shape}: pass one label per bag"
            )
        classes, y = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ConfigError(
                f"labels has one class ({classes.tolist()}): a classifier needs at least two"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: expected at least 1")
        target = torch.as_tensor(y, dtype=torch.long)
        tensors = [torch.as_tensor(b) for b in data]
        rng = np.random.default_rng(self.seed)
        self.history_ = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self._build(data[0].shape[1], len(classes))
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            net.train()
            for _ in range(self.epochs):
                total = 0.0
                for i in rng.permutation(len(tensors)):
                    loss = nn.functional.cross_entropy(net(tensors[i])[None], target[i : i + 1])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                self.history_.append(total / len(tensors))
        self.net_ = net.eval()
        self.classes_ = classes
        self.n_features_ = int(data[0].shape[1])
        return self

    def predict_proba(self, bags: Sequence[np.ndarray]) -> np.ndarray:
        """``(n_bags, n_classes)`` class probabilities, columns in ``classes_`` order."""
        import torch

        self._require_fitted("predict_proba")
        data = _as_bags(bags, self.n_features_)
        with torch.no_grad():
            return np.stack(
                [torch.softmax(self.net_(torch.as_tensor(b)), dim=0).double().numpy() for b in data]
            )

    def predict(self, bags: Sequence[np.ndarray]) -> np.ndarray:
        """``(n_bags,)`` the most probable class of each bag (a value of ``classes_``)."""
        return self.classes_[self.predict_proba(bags).argmax(axis=1)]

    def _state(self) -> HeadState:
        return HeadState(
            fitted={
                "classes_": encode_labels(self.classes_),
                "n_features_": self.n_features_,
                "history_": self.history_,
            },
            weights=self.net_.state_dict(),
        )

    def _restore(self, state: HeadState) -> None:
        import torch

        self.classes_ = decode_labels(state.fitted["classes_"])
        self.n_features_ = int(state.fitted["n_features_"])
        self.history_ = [float(h) for h in state.fitted["history_"]]
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten anyway
            net = self._build(self.n_features_, len(self.classes_))
        net.load_state_dict(state.weights)
        self.net_ = net.eval()


@register_head(
    "abmil",
    task="mil",
    input=_BAGS,
    target="one class label per bag (n_bags,)",
    output="class probabilities (n_bags, n_classes)",
    backend="torch (CPU)",
)
@dataclass
class ABMILHead(_MILHead):
    """Gated attention MIL (ABMIL, Ilse et al. 2018): attention pooling, linear classifier.

    The bag is pooled by an attention-weighted mean, then classified; the attention
    (:meth:`attention`) shows which instances carry the label.

    Parameters
    ----------
    hidden
        Width of the attention network.
    dropout
        Dropout on the pooled embedding during training.
    epochs, lr, weight_decay
        Passes over the bags, AdamW learning rate and weight decay.
    seed
        Seeds initialisation, dropout and the bag order.
    """

    hidden: int = 128
    dropout: float = 0.1
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    history_: list[float] = field(default_factory=list, init=False)

    def _build(self, dim: int, n_classes: int):
        from histoxmodal.heads.mil_modules import GatedAttentionMIL

        return GatedAttentionMIL(dim, n_classes, hidden=self.hidden, dropout=self.dropout)

    def attention(self, bag: np.ndarray) -> np.ndarray:
        """``(n_instances,)`` attention weights of one bag ``(n_instances, d)``, summing to one."""
        import torch

        self._require_fitted("attention")
        (b,) = _as_bags([bag], self.n_features_)
        with torch.no_grad():
            return self.net_.attention(torch.as_tensor(b)).double().numpy()


@register_head(
    "mean_mil",
    task="mil",
    input=_BAGS,
    target="one class label per bag (n_bags,)",
    output="class probabilities (n_bags, n_classes)",
    backend="torch (CPU)",
)
@dataclass
class MeanMILHead(_MILHead):
    """Mean-pooling MIL baseline: the mean instance embedding, then a linear classifier.

    Parameters
    ----------
    epochs, lr, weight_decay
        Passes over the bags, AdamW learning rate and weight decay.
    seed
        Seeds initialisation and the bag order.
    """

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    history_: list[float] = field(default_factory=list, init=False)

    def _build(self, dim: int, n_classes: int):
        from histoxmodal.heads.mil_modules import MeanPoolMIL

        return MeanPoolMIL(dim, n_classes)
