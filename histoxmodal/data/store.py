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
import stat
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, DataError


def file_sha256(path: Path, *, full_limit: int = 1 << 30) -> str:
    """SHA-256 of a regular file; beyond ``full_limit`` bytes, of its size and first and last
    64 MiB (prefixed ``sampled:``), so multi-gigabyte slides hash in a second.

    Only regular files are hashed (symlinks are followed), and never more than the size the
    file states: a device (``/dev/zero``), a FIFO or a socket would be read forever or block.

    Raises
    ------
    ConfigError
        ``path`` (or what its symlinks lead to) is not a regular file.
    """
    path = Path(path)
    st = os.stat(path)  # follows symlinks
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(_not_a_regular_file(path, st.st_mode))
    size = st.st_size
    h = hashlib.sha256()
    # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open() does not wait for a
    # writer; it is refused below, after fstat, before anything is read
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(_not_a_regular_file(path, st.st_mode))
        size = min(size, st.st_size)
        if size <= full_limit:
            left = size
            while left > 0:
                block = fh.read(min(left, 1 << 22))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(fh.read(64 << 20))
        fh.seek(max(0, size - (64 << 20)))
        h.update(fh.read(64 << 20))
    return "sampled:" + h.hexdigest()


def _not_a_regular_file(path: Path, mode: int) -> str:
    """Why ``path``, whose ``st_mode`` is ``mode``, is refused as an input file."""
    kinds = (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    via = f" (a symlink to {os.path.realpath(path)})" if Path(path).is_symlink() else ""
    return (
        f"{path}{via}: {kind}, not a regular file; it cannot be hashed or read as data. "
        f"Point to the real file (a copy or a symlink to a regular file)"
    )


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


def file_record(path: Path) -> dict[str, object]:
    """What a manifest records of an output file: ``{"sha256": ..., "size": bytes}``."""
    return {"sha256": file_sha256(path), "size": path.stat().st_size}


def _damaged(path: Path, what: str) -> DataError:
    return DataError(
        f"{path}: {what}; the dataset was changed or only partly rewritten after it was "
        f"built; rebuild it (`histoxmodal build ... --overwrite`)"
    )


def check_files(path: str | Path, manifest: dict, *, verify: bool = False) -> None:
    """Check the files of the dataset in ``path`` against its ``manifest``.

    Sizes always (cheap); content hashes when ``verify`` or when a file is newer than the
    manifest, which is written last and so is normally the newest file.

    Raises
    ------
    ConfigError
        Naming the first file that is missing or differs, and saying to rebuild.
    """
    path = Path(path)
    manifest_mtime = (path / keys.PAIRED_MANIFEST_FILE).stat().st_mtime_ns
    for name, rec in (manifest.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise _damaged(f, "missing")
        # older manifests recorded the hash alone
        rec = {"sha256": rec} if isinstance(rec, str) else rec
        st = f.stat()
        if rec.get("size") is not None and st.st_size != rec["size"]:
            raise _damaged(f, f"{st.st_size} bytes, the manifest records {rec['size']}")
        hash_it = verify or st.st_mtime_ns > manifest_mtime
        if hash_it and rec.get("sha256") and file_sha256(f) != rec["sha256"]:
            raise _damaged(f, "content differs from the sha256 in the manifest")


def _check_shapes(path: Path, m: dict, n_obs: int, n_vars: int, patch_shape: tuple) -> None:
    """``adata`` ``(n_obs, n_vars)`` and ``patches`` ``patch_shape`` against the manifest."""
    n, px = m.get("n_spots"), (m.get("params") or {}).get("patch_px")
    adata_file = path / keys.PAIRED_ADATA_FILE
    if n is not None and n_obs != n:
        raise _damaged(adata_file, f"{n_obs} spots, the manifest records {n}")
    if m.get("n_genes") is not None and n_vars != m["n_genes"]:
        raise _damaged(adata_file, f"{n_vars} genes, the manifest records {m['n_genes']}")
    want = (n_obs, px, px, 3) if px is not None else (n_obs, *patch_shape[1:])
    if tuple(patch_shape) != want:
        raise _damaged(
            path / keys.PAIRED_PATCHES_FILE,
            f"patches of shape {tuple(patch_shape)}, expected {want} "
            f"({n_obs} spots, patch_px={px} in the manifest)",
        )


def read_manifest(path: str | Path) -> dict:
    """The manifest of the paired dataset in ``path``, if its build completed."""
    path = Path(path)
    manifest = path / keys.PAIRED_MANIFEST_FILE
    if not manifest.exists():
        raise FileNotFoundError(
            f"{path}: no {keys.PAIRED_MANIFEST_FILE}; build the dataset with "
            f"`histoxmodal build` (an interrupted build has no manifest)"
        )
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{manifest}: not valid JSON ({exc}); rebuild the dataset") from exc
    if not isinstance(m, dict) or m.get("status") != "complete":
        raise DataError(
            f"{path}: the build did not complete (it was interrupted or is still running); "
            f"run `histoxmodal build` again"
        )
    return m


def load_paired(path: str | Path, *, verify: bool = False):
    """Open a paired dataset built by ``histoxmodal build``.

    The files are checked against the manifest first: sizes and the array shapes (``n_spots``,
    ``patch_px``) always, content hashes when ``verify`` is true or a file is newer than the
    manifest. A mismatch raises a :class:`~histoxmodal.errors.DataError` naming the file.

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
    m = read_manifest(path)
    check_files(path, m, verify=verify)
    f = path / keys.PAIRED_ADATA_FILE
    try:
        adata = ad.read_h5ad(f)
        f = path / keys.PAIRED_PATCHES_FILE
        patches = open_patches(f)
    except (OSError, KeyError) as exc:
        raise _damaged(f, f"unreadable ({type(exc).__name__}: {exc})") from exc
    _check_shapes(path, m, adata.n_obs, adata.n_vars, patches.shape)
    return adata, patches


def check_paired(path: str | Path, *, verify: bool = False) -> dict:
    """:func:`load_paired`'s checks without keeping the data; returns the manifest."""
    import h5py

    path = Path(path)
    m = read_manifest(path)
    check_files(path, m, verify=verify)
    name = path / keys.PAIRED_ADATA_FILE
    try:
        with h5py.File(name, "r") as f:
            n_obs = len(f["obs"][f["obs"].attrs.get("_index", "_index")])
            n_vars = len(f["var"][f["var"].attrs.get("_index", "_index")])
        name = path / keys.PAIRED_PATCHES_FILE
        with h5py.File(name, "r") as f:
            shape = f["patches"].shape
    except (OSError, KeyError) as exc:
        raise _damaged(name, f"unreadable ({type(exc).__name__}: {exc})") from exc
    _check_shapes(path, m, n_obs, n_vars, shape)
    return m
