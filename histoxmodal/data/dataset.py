"""A torch ``Dataset`` over a paired dataset: image tensor, normalized expression, ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from histoxmodal import keys
from histoxmodal.data.normalize import check_normalization, library_sizes, normalize_counts
from histoxmodal.data.stain import StainNormalizer
from histoxmodal.data.transforms import Augment
from histoxmodal.errors import ConfigError, DataError

#: ImageNet statistics, the default of timm/torchvision backbones
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EpochIndex(int):
    """A dataset position that carries the training epoch it is drawn for.

    The training batch sampler (:class:`histoxmodal.training.sampler.GroupBatchSampler`) yields
    these, so a dataset draws an item's augmentation from a generator keyed by
    ``(seed, epoch, row)``: the same whatever process, worker or order reads it, which is what
    lets a resumed run draw the augmentations of an uninterrupted one.
    """

    epoch: int

    def __new__(cls, value: int, epoch: int) -> EpochIndex:
        obj = super().__new__(cls, value)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self):  # DataLoader workers receive indices pickled
        return (EpochIndex, (int(self), self.epoch))


def item_rng(seed: int, i: object, row: int) -> np.random.Generator | None:
    """The generator of item ``row`` when ``i`` is an :class:`EpochIndex`, else ``None``."""
    epoch = getattr(i, "epoch", None)
    if epoch is None:
        return None
    return np.random.default_rng([int(seed) % (2**32), epoch, int(row)])


def normalize_images(
    images: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 -> float32 normalized, on the images' device."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - m) / s


class PairedDataset(Dataset):
    """Spots of a paired dataset for training (a ``torch.utils.data.Dataset``).

    Each item is a dict:

    - ``image``: ``(3, H, W)`` uint8 by default: normalize on the device with
      :func:`normalize_images` and the encoder's own mean/std (4x less data through the loader,
      twice the throughput); ``normalize_image=True`` gives float32 normalized with
      ``mean``/``std``;
    - ``expression``: ``(n_genes,)`` float32, ``log1p`` of counts per 10,000 by default;
    - ``gene_mask``: ``(n_genes,)`` bool, False for genes the spot's sample did not measure;
    - ``batch``, ``patient``, ``sample``: int64 codes (names in :attr:`categories`);
    - ``index``: the row in the dataset.

    Parameters
    ----------
    path
        Folder written by ``histoxmodal build``.
    indices
        Rows to use (e.g. a split fold's ``train(n)``); default all.
    genes
        Gene names to use, in that order; default the dataset's panel.
    normalization
        ``log1p_cp10k`` (library-size normalized, log1p), ``log1p`` or ``counts``.
    augment
        Augmentations (:class:`~histoxmodal.data.transforms.Augment`); ``None`` for none.
    stain
        A fitted :class:`~histoxmodal.data.stain.StainNormalizer` applied to each patch before
        the augmentations (a run's ``stain.json``); ``None`` for raw colours. Its fallback
        counts are those of the process that reads the items.
    seed
        Base seed; each DataLoader worker derives its own stream from it.
    categories
        Names whose order fixes the codes of ``batch``, ``patient`` or ``sample`` (a run's own
        batches, so another dataset's sections get the codes the towers were built with);
        names not listed get the codes after them, in sorted order. Default: this dataset's
        sorted names.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        indices: np.ndarray | None = None,
        genes: list[str] | None = None,
        normalization: str = "log1p_cp10k",
        augment: Augment | None = None,
        stain: StainNormalizer | None = None,
        normalize_image: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        categories: dict[str, list[str]] | None = None,
    ) -> None:
        import scipy.sparse as sp

        from histoxmodal.data.store import load_paired

        check_normalization(normalization)
        self.path = Path(path)
        adata, patches = load_paired(self.path)
        self._patches_file = self.path / keys.PAIRED_PATCHES_FILE
        self._patch_shape = patches.shape
        del patches  # reopened lazily in each worker (a memmap would be pickled as a copy)
        self._patches = None
        self._pid = None
        if genes is not None:
            missing = [g for g in genes if g not in adata.var_names]
            if missing:
                raise ConfigError(
                    f"{len(missing)} requested genes are not in the dataset "
                    f"(e.g. {missing[:5]}); see adata.var_names"
                )
        # library sizes over every gene, then the panel: the same matrix evaluation reads
        lib = library_sizes(adata.X)
        if genes is not None:
            adata = adata[:, genes]
        self.genes = list(adata.var_names)
        self.indices = np.arange(adata.n_obs) if indices is None else np.asarray(indices, np.int64)
        raw = sp.csr_matrix(adata.X)
        X = sp.csr_matrix(normalize_counts(raw, normalization, library_size=lib))
        self._indptr, self._cols, self._vals = X.indptr, X.indices, X.data.astype(np.float32)
        self._thin = augment is not None and augment.depth_min < 1.0
        if self._thin:  # depth augmentation re-normalizes thinned raw counts per item
            raw.sort_indices()
            X.sort_indices()
            if not np.array_equal(raw.indices, X.indices):
                raise DataError(f"{self.path}: counts with explicit zeros; rebuild the dataset")
            self._raw, self._lib = raw.data.astype(np.float32), np.asarray(lib, np.float64)
            self._indptr, self._cols = X.indptr, X.indices
            self._vals = X.data.astype(np.float32)
        self.normalization = normalization
        self.categories: dict[str, list[str]] = {}
        self._codes: dict[str, np.ndarray] = {}
        for key in (keys.OBS_BATCH, keys.OBS_PATIENT, keys.OBS_SAMPLE):
            names = adata.obs[key].astype(str).to_numpy()
            known = [str(c) for c in (categories or {}).get(key, [])]
            order = known + sorted(set(names) - set(known))
            cat = pd.Categorical(names, categories=order)
            self.categories[key] = order
            self._codes[key] = np.asarray(cat.codes, np.int64)
        presence = adata.varm.get("sample_presence")
        samples = self.categories[keys.OBS_SAMPLE]
        if presence is not None:  # names of a run's own list absent here have no rows
            full = np.ones(len(self.genes), bool)
            self._gene_mask = np.stack(
                [np.asarray(presence[s], bool) if s in presence else full for s in samples]
            )
        else:
            self._gene_mask = np.ones((len(samples), len(self.genes)), bool)
        self.augment = augment
        self.stain = stain
        self.normalize_image = normalize_image
        self._mean = np.asarray(mean, np.float32) * 255.0
        self._std = np.asarray(std, np.float32) * 255.0
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def _worker_state(self) -> None:
        if self._pid == os.getpid():
            return
        from histoxmodal.data.store import open_patches

        self._patches = open_patches(self._patches_file)
        wid = torch.utils.data.get_worker_info()
        stream = torch.initial_seed() if wid is not None else self.seed
        self._rng = np.random.default_rng([self.seed, stream % (2**32)])
        self._pid = os.getpid()

    def expression(self, row: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The normalized expression of dataset row ``row`` (depth-thinned first when the
        augmentation asks for it, :meth:`Augment.thin`, with ``rng`` or the dataset's stream)."""
        out = np.zeros(len(self.genes), np.float32)
        s, e = self._indptr[row], self._indptr[row + 1]
        if self._thin:
            self._worker_state()
            counts, f = self.augment.thin(self._raw[s:e], rng or self._rng)
            lib = np.array([max(self._lib[row] * f, 1.0)])
            vals = normalize_counts(counts[None].astype(np.float64), self.normalization,
                                    library_size=lib)[0]  # fmt: skip
            out[self._cols[s:e]] = vals
            return out
        out[self._cols[s:e]] = self._vals[s:e]
        return out

    def codes(self, key: str) -> np.ndarray:
        """Integer codes of ``obs[key]`` for every row of the dataset (order of
        :attr:`categories`)."""
        return self._codes[key]

    @staticmethod
    def codes_of(path: str | Path, key: str) -> np.ndarray:
        """Integer codes of ``obs[key]`` for every row of a dataset (category order)."""
        import anndata as ad

        obs = ad.read_h5ad(Path(path) / keys.PAIRED_ADATA_FILE, backed="r").obs
        return obs[key].astype("category").cat.codes.to_numpy().astype(np.int64)

    def item_without_image(self, i: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Item ``i`` without reading its patch (for cached image features)."""
        row = int(self.indices[i])
        sample = self._codes[keys.OBS_SAMPLE][row]
        rng = rng or item_rng(self.seed, i, row)
        return {
            keys.BATCH_EXPRESSION: torch.from_numpy(self.expression(row, rng)),
            keys.BATCH_GENE_MASK: torch.from_numpy(self._gene_mask[sample]),
            keys.OBS_BATCH: torch.tensor(self._codes[keys.OBS_BATCH][row]),
            keys.OBS_PATIENT: torch.tensor(self._codes[keys.OBS_PATIENT][row]),
            keys.OBS_SAMPLE: torch.tensor(sample),
            keys.BATCH_INDEX: torch.tensor(row),
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._worker_state()
        row = int(self.indices[i])
        img = self._patches[row]
        if self.stain is not None:
            img = self.stain.apply(img)
        rng = item_rng(self.seed, i, row)
        img = self.augment(img, rng or self._rng) if self.augment else np.ascontiguousarray(img)
        t = torch.from_numpy(np.stack(cv2.split(img)))  # (3, H, W); cv2 splits planes fast
        if self.normalize_image:
            t = (
                t.float()
                .sub_(torch.from_numpy(self._mean)[:, None, None])
                .div_(torch.from_numpy(self._std)[:, None, None])
            )
        return {keys.BATCH_IMAGE: t, **self.item_without_image(i, rng)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_patches"], state["_pid"], state["_rng"] = None, None, None
        return state
