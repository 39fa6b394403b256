"""The paired store's own checks: load_paired refuses files that do not match the manifest."""

from __future__ import annotations

import json
import os
import signal
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from histoxmodal import keys
from histoxmodal.data.store import check_paired, file_sha256, load_paired
from histoxmodal.errors import ConfigError, DataError


@contextmanager
def deadline(seconds: float):
    """Fail (``TimeoutError``) instead of hanging when the block runs longer than ``seconds``:
    SIGALRM interrupts a blocking ``open`` of a FIFO or an endless read of ``/dev/zero``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it would hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def small_paired(data_dir, tmp_path):
    """A 49-spot paired dataset with 16 px patches, built by the real build (squidpy's
    test_data.h5ad holds log-normalised X, so whole-number counts derived from it are added
    as layers['counts'], which the reader takes)."""
    import anndata as ad

    from histoxmodal.data.recipes import find_samples, load_recipe
    from histoxmodal.workflows.build import PairedConfig, build_paired

    vis = data_dir / "visium" / "squidpy"
    a = ad.read_h5ad(vis / "test_data.h5ad")
    a.layers["counts"] = np.rint(np.expm1(a.X.toarray()) * 3).astype(np.int32)
    (tmp_path / "src").mkdir()
    a.write_h5ad(tmp_path / "src" / "test_data.h5ad")
    refs = find_samples(
        load_recipe("h5ad"), [tmp_path / "src" / "test_data.h5ad"], image=vis / "test_img.jpg"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_paired(refs, tmp_path / "ds", PairedConfig(patch_px=16))
    return tmp_path / "ds"


def _edit_manifest(path, **changes):
    f = path / keys.PAIRED_MANIFEST_FILE
    m = json.loads(f.read_text())
    for k, v in changes.items():
        if k == "patch_px":
            m["params"]["patch_px"] = v
        else:
            m[k] = v
    f.write_text(json.dumps(m))


def test_manifest_records_sizes_and_hashes(small_paired):
    m = json.loads((small_paired / keys.PAIRED_MANIFEST_FILE).read_text())
    for name in (keys.PAIRED_ADATA_FILE, keys.PAIRED_PATCHES_FILE):
        assert m["files"][name]["size"] == (small_paired / name).stat().st_size
        assert len(m["files"][name]["sha256"]) == 64
    assert check_paired(small_paired)["n_spots"] == 49


def test_size_mismatch_names_the_file(small_paired):
    with open(small_paired / keys.PAIRED_PATCHES_FILE, "ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(DataError, match=r"patches\.h5: .*bytes.*rebuild"):
        load_paired(small_paired)


def test_same_size_other_content_is_caught_by_hash(small_paired):
    f = small_paired / keys.PAIRED_PATCHES_FILE
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF  # a patch pixel: the file still opens, with one value changed
    m_time = (small_paired / keys.PAIRED_MANIFEST_FILE).stat().st_mtime_ns
    f.write_bytes(bytes(data))
    os.utime(f, ns=(m_time - 10**9, m_time - 10**9))  # older than the manifest: not hashed
    load_paired(small_paired)
    with pytest.raises(DataError, match=r"patches\.h5: content differs.*rebuild"):
        load_paired(small_paired, verify=True)
    os.utime(f, ns=(m_time + 10**9, m_time + 10**9))  # newer than the manifest: hashed
    with pytest.raises(DataError, match=r"patches\.h5: content differs"):
        load_paired(small_paired)


def test_shapes_are_checked_against_the_manifest(small_paired):
    _edit_manifest(small_paired, n_spots=50)
    with pytest.raises(DataError, match=r"adata\.h5ad: 49 spots, the manifest records 50"):
        load_paired(small_paired)
    _edit_manifest(small_paired, n_spots=49, patch_px=32)
    with pytest.raises(DataError, match=r"patches\.h5: patches of shape \(49, 16, 16, 3\)"):
        load_paired(small_paired)


def test_missing_file_and_incomplete_build(small_paired):
    (small_paired / keys.PAIRED_ADATA_FILE).unlink()
    with pytest.raises(DataError, match=r"adata\.h5ad: missing.*rebuild"):
        load_paired(small_paired)
    _edit_manifest(small_paired, status="building")
    with pytest.raises(DataError, match="did not complete"):
        load_paired(small_paired)


def test_only_regular_files_are_hashed(tmp_path):
    import hashlib

    data = os.urandom(100_000)
    (tmp_path / "file").write_bytes(data)
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert file_sha256(tmp_path / "link") == hashlib.sha256(data).hexdigest()
    (tmp_path / "zero").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to_fifo").symlink_to(tmp_path / "fifo")
    cases = {
        "zero": r"zero \(a symlink to /dev/zero\): a character device, not a regular file",
        "fifo": r"fifo: a FIFO \(named pipe\), not a regular file",
        "to_fifo": r"to_fifo \(a symlink to .*fifo\): a FIFO",
    }
    for name, message in cases.items():
        # without the check, hashing /dev/zero never ends and opening a FIFO waits for a writer
        with deadline(5), pytest.raises(ConfigError, match=message):
            file_sha256(tmp_path / name)
