"""``histoxmodal bench train --data DIR``: training steps/s and pairs/s, end to end with a
frozen image tower versus with its cached features, on this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path


def _loop(module, loader, opt, max_steps: int) -> tuple[int, int, float]:
    steps = pairs = 0
    t0 = time.perf_counter()
    while steps < max_steps:
        for b in loader:
            loss = module.compute_loss(b)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            pairs += len(b["expression"])
            if steps >= max_steps:
                break
    return steps, pairs, time.perf_counter() - t0


def bench_train(
    dataset: Path,
    *,
    encoder: str = "timm:resnet18",
    input_size: int = 112,
    batch_size: int = 64,
    steps: int = 10,
    workers: int = 2,
) -> dict:
    """Steps/s and pairs/s: frozen tower run every step vs cached features (same process)."""
    import torch
    from torch.utils.data import DataLoader

    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.normalize import highly_variable_genes
    from histoxmodal.data.store import load_paired
    from histoxmodal.data.transforms import Augment
    from histoxmodal.training.cache import CachedFeatures, image_features
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.training.module import ContrastiveModule

    torch.manual_seed(0)
    adata, _ = load_paired(dataset)
    genes = highly_variable_genes(adata, 256)
    cfg = config_from_dict(
        {
            "model": {
                "image_encoder": encoder,
                "image_mode": "frozen",
                "image_kwargs": ({"input_size": input_size} if encoder.startswith("timm:") else {}),
            },
            "optim": {"batch_size": batch_size},
        }
    )
    ds = PairedDataset(dataset, genes=genes, augment=Augment())
    module = ContrastiveModule(cfg, genes, len(ds.categories["batch"]))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    kw = {
        "batch_size": batch_size,
        "shuffle": True,
        "drop_last": True,
        "num_workers": workers,
        "persistent_workers": workers > 0,
    }
    module.train()
    e2e = _loop(module, DataLoader(ds, **kw), opt, steps)
    t0 = time.perf_counter()
    feats = image_features(module, dataset, n_views=8)
    cache_s = time.perf_counter() - t0
    cached_dl = DataLoader(
        CachedFeatures(ds, feats), **{**kw, "num_workers": 0, "persistent_workers": False}
    )
    cached = _loop(module, cached_dl, opt, max(steps, 4 * len(cached_dl)))
    t0 = time.perf_counter()
    for b in cached_dl:  # one full epoch over the dataset from the cache
        loss = module.compute_loss(b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    epoch_s = time.perf_counter() - t0
    return {
        "dataset": str(dataset),
        "n_spots": int(adata.n_obs),
        "encoder": encoder,
        "input_size": input_size,
        "batch_size": batch_size,
        "n_genes": len(genes),
        "end_to_end": {"steps_per_s": e2e[0] / e2e[2], "pairs_per_s": e2e[1] / e2e[2]},
        "cached": {"steps_per_s": cached[0] / cached[2], "pairs_per_s": cached[1] / cached[2]},
        "cache_build_s": cache_s,
        "cached_epoch_s": epoch_s,
    }


def run_train_bench(
    dataset: str | Path,
    *,
    encoder: str = "timm:resnet18",
    input_size: int = 112,
    batch_size: int = 64,
    steps: int = 10,
    workers: int = 2,
    json_path: str | Path | None = None,
) -> int:
    r = bench_train(
        Path(dataset),
        encoder=encoder,
        input_size=input_size,
        batch_size=batch_size,
        steps=steps,
        workers=workers,
    )
    e, c = r["end_to_end"], r["cached"]
    print(
        f"dataset: {r['dataset']} ({r['n_spots']} spots, {r['n_genes']} genes), frozen "
        f"{r['encoder']} at {r['input_size']} px, batch {r['batch_size']}"
    )
    print(
        f"  end to end (tower every step)  {e['steps_per_s']:7.2f} steps/s  "
        f"{e['pairs_per_s']:8.0f} pairs/s"
    )
    print(
        f"  cached features (heads only)   {c['steps_per_s']:7.2f} steps/s  "
        f"{c['pairs_per_s']:8.0f} pairs/s   ({c['steps_per_s'] / e['steps_per_s']:.0f}x)"
    )
    print(f"  cache build (8 views)          {r['cache_build_s']:7.1f} s")
    print(f"  one epoch from the cache       {r['cached_epoch_s']:7.2f} s   (target < 1 s)")
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=2))
    return 0
