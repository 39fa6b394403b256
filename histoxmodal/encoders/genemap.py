"""Mapping a dataset's genes onto a pretrained gene model's genes, by name.

A pretrained gene tower (scVI, DRVI, Nicheformer) reads a fixed gene list in its own order. The
dataset's panel is mapped onto it by name: model genes the dataset lacks are zero-filled (their
count is logged), dataset genes the model lacks are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from histoxmodal.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneMap:
    """Where each model gene sits in the dataset's panel.

    ``source[j]`` is the dataset column of model gene ``j`` (0 where absent), ``present[j]``
    whether the dataset measures it.
    """

    source: torch.Tensor
    present: torch.Tensor

    @property
    def n_missing(self) -> int:
        return int((~self.present).sum())

    @property
    def n_present(self) -> int:
        return int(self.present.sum())


def map_genes(
    model_genes: Sequence[str],
    data_genes: Sequence[str] | None,
    *,
    where: str,
    n_genes: int | None = None,
    logger: logging.Logger | None = None,
) -> GeneMap:
    """Map ``data_genes`` (the dataset's panel, in its column order) onto ``model_genes``.

    Without ``data_genes`` the data is taken to be in the model's order, which ``n_genes`` (the
    dataset's column count) must then agree with. ``where`` names the model in messages;
    the count of zero-filled genes is logged at INFO on ``logger`` (the calling tower's).

    Raises
    ------
    ConfigError
        No gene names and a column count that differs from the model's, or no gene in common.
    """
    model_genes = [str(g) for g in model_genes]
    if data_genes is None:
        if n_genes is not None and n_genes != len(model_genes):
            raise ConfigError(
                f"{where}: the model has {len(model_genes)} genes, the data {n_genes}; "
                f"give the dataset's gene names (genes=...) to map them"
            )
        data_genes = model_genes
    position = {str(g): i for i, g in enumerate(data_genes)}
    source = torch.tensor([position.get(g, -1) for g in model_genes], dtype=torch.long)
    present = source >= 0
    if not bool(present.any()):
        raise ConfigError(
            f"{where}: none of its {len(model_genes)} genes is in the dataset "
            f"(model: {model_genes[:3]}..., data: {list(data_genes)[:3]}...); are both gene "
            f"symbols (or both Ensembl ids)?"
        )
    out = GeneMap(source=source.clamp(min=0), present=present)
    (logger or log).info(
        "%s: %d of the model's %d genes are in the data; %d zero-filled",
        where, out.n_present, len(model_genes), out.n_missing,
    )  # fmt: skip
    return out


def to_model_genes(
    expression: torch.Tensor,
    source: torch.Tensor,
    present: torch.Tensor,
    gene_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, dataset genes)`` -> ``(B, model genes)``: unmeasured (masked) and missing genes 0."""
    if gene_mask is not None:
        expression = expression * gene_mask.to(expression.dtype)
    x = expression[:, source]
    return x * present.to(x.dtype)
