"""One embedding loop for every trained module: spatial (image + gene) and cohort (one per
modality). The module says what a batch embeds to (``embed_batch``); the loop batches a dataset
through a ``DataLoader`` (worker processes decode while the model runs) on the module's device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


@torch.no_grad()
def embed_dataset(
    module,
    dataset,
    *,
    batch_size: int = 128,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    desc: str = "embed",
) -> dict[str, np.ndarray]:
    """Embeddings of every item of ``dataset``, in order.

    Parameters
    ----------
    module
        A trained module with ``embed_batch(batch) -> {name: (B, d) tensor}``
        (:class:`~histoxmodal.training.module.ContrastiveModule`: ``image``, ``gene``;
        :class:`~histoxmodal.training.multimodal.MultimodalModule`: one per modality and
        ``present``).
    dataset
        A map-style torch dataset.

    Returns
    -------
    dict
        ``{name: (len(dataset), d)}`` numpy arrays (float32, or bool for masks).
    """
    from torch.utils.data import DataLoader

    from histoxmodal.progress import progress

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
    )
    module.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for batch in progress(loader, total=len(loader), desc=desc, unit="batch"):
        for name, z in module.embed_batch(batch).items():
            z = z.detach().cpu()
            z = z if z.dtype == torch.bool else z.float()
            parts.setdefault(name, []).append(z.numpy())
    return {name: np.concatenate(v) for name, v in parts.items()}
