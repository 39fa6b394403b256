"""Embedding cache: a frozen image tower runs once per patch (and per flip/rotation), and
training reuses its features, so an epoch costs the heads and the gene tower only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from histoxmodal import keys
from histoxmodal.data.dataset import item_rng
from histoxmodal.fileutil import write_json_atomic

#: the 8 symmetries of a square: (k quarter turns, flip)
DIHEDRAL = [(k, f) for k in range(4) for f in (False, True)]


def _views(x: torch.Tensor, n_views: int) -> list[torch.Tensor]:
    out = []
    for k, flip in DIHEDRAL[:n_views]:
        v = torch.rot90(x, k, dims=(-2, -1))
        out.append(torch.flip(v, dims=(-1,)) if flip else v)
    return out


class _Views(torch.nn.Module):
    """The module's frozen-tower features of every view of a batch: ``{"views": (B, V, d)}``."""

    def __init__(self, module, n_views: int) -> None:
        super().__init__()
        self.module, self.n_views = module, n_views

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch[keys.BATCH_IMAGE]
        return {
            "views": torch.stack(
                [self.module.image_features(v) for v in _views(x, self.n_views)], 1
            )
        }


def image_features(
    module,
    dataset_dir: str | Path,
    *,
    n_views: int = 8,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    stain=None,
) -> np.ndarray:
    """Features ``(n_spots, n_views, dim)`` of the frozen image tower for every spot.

    ``stain`` (a fitted :class:`~histoxmodal.data.stain.StainNormalizer`) normalises each patch
    first; its checksum is part of the cache key.

    The patches are read in slices of ``batch_size`` and embedded by the package's one loop
    (:func:`~histoxmodal.training.embedding.embed_batches`) on ``device`` with ``precision``.
    With ``cache_dir``, features are stored as ``.npy`` under a key made of the tower's weights
    checksum, its name and preprocessing, the number of views and the dataset's ``patches.h5``
    checksum, and reused when the key matches.
    """
    from histoxmodal.data.store import open_patches
    from histoxmodal.training.embedding import embed_batches

    dataset_dir = Path(dataset_dir)
    manifest = json.loads((dataset_dir / keys.PAIRED_MANIFEST_FILE).read_text())
    ident = {
        "encoder": module.image.name,
        "weights": module.image.weights_sha256,
        "preprocess": repr(module.image.preprocess),
        "views": n_views,
        "patches": manifest.get("files", {}).get(keys.PAIRED_PATCHES_FILE)
        or str((dataset_dir / keys.PAIRED_PATCHES_FILE).stat().st_mtime_ns),
    }
    if stain is not None:  # features of raw patches stay valid for runs without normalisation
        ident["stain"] = stain.digest
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    if cache_dir is not None:
        f = Path(cache_dir) / f"image_features_{key}.npy"
        if f.exists():
            return np.load(f, mmap_mode="r")
    patches = open_patches(dataset_dir / keys.PAIRED_PATCHES_FILE)
    starts = range(0, len(patches), batch_size)

    def read(i: int) -> np.ndarray:
        block = np.array(patches[i : i + batch_size])
        return block if stain is None else stain.apply_many(block)

    batches = ({keys.BATCH_IMAGE: torch.from_numpy(read(i)).permute(0, 3, 1, 2)} for i in starts)
    out = embed_batches(
        _Views(module, n_views),
        batches,
        device=device,
        precision=precision,
        total=len(starts),
        desc="caching",
    )
    dim = module.image.embed_dim
    feats = out.get("views", np.empty((0, n_views, dim), np.float32)).astype(np.float32)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(cache_dir) / f".image_features_{key}.partial.npy"
        np.save(tmp, feats)
        tmp.replace(f)
        write_json_atomic(Path(cache_dir) / f"image_features_{key}.json", ident)
    return feats


class CachedFeatures(torch.utils.data.Dataset):
    """Wraps a :class:`~histoxmodal.data.dataset.PairedDataset`: items carry
    ``image_features`` (a random cached view when training) instead of the image."""

    def __init__(
        self, base, features: np.ndarray, *, random_view: bool = True, seed: int = 0
    ) -> None:
        self.base, self.features = base, features
        self.random_view = random_view
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        row = int(self.base.indices[i])
        n_views = self.features.shape[1]
        rng = item_rng(self.base.seed, i, row)
        if not self.random_view:
            v = 0
        elif rng is not None:  # a training position: the view is keyed by (seed, epoch, row)
            v = int(rng.integers(n_views))
        else:  # torch's generator: DataLoader seeds it differently in every worker
            v = int(torch.randint(n_views, ()))
        item = self.base.item_without_image(i, rng)
        item[keys.BATCH_IMAGE_FEATURES] = torch.from_numpy(np.array(self.features[row, v]))
        return item
