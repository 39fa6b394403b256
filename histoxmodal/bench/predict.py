"""``histoxmodal bench predict``: a whole-slide expression map of a generated gigapixel slide.

In one process:

1. a tiny spatial run is trained on a generated paired dataset (a small image tower, a saved
   ridge expression head), and a synthetic pyramidal slide of ``side x side`` px at 0.25 µm/px is
   written tile by tile (:func:`histoxmodal.testing.make_synthetic_slide`), or ``--slide`` is
   used;
2. the whole command, :func:`histoxmodal.workflows.expression_map.predict_slide` (open the
   slide, detect tissue, lay the pseudo-spot grid, read and resample every patch, embed, predict
   every gene, write ``prediction.h5ad`` and the heatmaps), timed, with the process's resident
   memory sampled every 10 ms by a thread;
3. the baseline: the run's image tower alone (``embed_batch``) over the same number of
   pseudo-spots, their patches read beforehand, in batches of the same size.

The report gives the seconds of both, their ratio, and the peak resident memory during the
command above what the process held before it: the figure that must not grow with the slide's
area beyond the output (``X`` and the embeddings).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

#: the tiny run: the registry's test image tower and gene MLP, one epoch
TINY_RUN = {
    "genes": None,
    "model": {"image_encoder": "test_image_resnet", "gene_encoder": "test_gene_mlp"},
    "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
}


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager sampling the resident memory every ``interval`` s in a thread.

    Attributes
    ----------
    before, peak
        Bytes when entered and the largest sample (including on exit).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakRSS:
        import gc

        gc.collect()
        self.before = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        """Peak above the memory held when entered, in bytes."""
        return self.peak - self.before


def _tiny_run(folder: Path):
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.train import train

    data = make_paired_dataset(folder / "data", spots_per_sample=32, n_states=3)
    return train(
        config_from_dict(TINY_RUN), folder / "run", data=data, accelerator="cpu", devices=1
    )


def _forward_alone(run, slide: Path, centres, batch_size: int, device) -> float:
    """Seconds of the run's image tower alone over the patches at ``centres``, read beforehand."""
    import torch

    from histoxmodal import keys
    from histoxmodal.data.slide import SlidePatches
    from histoxmodal.io.slide import open_slide

    patch_um, patch_px = float(run.patch["patch_um"]), int(run.patch["patch_px"])
    with open_slide(slide) as s:
        ds = SlidePatches(s, centres, patch_um=patch_um, patch_px=patch_px)
        imgs = torch.stack([ds[i][keys.BATCH_IMAGE] for i in range(len(ds))])
    batches = [imgs[i : i + batch_size].to(device) for i in range(0, len(imgs), batch_size)]
    m = run.module.to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        m.embed_batch({keys.BATCH_IMAGE: batches[0]})  # warm-up
        sync()
        t0 = time.perf_counter()
        for x in batches:
            m.embed_batch({keys.BATCH_IMAGE: x})
        sync()
    return time.perf_counter() - t0


def run_predict_bench(
    *,
    side: int = 100_000,
    grid_um: float = 100.0,
    batch_size: int = 64,
    device: str = "auto",
    slide: str | Path | None = None,
    json_path: str | Path | None = None,
) -> int:
    """Run the benchmark and print a report; returns the CLI exit code (0).

    Parameters
    ----------
    side
        Side in pixels of the generated square slide (0.25 µm/px), when ``slide`` is not given.
    grid_um
        Pitch of the pseudo-spot grid in µm (the run's field of view is 16 µm).
    batch_size
        Patches per forward pass.
    device
        ``auto``, ``cpu`` or ``cuda``.
    slide
        An existing slide to predict instead of generating one.
    json_path
        Also write the results there.
    """
    import anndata as ad
    import numpy as np
    import torch

    from histoxmodal.testing import make_synthetic_slide
    from histoxmodal.training.embedding import resolve_device
    from histoxmodal.workflows.expression_map import PREDICTION_FILE, predict_slide

    dev = resolve_device(device)
    report: dict[str, object] = {
        "device": str(dev),
        "batch_size": batch_size,
        "grid_um": grid_um,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="histoxmodal-bench-") as td:
        folder = Path(td)
        t0 = time.perf_counter()
        run = _tiny_run(folder)
        report["seconds_train_tiny_run"] = time.perf_counter() - t0
        if slide is None:
            t0 = time.perf_counter()
            made = make_synthetic_slide(
                folder / "bench.tif", width=side, height=side, tile=512, quality=80,
                texture_variants=8, seed=2,
            )  # fmt: skip
            report["seconds_write_slide"] = time.perf_counter() - t0
            slide = made.path
        slide = Path(slide)
        from histoxmodal.io.slide import open_slide

        with open_slide(slide) as s:
            width, height = s.dimensions
        report.update({"slide": str(slide), "width": width, "height": height})
        print(
            f"predict benchmark: {width} x {height} px slide ({slide.stat().st_size / 1e9:.2f} GB "
            f"on disk), grid {grid_um:g} µm, tiny run (field of view {run.patch['patch_um']} µm, "
            f"{run.patch['patch_px']} px), {dev}, batch {batch_size}",
            file=sys.stderr,
        )
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = predict_slide(run, slide, folder / "maps", grid_um=grid_um, batch_size=batch_size)
            whole = time.perf_counter() - t0
        if r.status != "ok":
            raise RuntimeError(f"predict failed on the benchmark slide: {r.reason}")
        a = ad.read_h5ad(folder / "maps" / r.name / PREDICTION_FILE)
        n = a.n_obs
        out_bytes = int(a.X.nbytes + sum(np.asarray(v).nbytes for v in a.obsm.values()))
        forward = _forward_alone(run, slide, np.asarray(a.obsm["spatial"]), batch_size, dev)
    mib = 1 << 20
    report.update(
        {
            "pseudo_spots": n,
            "genes": a.n_vars,
            "seconds_whole": whole,
            "seconds_forward": forward,
            "spots_per_s_whole": n / whole,
            "spots_per_s_forward": n / forward,
            "ratio_forward_over_whole": forward / whole,
            "rss_before_mib": mem.before / mib,
            "rss_peak_mib": mem.peak / mib,
            "rss_growth_mib": mem.growth / mib,
            "output_mib": out_bytes / mib,
        }
    )
    print(f"  pseudo-spots                   {n:9d}   ({a.n_vars} genes)")
    print(f"  whole command (predict)        {whole:9.1f} s   {n / whole:9.1f} spots/s")
    print(f"  image tower forward alone      {forward:9.1f} s   {n / forward:9.1f} spots/s")
    print(f"  ratio (forward / whole)        {forward / whole:9.2f}")
    print(
        f"  peak memory during predict     {mem.peak / mib:9.0f} MiB "
        f"(+{mem.growth / mib:.0f} MiB over {mem.before / mib:.0f} MiB before; "
        f"output {out_bytes / mib:.1f} MiB)"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=float))
    return 0
