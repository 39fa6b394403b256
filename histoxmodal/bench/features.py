"""``histoxmodal bench features``: the whole features command against the encoder alone.

On a generated slide, in one process, interleaved rounds of:

1. the whole command, :func:`histoxmodal.workflows.features.extract_features` into a fresh
   folder (build the encoder, open the slide, detect tissue, lay the grid, decode and resize the
   tiles in threads, encode, write ``<slide>.h5``);
2. the encoder's forward pass alone on the same number of tiles, decoded and normalized
   beforehand and already on the device, in batches of the same size, under the same precision.

The ratio of their tiles/s says how much of the encoder's speed the command delivers: the
decoding and batching overlap the encoder, and the fixed costs (tissue detection, writing) are
small. Bar on a CPU with a small encoder: >= 0.85.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: bar of the ratio (whole command / forward pass alone) on a CPU
TARGET_RATIO = 0.85


def _forward_pass(ex, tiles, batch_size: int, device, dtype) -> float:
    """Seconds of the encoder's forward pass alone over pre-normalized ``tiles``."""
    import contextlib

    import torch

    tower = ex.module.tower
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        sync()
        t0 = time.perf_counter()
        for x in tiles:
            tower(x)
        sync()
    return time.perf_counter() - t0


def _decoded(slide: Path, ex, batch_size: int, device) -> list:
    """The tiles the command extracts, decoded and normalized once, on the device."""
    import torch

    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.grid import tile_grid
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.tiling.tissue import detect_tissue

    m = ex.module.to(device)
    out = []
    with open_slide(slide) as s:
        geom = TileSpec(tile_px=ex.tile_px, target_mpp=ex.target_mpp).resolve(s)
        coords, _ = tile_grid(s.dimensions, geom, detect_tissue(s))
        for a in iter_tiles(s, geom, coords, batch_size=batch_size):
            x = torch.from_numpy(a).permute(0, 3, 1, 2).to(device).float()
            out.append((x - m.mean) / m.std)
    return out


def run_features_bench(
    *,
    encoder: str = "timm:resnet18",
    device: str = "cpu",
    precision: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    side: int = 32768,
    repeats: int = 3,
    json_path: str | Path | None = None,
) -> int:
    """Run the benchmark and print a report; returns the CLI exit code (0).

    Parameters
    ----------
    encoder
        Encoder name (random weights), e.g. ``timm:resnet18`` or ``timm:vit_base_patch16_224``.
    device, precision, batch_size, workers
        As for ``histoxmodal features``.
    side
        Side of the generated slide in pixels (0.25 µm/px).
    repeats
        Interleaved rounds; medians are reported.
    json_path
        Also write the results there.
    """
    import torch

    from histoxmodal.testing import make_synthetic_slide
    from histoxmodal.training.embedding import precision_name, resolve_device, resolve_precision
    from histoxmodal.workflows.extractor import load_extractor
    from histoxmodal.workflows.features import extract_features

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    report: dict[str, object] = {
        "encoder": encoder,
        "device": str(dev),
        "precision": precision_name(dtype),
        "batch_size": batch_size,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    with tempfile.TemporaryDirectory(prefix="histoxmodal-bench-") as td:
        folder = Path(td)
        slide = folder / "bench.tif"
        make_synthetic_slide(
            slide, width=side, height=side, tile=512, quality=80, texture_variants=8, seed=2
        )
        ex = load_extractor(encoder, random_weights=True)  # speed only: weights do not matter
        tiles = _decoded(slide, ex, batch_size, dev)
        n = sum(len(x) for x in tiles)
        print(
            f"features benchmark: {encoder} on {dev} ({report['precision']}), {n} tiles of "
            f"{ex.tile_px} px from a {side} x {side} px slide, batch {batch_size}, "
            f"{workers} decoding threads, {repeats} interleaved rounds",
            file=sys.stderr,
        )
        _forward_pass(ex, tiles[:2], batch_size, dev, dtype)  # warm-up
        whole, forward = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            (r,) = extract_features(
                [slide], folder / f"out{i}", encoder=encoder, batch_size=batch_size,
                workers=workers, device=str(dev), precision=precision,
            )  # fmt: skip
            whole.append(time.perf_counter() - t0)
            if r.status != "ok" or r.n_tiles != n:
                raise RuntimeError(f"the command extracted {r.n_tiles} tiles ({r.reason})")
            forward.append(_forward_pass(ex, tiles, batch_size, dev, dtype))
        del tiles
    t_whole, t_fwd = statistics.median(whole), statistics.median(forward)
    report.update(
        {
            "tiles": n,
            "tile_px": ex.tile_px,
            "seconds_whole": whole,
            "seconds_forward": forward,
            "tiles_per_s_whole": n / t_whole,
            "tiles_per_s_forward": n / t_fwd,
            "ratio": t_fwd / t_whole,
        }
    )
    print(f"  whole command (features)      {n / t_whole:9.1f} tiles/s")
    print(f"  encoder forward pass alone    {n / t_fwd:9.1f} tiles/s")
    target = f"   (target >= {TARGET_RATIO} on CPU)" if dev.type == "cpu" else ""
    print(f"  ratio                         {t_fwd / t_whole:9.2f}{target}")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=float))
    return 0
