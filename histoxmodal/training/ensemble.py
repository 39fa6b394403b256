"""A deep ensemble of contrastive models, read as one.

``model.ensemble: n`` trains ``n`` image + gene tower pairs that differ only in their seed
(initialisation, batch order, augmentations). Each member has its own joint space, so their
embeddings cannot be averaged; they are concatenated instead, each member's L2-normalised
embedding scaled by ``1/sqrt(n)``. An inner product in the ensemble's space is then the mean
of the members' cosine similarities (retrieval ranks by the members' mean similarity), the
ensemble's embeddings are unit vectors like a single member's, and every head, metric and slide
map downstream reads them unchanged. Lightning trains one module at a time, so the members are
trained one after another (:func:`histoxmodal.workflows.train.train`) and joined here; no
library offers this join for two-tower models, hence this small module.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from histoxmodal.training.module import ContrastiveModule

__all__ = ["EnsembleModule"]


class EnsembleModule(nn.Module):
    """``n`` trained :class:`~histoxmodal.training.module.ContrastiveModule` read as one.

    Its state dict holds every member's under ``members.<i>.``, so a run saves and loads it
    like a single module. It offers what embedding and the slide maps call:
    :meth:`embed_batch`, :meth:`embed_images` and :meth:`adapt_to_dataset`.
    """

    def __init__(self, members: list[ContrastiveModule]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(len(self.members))

    def _join(self, outs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.cat([o[k] for o in outs], dim=1) * self.scale for k in outs[0]}

    def embed_batch(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The members' :meth:`~ContrastiveModule.embed_batch` outputs, concatenated per
        modality and scaled by ``1/sqrt(n)``: ``(B, n * embed_dim)`` unit vectors."""
        return self._join([m.embed_batch(b) for m in self.members])

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> ``(B, n * embed_dim)`` unit vectors."""
        return torch.cat([m.embed_images(images) for m in self.members], dim=1) * self.scale

    def adapt_to_dataset(self, dataset) -> list[int]:
        """AdaBN for every member (:meth:`ContrastiveModule.adapt_to_dataset`); returns the
        batch ids adapted (the same for every member)."""
        ids: list[int] = []
        for m in self.members:
            ids = m.adapt_to_dataset(dataset)
        return ids
