"""Batch-aware sampling: training batches drawn from one batch group, or balanced across groups."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from histoxmodal.data.dataset import EpochIndex


class GroupBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset positions.

    ``mode="by_batch"``: every training batch comes from a single group (the loss then contrasts
    spots of one sample/batch, so batch identity cannot separate positives from negatives).
    ``mode="balanced"``: every training batch holds (about) the same number of spots of each group.
    One group for every row is a plain shuffle into full batches.

    The order is a function of ``(seed, epoch)`` alone (Lightning calls :meth:`set_epoch` before
    each epoch), and the positions are :class:`~histoxmodal.data.dataset.EpochIndex` carrying the
    epoch, so a resumed run draws the batches and augmentations of an uninterrupted one.
    """

    def __init__(
        self,
        groups: np.ndarray,
        batch_size: int,
        *,
        mode: str = "by_batch",
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.groups = np.asarray(groups)
        self.batch_size, self.mode, self.seed, self.drop_last = batch_size, mode, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        uniq = np.unique(self.groups)
        members = {g: rng.permutation(np.flatnonzero(self.groups == g)) for g in uniq}
        out: list[list[int]] = []
        if self.mode == "by_batch":
            for idx in members.values():
                for i in range(0, len(idx), self.batch_size):
                    chunk = idx[i : i + self.batch_size]
                    if len(chunk) == self.batch_size or not self.drop_last:
                        out.append(chunk.tolist())
        else:
            per = max(1, self.batch_size // len(uniq))
            n = min(len(v) for v in members.values()) // per
            for k in range(n):
                out.append([int(i) for g in uniq for i in members[g][k * per : (k + 1) * per]])
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        batches = [[EpochIndex(i, epoch) for i in b] for b in self._batches()]
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())
