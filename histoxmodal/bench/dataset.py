"""``histoxmodal bench dataset --data DIR``: training-loader throughput of a paired dataset.

Baseline, in the same process: reading the same patches straight from the memory-mapped store
(no augmentation, no tensors). Then :class:`~histoxmodal.data.dataset.PairedDataset` through a
``DataLoader`` with flips + 90° rotations, with stain (HED) jitter added, and with float
normalization in the workers instead of on the device.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def _rate(run, min_seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        n += run()
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def bench_dataset(
    path: Path, *, workers: int = 2, batch_size: int = 64, min_seconds: float = 5.0
) -> dict[str, object]:
    """Samples/s for the configurations above."""
    from torch.utils.data import DataLoader

    from histoxmodal import keys
    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.store import open_patches
    from histoxmodal.data.transforms import Augment

    patches = open_patches(path / keys.PAIRED_PATCHES_FILE)
    order = np.random.default_rng(0).permutation(len(patches))

    def raw() -> int:
        for i in order:
            np.array(patches[i])  # a real copy of each patch
        return len(order)

    results = {"raw_memmap_read": _rate(raw, min_seconds / 2)}
    configs = {
        "flips_rot90_uint8": (Augment(), False),
        "flips_rot90_hed_uint8": (Augment(hed_sigma=0.05), False),
        "flips_rot90_float_normalized": (Augment(), True),
    }
    for name, (aug, norm) in configs.items():
        ds = PairedDataset(path, augment=aug, normalize_image=norm)
        dl = DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=False,
        )
        for _ in dl:  # warm-up: start the workers, touch the pages
            break

        def epoch(dl=dl) -> int:
            return sum(len(b["image"]) for b in dl)

        results[name] = _rate(epoch, min_seconds)
        del dl
    return {
        "dataset": str(path),
        "n": len(patches),
        "patch_shape": list(patches.shape[1:]),
        "workers": workers,
        "batch_size": batch_size,
        "samples_per_s": results,
    }


def run_dataset_bench(
    dataset: str | Path,
    *,
    workers: int = 2,
    batch_size: int = 64,
    min_seconds: float = 5.0,
    json_path: str | Path | None = None,
) -> int:
    r = bench_dataset(
        Path(dataset),
        workers=workers,
        batch_size=batch_size,
        min_seconds=min_seconds,
    )
    sps = r["samples_per_s"]
    base = sps["raw_memmap_read"]
    print(
        f"dataset: {r['dataset']} ({r['n']} patches of {r['patch_shape']}), "
        f"{r['workers']} workers, batch {r['batch_size']}"
    )
    for k, v in sps.items():
        print(f"  {k:<30} {v:9.0f} samples/s   ({v / base:5.2f}x raw read)")
    print("  target: >= 1500 samples/s with flips + rotations (flips_rot90_uint8)", file=sys.stderr)
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=2))
    return 0
