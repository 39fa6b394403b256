"""The paired dataset store on disk: one image patch per spot, with its expression.

A dataset folder (``DIR``) holds:

- ``adata.h5ad``: expression (raw counts) and all metadata; row i is spot i.
- ``patches.h5``: dataset ``patches`` ``(n_spots, patch_px, patch_px, 3)`` uint8, stored
  contiguously so :func:`load_paired` memory-maps it: row i is spot i's image, read by index
  without loading the rest.
- ``manifest.json``: sources with content hashes, parameters, per-sample counts, skipped samples
  with reasons, QC, gene panel, output and split hashes. Written last: its ``status: complete``
  marks a finished build.
- ``splits/{patient,sample,random}.json``: see :mod:`histoxmodal.data.splits`.

:func:`histoxmodal.workflows.build.build_paired` writes it; this module reads and writes its
files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError


def file_sha256(path: Path, *, full_limit: int = 1 << 30) -> str:
    """SHA-256 of a file; beyond ``full_limit`` bytes, of its size and first and last 64 MiB
    (prefixed ``sampled:``), so multi-gigabyte slides hash in a second."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= full_limit:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(fh.read(64 << 20))
        fh.seek(-(64 << 20), os.SEEK_END)
        h.update(fh.read())
    return "sampled:" + h.hexdigest()


def write_store(out: Path, adata, patch_blocks, *, patch_px: int, patch_um: float) -> None:
    """Write ``adata.h5ad`` and ``patches.h5`` (contiguous, memory-mappable) into ``out``.

    ``patch_blocks`` yields ``(b, patch_px, patch_px, 3)`` uint8 arrays in row order. Both files
    are written under temporary names and renamed into place.
    """
    import h5py

    n = adata.n_obs
    tmp_h5ad = out / f".{keys.PAIRED_ADATA_FILE}.partial"
    adata.write_h5ad(tmp_h5ad)
    tmp_patches = out / f".{keys.PAIRED_PATCHES_FILE}.partial"
    with h5py.File(tmp_patches, "w") as f:
        # contiguous (no chunks, no compression) so the dataset can be memory-mapped
        d = f.create_dataset("patches", shape=(n, patch_px, patch_px, 3), dtype=np.uint8)
        d.attrs["patch_um"] = patch_um
        d.attrs["patch_px"] = patch_px
        d.attrs["mpp"] = patch_um / patch_px
        f.create_dataset("obs_names", data=np.asarray(adata.obs_names, dtype="S"))
        i = 0
        for block in patch_blocks:
            d[i : i + len(block)] = block
            i += len(block)
    if i != n:
        raise ValueError(f"wrote {i} patches for {n} spots")
    os.replace(tmp_h5ad, out / keys.PAIRED_ADATA_FILE)
    os.replace(tmp_patches, out / keys.PAIRED_PATCHES_FILE)


def open_patches(path: str | Path) -> np.ndarray:
    """Memory-map the ``patches`` dataset of a ``patches.h5``: ``(n, px, px, 3)`` uint8, read-only.

    Falls back to the h5py dataset when the file's layout cannot be mapped (chunked).
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        d = f["patches"]
        offset = d.id.get_offset()
        shape, dtype = d.shape, d.dtype
    if offset is None:  # empty or chunked dataset
        if 0 in shape:
            return np.zeros(shape, dtype)
        return h5py.File(path, "r")["patches"]  # type: ignore[return-value]
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def load_paired(path: str | Path):
    """Open a paired dataset built by ``histoxmodal build``.

    Returns
    -------
    adata
        ``anndata.AnnData``; row i is spot i.
    patches
        ``(n_spots, patch_px, patch_px, 3)`` uint8 array-like, memory-mapped; ``patches[i]`` is
        spot i's image.
    """
    import anndata as ad

    path = Path(path)
    manifest = path / keys.PAIRED_MANIFEST_FILE
    if not manifest.exists():
        raise FileNotFoundError(
            f"{path}: no {keys.PAIRED_MANIFEST_FILE}; build the dataset with "
            f"`histoxmodal build` (an interrupted build has no manifest)"
        )
    m = json.loads(manifest.read_text(encoding="utf-8"))
    if m.get("status") != "complete":
        raise ConfigError(f"{path}: the build did not complete; run `histoxmodal build` again")
    adata = ad.read_h5ad(path / keys.PAIRED_ADATA_FILE)
    patches = open_patches(path / keys.PAIRED_PATCHES_FILE)
    if len(patches) != adata.n_obs:
        raise ConfigError(f"{path}: {len(patches)} patches for {adata.n_obs} spots; rebuild")
    return adata, patches
