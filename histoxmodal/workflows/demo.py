"""``histoxmodal demo``: the whole path in one call, on a built-in default.

Generated data (no download): slides with typed tissue regions and Visium-like spots whose
expression follows the tissue -> tissue detection and tiling -> the paired dataset -> contrastive
training -> evaluation with an HTML report. ``data=PATH`` runs the same path on her2st;
``medical=True`` trains Symile and pairwise CLIP on a generated radiograph + ECG + report cohort.
Every step is resumable: a rerun skips what is already complete and says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histoxmodal import keys
from histoxmodal.fileutil import write_json_atomic

log = logging.getLogger(__name__)

#: Training of the generated demo (bundled ``configs/demo.yaml``): a small CNN from scratch on
#: 64 px patches (CPU, ~1 min); and the medical demo's (``configs/demo_medical.yaml``): tiny
#: towers over a generated XOR cohort, Symile vs pairwise CLIP.
DEMO_CONFIG, MEDICAL_CONFIG = "demo", "demo_medical"
MEDICAL_COHORT = {"mode": "xor", "bits": 2, "missing": 0.05, "image_px": 32}
MEDICAL_LOSSES = ("symile", "clip_pairwise")


class Steps:
    """Numbered step lines with elapsed time, through ``echo``; :meth:`skipped` says a step was
    already complete (a rerun)."""

    def __init__(self, total: int, echo: Callable[[str], None] | None = None) -> None:
        self.total, self.i, self.t0 = total, 0, time.perf_counter()
        self.echo = echo or log.info
        self.skips: list[str] = []

    def __call__(self, text: str) -> None:
        self.i += 1
        self.echo(f"[{self.i}/{self.total}] {text}  ({time.perf_counter() - self.t0:.0f} s)")

    def skipped(self, why: str) -> None:
        self.skips.append(why)
        self.echo(f"[{self.i}/{self.total}] skipped: {why}")


def demo(
    out: str | Path = "histoxmodal_demo",
    *,
    data: str | Path | None = None,
    medical: bool = False,
    seed: int = 0,
    workers: int = 1,
    max_epochs: int | None = None,
    patients: int = 1000,
    echo: Callable[[str], None] | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Run the demo in ``out``; see the module docstring.

    Parameters
    ----------
    out
        Working folder (reused: finished steps are skipped).
    data
        A her2st-layout folder instead of generated data.
    medical
        The multimodal cohort demo instead of the spatial one.
    seed, workers, max_epochs, patients
        Seed of the generated data and training, tiling processes, training length override,
        patients of the generated cohort.
    echo
        Receives one line per step (default: this module's logger).
    progress_bar
        Show Lightning's progress bar while training.

    Returns
    -------
    dict
        ``kind`` (``spatial`` / ``cohort``), ``metrics`` and ``protocol`` of the evaluation,
        ``report`` and ``metrics_file`` paths, ``skipped`` (the steps a rerun found complete),
        and for the generated spatial demo ``n_tiles`` and ``failed`` (slides that could not be
        tiled; nothing after tiling runs then).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if medical:
        return _demo_medical(out, seed, max_epochs, patients, echo, progress_bar)
    if data is not None:
        return _demo_her2st(Path(data), out, max_epochs, echo, progress_bar)
    return _demo_generated(out, seed, workers, max_epochs, echo, progress_bar)


def _demo_generated(out, seed, workers, max_epochs, echo, progress_bar) -> dict[str, Any]:
    from histoxmodal.data.recipes import SampleRef
    from histoxmodal.testing.spatial import make_synthetic_visium
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.workflows.build import PairedConfig, build_paired
    from histoxmodal.workflows.config_files import bundled_config_data
    from histoxmodal.workflows.tile import tile_slides

    step = Steps(5, echo)
    step("generating 3 slides with typed tissue and Visium-like spots")
    data = out / "data"
    done = data / "done.json"
    if done.exists():
        samples = json.loads(done.read_text())
        slides = [Path(s["slide"]) for s in samples]
        step.skipped(f"{done} exists")
    else:
        gen = make_synthetic_visium(data, seed=seed)
        samples = [
            {"sample": str(a.obs["sample"].iloc[0]), "file": str(f), "slide": str(s.path)}
            for a, s, f in zip(gen.samples, gen.slides, gen.files, strict=True)
        ]
        write_json_atomic(done, samples)
        slides = [s.path for s in gen.slides]

    step("detecting tissue and tiling (224 px at 0.5 µm/px)")
    results = tile_slides(slides, out / "tiles", TileSpec(), workers=workers)
    if any(r.failed for r in results):
        return {"kind": "spatial", "failed": results, "skipped": step.skips}
    if all(r.status == "skipped" for r in results):
        step.skipped(f"{len(results)} slides already tiled with these parameters")

    step("building the paired dataset (one 112 µm patch per spot)")
    paired = out / "paired"
    refs = [
        SampleRef(
            s["sample"],
            load=_reader(s["file"], s["slide"]),
            inputs=[Path(s["file"]), Path(s["slide"])],
        )
        for s in samples
    ]
    manifest = build_paired(
        refs, paired, PairedConfig(patch_um=112.0, patch_px=64), recipe="synthetic"
    )
    if manifest.get("up_to_date"):
        step.skipped(f"{paired} is up to date")
    result = _train_and_evaluate(
        out, paired, bundled_config_data(DEMO_CONFIG), step, "sample=S3", max_epochs, progress_bar
    )
    return {**result, "n_tiles": sum(r.n_tiles for r in results), "failed": []}


def _reader(file: str, slide: str):
    def load():
        from histoxmodal.io.spatial import read_spatial

        return read_spatial(file, format="h5ad", image=slide)

    return load


def _demo_her2st(src, out, max_epochs, echo, progress_bar) -> dict[str, Any]:
    from histoxmodal.workflows.build import build
    from histoxmodal.workflows.config_files import load_config

    step = Steps(3, echo)
    step(f"building the her2st paired dataset from {src}")
    paired = out / "paired"
    # the patches the recommended config wants (configs/her2st.yaml, docs/benchmarks.md)
    manifest = build("her2st", paired, src=src, patch_um=224.0, patch_px=128)
    if manifest.get("up_to_date"):
        step.skipped(f"{paired} is up to date")
    cfg = load_config("her2st").to_dict()
    return _train_and_evaluate(out, paired, cfg, step, "sample=C5", max_epochs, progress_bar)


def _train_and_evaluate(out, paired, config, step, fold, max_epochs, progress_bar):
    from histoxmodal.data.splits import split_file
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.training.trainer import last_checkpoint
    from histoxmodal.workflows.evaluate import evaluate
    from histoxmodal.workflows.train import train

    split = split_file(paired, "sample")
    run = out / "run"
    cfg = config_from_dict({k: v for k, v in config.items() if k != "data"})
    step(
        f"training ({cfg.model.image_encoder} + {cfg.model.gene_encoder}, {cfg.loss.name}), "
        f"{fold.split('=')[1]} held out"
    )
    if not (run / keys.RUN_WEIGHTS_FILE).exists():
        train(
            cfg,
            run,
            data=paired,
            split=split,
            fold=fold,
            accelerator="cpu",
            devices=1,
            resume=last_checkpoint(run).exists(),
            max_epochs=max_epochs,
            enable_progress_bar=progress_bar,
        )
    else:
        step.skipped(f"{run / keys.RUN_WEIGHTS_FILE} exists")
    step("evaluating on the held-out sample and writing the report")
    report = out / "report"
    result = evaluate(run, paired, report, split=split, fold=fold)
    return {
        "kind": "spatial",
        "metrics": result["metrics"],
        "protocol": result["protocol"],
        "report": report / keys.REPORT_FILE,
        "metrics_file": report / keys.METRICS_FILE,
        "tiles": out / "tiles",
        "skipped": step.skips,
    }


def _demo_medical(out, seed, max_epochs, patients, echo, progress_bar) -> dict[str, Any]:
    from histoxmodal.data.cohort import is_cohort
    from histoxmodal.testing.cohort import make_synthetic_cohort
    from histoxmodal.training.multimodal import multimodal_config_from_dict
    from histoxmodal.training.trainer import last_checkpoint
    from histoxmodal.workflows.build import build_cohort
    from histoxmodal.workflows.config_files import bundled_config_data
    from histoxmodal.workflows.evaluate import evaluate
    from histoxmodal.workflows.report import write_cohort_report
    from histoxmodal.workflows.train import train

    step = Steps(5, echo)
    c = {**MEDICAL_COHORT, "n_patients": patients}
    step(
        f"generating a cohort of {c['n_patients']} patients: radiograph (PNG), ECG (WFDB) and "
        "report (text), the report stating radiograph XOR ECG findings"
    )
    raw, store = out / "cohort_files", out / "cohort"
    if (raw / "manifest.csv").exists():
        step.skipped(f"{raw / 'manifest.csv'} exists")
    else:
        make_synthetic_cohort(raw, seed=seed, **c)
    step("pairing by patient and time, reading every record, building the cohort store")
    if is_cohort(store):
        step.skipped(f"{store} is built")
    else:
        build_cohort(raw / "manifest.csv", store, image_px=c["image_px"], fs=100.0, length_s=2.5)
    for loss in MEDICAL_LOSSES:
        step(f"training with {loss} (3 towers)")
        cfg = multimodal_config_from_dict(
            {**bundled_config_data(MEDICAL_CONFIG), "loss": {"name": loss}}
        )
        run = out / f"run_{loss}"
        if (run / keys.RUN_WEIGHTS_FILE).exists():
            step.skipped(f"{run / keys.RUN_WEIGHTS_FILE} exists")
            continue
        train(
            cfg,
            run,
            data=store,
            max_epochs=max_epochs,
            accelerator="cpu",
            devices=1,
            resume=last_checkpoint(run).exists(),
            enable_progress_bar=progress_bar,
        )
    step("zero-shot evaluation on the held-out patients")
    results = [
        evaluate(out / f"run_{loss}", store, out / f"eval_{loss}", k=10, seed=seed)
        for loss in MEDICAL_LOSSES
    ]
    metrics = {k: v for r in results for k, v in r["metrics"].items()}
    protocol = {**results[0]["protocol"], "runs": [r["protocol"]["run"] for r in results]}
    protocol.pop("run")
    write_json_atomic(out / keys.METRICS_FILE, {"metrics": metrics, "protocol": protocol})
    write_cohort_report(out / keys.REPORT_FILE, results)
    return {
        "kind": "cohort",
        "metrics": metrics,
        "protocol": protocol,
        "report": out / keys.REPORT_FILE,
        "metrics_file": out / keys.METRICS_FILE,
        "skipped": step.skips,
    }
