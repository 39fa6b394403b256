"""Embedding cache: a frozen image tower runs once per patch (and per flip/rotation), and
training reuses its features, so an epoch costs the heads and the gene tower only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from histoxmodal import keys
from histoxmodal.fileutil import write_json_atomic
from histoxmodal.progress import progress

#: the 8 symmetries of a square: (k quarter turns, flip)
DIHEDRAL = [(k, f) for k in range(4) for f in (False, True)]


def _views(x: torch.Tensor, n_views: int) -> list[torch.Tensor]:
    out = []
    for k, flip in DIHEDRAL[:n_views]:
        v = torch.rot90(x, k, dims=(-2, -1))
        out.append(torch.flip(v, dims=(-1,)) if flip else v)
    return out


@torch.no_grad()
def image_features(
    module,
    dataset_dir: str | Path,
    *,
    n_views: int = 8,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Features ``(n_spots, n_views, dim)`` of the frozen image tower for every spot.

    With ``cache_dir``, features are stored as ``.npy`` under a key made of the tower's weights
    checksum, its name and preprocessing, the number of views and the dataset's ``patches.h5``
    checksum, and reused when the key matches.
    """
    from histoxmodal.data.store import open_patches

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
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    if cache_dir is not None:
        f = Path(cache_dir) / f"image_features_{key}.npy"
        if f.exists():
            return np.load(f, mmap_mode="r")
    patches = open_patches(dataset_dir / keys.PAIRED_PATCHES_FILE)
    image = module.image.eval()
    feats = np.empty((len(patches), n_views, image.embed_dim), np.float32)
    starts = range(0, len(patches), batch_size)
    for i in progress(starts, total=len(starts), desc="caching", unit="batch"):
        x = torch.from_numpy(np.array(patches[i : i + batch_size])).permute(0, 3, 1, 2)
        for v, view in enumerate(_views(x, n_views)):
            feats[i : i + len(x), v] = module.image_features(view).numpy()
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
        # torch's generator: DataLoader seeds it differently in every worker
        v = int(torch.randint(n_views, ())) if self.random_view else 0
        item = self.base.item_without_image(i)
        item[keys.BATCH_IMAGE_FEATURES] = torch.from_numpy(np.array(self.features[row, v]))
        return item
