"""``histoxmodal demo``: the whole path in one command.

Generated data (no download): slides with typed tissue regions and Visium-like spots whose
expression follows the tissue -> tissue detection and tiling -> the paired dataset -> contrastive
training -> evaluation with an HTML report. ``--data PATH`` runs the same path on her2st.
Every step is resumable: rerunning the command skips what is already complete.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from histoxmodal.cli.main import EXIT_FAILED, EXIT_OK, format_table

#: Training of the generated demo: a small CNN from scratch on 64 px patches (CPU, ~1 min).
DEMO_CONFIG = {
    "genes": None,
    "model": {
        "image_encoder": "timm:resnet18",
        "image_kwargs": {"input_size": 64},
        "gene_encoder": "gene_mlp",
        "gene_kwargs": {"hidden": [256], "out_dim": 128},
        "embed_dim": 64,
        "head": "mlp",
    },
    "loss": {"name": "clip"},
    "correction": {"batch_key": "sample"},
    "optim": {"lr": 2e-3, "batch_size": 64, "max_epochs": 8, "num_workers": 0},
    "augment": {"flips": True, "rot90": True},
}


class _Steps:
    """Numbered step headers with elapsed time, on stderr; ``skipped`` says a step was complete."""

    def __init__(self, total: int) -> None:
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.i += 1
        elapsed = time.perf_counter() - self.t0
        print(f"[{self.i}/{self.total}] {text}  ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    def skipped(self, why: str) -> None:
        print(f"[{self.i}/{self.total}] skipped: {why}", file=sys.stderr, flush=True)


#: The medical demo: tiny towers over a generated XOR cohort, Symile vs pairwise CLIP.
MEDICAL_COHORT = {"mode": "xor", "bits": 2, "missing": 0.05, "image_px": 32}
MEDICAL_CONFIG = {
    "modalities": {
        "cxr": {"encoder": "test_cxr"},
        "ecg": {"encoder": "test_ecg"},
        "report": {"encoder": "test_report"},
    },
    "embed_dim": 16,
    "head": "linear",
    "optim": {"lr": 1e-2, "batch_size": 64, "max_epochs": 45, "num_workers": 0},
}


def run_demo(args: argparse.Namespace) -> int:
    from histoxmodal._deps import require_extra

    extras = ("torch", "medical") if args.medical else ("wsi", "spatial", "torch")
    for extra in extras:
        require_extra(extra, "the demo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.medical:
        return _demo_medical(out, args)
    if args.data:
        return _demo_her2st(Path(args.data), out, args)
    return _demo_generated(out, args)


def _demo_generated(out: Path, args: argparse.Namespace) -> int:
    from histoxmodal.data.paired import PairedConfig, build_paired
    from histoxmodal.data.recipes import SampleRef
    from histoxmodal.testing.spatial import make_synthetic_visium
    from histoxmodal.tiling.job import tile_slides
    from histoxmodal.tiling.spec import TileSpec

    step = _Steps(5)
    step("generating 3 slides with typed tissue and Visium-like spots")
    data = out / "data"
    done = data / "done.json"
    if done.exists():
        samples = json.loads(done.read_text())
        slides = [Path(s["slide"]) for s in samples]
        step.skipped(f"{done} exists")
    else:
        gen = make_synthetic_visium(data, seed=args.seed)
        samples = [
            {"sample": str(a.obs["sample"].iloc[0]), "file": str(f), "slide": str(s.path)}
            for a, s, f in zip(gen.samples, gen.slides, gen.files, strict=True)
        ]
        done.write_text(json.dumps(samples, indent=1))
        slides = [s.path for s in gen.slides]

    step("detecting tissue and tiling (224 px at 0.5 µm/px)")
    results = tile_slides(slides, out / "tiles", TileSpec(), workers=args.workers)
    if any(r.failed for r in results):
        from histoxmodal.cli.tile import format_summary

        print(format_summary(results))
        return EXIT_FAILED
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
    return _train_and_evaluate(
        out,
        paired,
        DEMO_CONFIG,
        step,
        fold="sample=S3",
        n_tiles=sum(r.n_tiles for r in results),
        max_epochs=args.max_epochs,
    )


def _reader(file: str, slide: str):
    def load():
        from histoxmodal.io.spatial import read_spatial

        return read_spatial(file, format="h5ad", image=slide)

    return load


def _demo_her2st(src: Path, out: Path, args: argparse.Namespace) -> int:
    from histoxmodal.data.paired import PairedConfig, build_paired
    from histoxmodal.data.recipes import find_samples, load_recipe
    from histoxmodal.training.config import bundled_configs, load_config

    step = _Steps(3)
    step(f"building the her2st paired dataset from {src}")
    paired = out / "paired"
    recipe = load_recipe("her2st")
    refs = find_samples(recipe, [src])
    build_paired(refs, paired, PairedConfig(patch_um=112.0, patch_px=112), recipe="her2st")
    cfg = load_config(str(bundled_configs()["her2st_small"]), []).to_dict()
    return _train_and_evaluate(
        out, paired, cfg, step, fold="sample=C5", n_tiles=None, max_epochs=args.max_epochs
    )


def _train_and_evaluate(
    out: Path,
    paired: Path,
    config: dict,
    step,
    *,
    fold: str,
    n_tiles: int | None,
    max_epochs: int | None,
) -> int:
    from histoxmodal.data.splits import split_file
    from histoxmodal.evaluation.report import evaluate
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.training.fit import RUN_WEIGHTS, fit

    split = split_file(paired, "sample")
    run = out / "run"
    cfg = config_from_dict({k: v for k, v in config.items() if k != "data"})
    step(
        f"training ({cfg.model.image_encoder} + {cfg.model.gene_encoder}, {cfg.loss.name}), "
        f"{fold.split('=')[1]} held out"
    )
    if not (run / RUN_WEIGHTS).exists():
        resume = (run / "checkpoints" / "last.ckpt").exists()
        fit(
            cfg,
            run,
            data=paired,
            split=split,
            fold=fold,
            accelerator="cpu",
            devices=1,
            resume=resume,
            max_epochs=max_epochs,
            enable_progress_bar=sys.stderr.isatty(),
        )
    else:
        step.skipped(f"{run / RUN_WEIGHTS} exists")
    step("evaluating on the held-out sample and writing the report")
    report = out / "report"
    result = evaluate(run, paired, report, split=split, fold=fold)
    metrics, n_test = result["metrics"], result["protocol"]["n_test"]
    rows = [("metric (held-out sample)", "value")]
    for key, what in (
        ("retrieval.full.i2g.recall@5", f"chance {5 / n_test:.3f}"),
        ("retrieval.full.g2i.recall@5", f"chance {5 / n_test:.3f}"),
        ("expression.ridge.pearson_pooled_mean", "top-50 genes"),
        ("expression.mlp.pearson_pooled_mean", "top-50 genes"),
        ("expression.retrieval.pearson_pooled_mean", "top-50 genes"),
    ):
        if key in metrics:
            rows.append((key, f"{metrics[key]:.3f} ({what})"))
    print(format_table(rows))
    if n_tiles is not None:
        print(f"tiles:   {out / 'tiles'} ({n_tiles} tiles; overlay.png per slide)")
    print(f"report:  {(report / 'report.html').resolve()}")
    print(f"metrics: {(report / 'metrics.json').resolve()}")
    return EXIT_OK


def _demo_medical(out: Path, args: argparse.Namespace) -> int:
    from histoxmodal._fileutil import write_json_atomic
    from histoxmodal.data.cohort import build_cohort, is_cohort
    from histoxmodal.evaluation.zeroshot import evaluate_cohort, write_cohort_report
    from histoxmodal.testing.cohort import make_synthetic_cohort
    from histoxmodal.training.multimodal import (
        RUN_WEIGHTS,
        fit_multimodal,
        multimodal_config_from_dict,
    )

    step = _Steps(5)
    c = {**MEDICAL_COHORT, "n_patients": args.patients}
    step(
        f"generating a cohort of {c['n_patients']} patients: radiograph (PNG), ECG (WFDB) and "
        "report (text), the report stating radiograph XOR ECG findings"
    )
    raw, store = out / "cohort_files", out / "cohort"
    if not (raw / "manifest.csv").exists():
        make_synthetic_cohort(raw, seed=args.seed, **c)
    step("pairing by patient and time, reading every record, building the cohort store")
    if not is_cohort(store):
        build_cohort(raw / "manifest.csv", store, image_px=c["image_px"], fs=100.0, length_s=2.5)
    for loss in ("symile", "clip_pairwise"):
        step(f"training with {loss} (3 towers)")
        cfg = multimodal_config_from_dict({**MEDICAL_CONFIG, "loss": {"name": loss}})
        run = out / f"run_{loss}"
        if not (run / RUN_WEIGHTS).exists():
            fit_multimodal(
                cfg,
                run,
                data=store,
                max_epochs=args.max_epochs,
                accelerator="cpu",
                devices=1,
                resume=(run / "checkpoints" / "last.ckpt").exists(),
                enable_progress_bar=sys.stderr.isatty(),
            )
    step("zero-shot evaluation on the held-out patients")
    results = [
        evaluate_cohort(out / f"run_{loss}", store, out / f"eval_{loss}", k=10, seed=args.seed)
        for loss in ("symile", "clip_pairwise")
    ]
    metrics = {k: v for r in results for k, v in r["metrics"].items()}
    protocol = {**results[0]["protocol"], "runs": [r["protocol"]["run"] for r in results]}
    protocol.pop("run")
    write_json_atomic(out / "metrics.json", {"metrics": metrics, "protocol": protocol})
    write_cohort_report(out / "report.html", results)
    rows = [("zero-shot: pick the report among 10, given radiograph + ECG", "accuracy")]
    for loss in ("symile", "clip_pairwise"):
        rows.append((loss, f"{metrics[f'zero_shot.{loss}.report.accuracy@k10']:.3f}"))
    rows.append(("chance", "0.100"))
    print(format_table(rows))
    print(f"report:  {(out / 'report.html').resolve()}")
    print(f"metrics: {(out / 'metrics.json').resolve()}")
    return EXIT_OK
