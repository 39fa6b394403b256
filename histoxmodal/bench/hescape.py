"""``histoxmodal bench hescape``: HESCAPE's grid of image tower x gene tower, each trained with
one recipe on the dataset's training fold and measured on its test fold.

Every cell reports:

- Recall@1/5/10 both ways, **in-batch at B = 64** as HESCAPE computes it (consecutive test
  batches in dataset order; chance about k/64) and over the **full gallery** of test spots
  (histoxmodal's default; chance k/n);
- expression prediction with HEST-Benchmark's protocol: the frozen image embeddings,
  standardised and reduced to 256 principal components on the training spots, a ridge with
  ``alpha = 100 / (d * n_genes)`` (lsqr, no intercept) onto the top-50 highly variable genes
  of the training spots (log1p-CP10k); Pearson pooled over the test spots and per test sample,
  then averaged (HEST's issues show the two rank models differently);
- batch mixing of the test image embeddings (of every row when the test fold holds one sample)
  with scib-metrics (silhouette batch, iLISI, graph connectivity) beside histoxmodal's kNN
  batch purity, batches = samples; the labels scIB
  conditions on are the dataset's ``pathology`` (else ``cluster``) annotations, else eight
  k-means clusters of the test spots' expression.

Writes ``OUT/hescape_bench.json`` (every number, split hash, seeds, versions),
``OUT/hescape_table.md`` (HESCAPE's shape: a row per gene tower, a column per image tower) and
``OUT/report.html``. Each cell is saved as it finishes; a rerun skips finished cells.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.fileutil import write_json_atomic

#: HESCAPE's test batch size
IN_BATCH = 64
#: HEST-Benchmark's expression protocol
HEST_PCA = 256
HEST_GENES = 50


def hest_ridge_predict(x_tr, y_tr, x_te, *, n_components: int = HEST_PCA, seed: int = 0):
    """HEST-Benchmark's linear probe: StandardScaler + PCA(256) fitted on the training rows,
    then ``Ridge(alpha=100 / (d * n_genes), solver="lsqr", fit_intercept=False)``."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(n_components, x_tr.shape[0], x_tr.shape[1]))
    reduce = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=seed))
    z_tr = reduce.fit_transform(x_tr)
    z_te = reduce.transform(x_te)
    alpha = 100.0 / (z_tr.shape[1] * y_tr.shape[1])
    reg = Ridge(alpha=alpha, solver="lsqr", fit_intercept=False, max_iter=1000, random_state=seed)
    return reg.fit(z_tr, y_tr).predict(z_te), alpha


def _labels(adata, rows: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """What scIB conditions on: annotations where every test row has one, else clusters."""
    for col in ("pathology", "cluster"):
        if col in adata.obs:
            lab = adata.obs[col].astype(object).to_numpy()[rows]
            if all(v is not None and str(v) not in ("nan", "") for v in lab):
                return lab.astype(str), f"obs['{col}']"
    from sklearn.cluster import KMeans

    k = int(min(8, len(rows) // 10 or 1))
    lab = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(y)
    return lab.astype(str), f"k-means ({k}) of the test spots' expression"


def cell_metrics(
    za: np.ndarray,
    zb: np.ndarray,
    adata,
    tr: np.ndarray,
    te: np.ndarray,
    *,
    seed: int = 0,
    batch_size: int = IN_BATCH,
) -> dict[str, Any]:
    """Every number of one grid cell from the run's embeddings of all rows."""
    from histoxmodal.data.normalize import expression_matrix, highly_variable_genes
    from histoxmodal.evaluation.expression import expression_metrics, top_variable_genes
    from histoxmodal.evaluation.mixing import knn_batch_purity, scib_batch_metrics
    from histoxmodal.evaluation.retrieval import (
        cross_modal_retrieval,
        in_batch_chance,
        in_batch_recall,
        retrieval_chance,
    )

    a, b = za[te], zb[te]
    full = cross_modal_retrieval(a, b)
    inb = in_batch_recall(a, b, batch_size=batch_size)
    pool = highly_variable_genes(adata, 256, rows=tr)
    y = expression_matrix(adata, pool)
    top = top_variable_genes(y[tr], pool, n=HEST_GENES)
    idx = [pool.index(g) for g in top]
    pred, alpha = hest_ridge_predict(za[tr], y[tr][:, idx], za[te], seed=seed)
    samples = adata.obs[keys.OBS_SAMPLE].astype(str).to_numpy()
    expr = expression_metrics(y[te][:, idx], pred, top, samples=samples[te])
    # batch mixing needs two batches: a test fold of one sample is measured on every row
    mix = te if len(np.unique(samples[te])) > 1 else np.arange(adata.n_obs)
    labels, label_source = _labels(adata, mix, y[mix], seed)
    scib = scib_batch_metrics(za[mix], samples[mix], labels)
    out: dict[str, Any] = {}
    for d in ("image_to_gene", "gene_to_image"):
        for k in (1, 5, 10):
            out[f"in_batch.{d}.R@{k}"] = float(inb[f"{d}:R@{k}"])
            out[f"full.{d}.R@{k}"] = float(full[d][f"R@{k}"])
    out["in_batch.chance.R@5"] = float(in_batch_chance(len(te), batch_size=batch_size)[
        "image_to_gene:R@5"])  # fmt: skip
    out["full.chance.R@5"] = float(retrieval_chance(len(te))["R@5"])
    out["hest.pearson_pooled"] = float(expr["pooled"]["pearson"])
    out["hest.pearson_per_sample_mean"] = float(expr["per_sample_mean"]["pearson"])
    out["hest.alpha"] = float(alpha)
    out.update({f"scib.{k}": v for k, v in scib.items()})
    out["knn_batch_purity"] = float(knn_batch_purity(za[mix], samples[mix]))
    out["mixing_rows"] = "test" if mix is te else "all (the test fold holds one sample)"
    out["n_train"], out["n_test"] = len(tr), len(te)
    out["scib_labels"] = label_source
    out["top_genes"] = top
    return out


def _cell_config(config: str, image: str, gene: str, weights: dict, *, loss: str | None,
                 epochs: int | None, seed: int, random_weights: bool):  # fmt: skip
    from histoxmodal.workflows.config_files import load_config

    sets = [f"model.image_encoder={image}", f"model.gene_encoder={gene}", f"optim.seed={seed}"]
    if image in weights:
        sets.append(f"model.image_weights={weights[image]}")
    if random_weights:
        sets.append("model.random_weights=true")
    if gene in weights:
        sets += [f"model.gene_weights={weights[gene]}", "genes=null", "model.gene_kwargs={}"]
        sets.append("correction.batch_conditioned_genes=false")
    elif gene != "gene_mlp":
        sets.append("model.gene_kwargs={}")
    if loss:
        sets.append(f"loss.name={loss}")
    if epochs:
        sets.append(f"optim.max_epochs={epochs}")
    return load_config(config, sets)


def parse_weights(items: list[str] | None) -> dict[str, str]:
    """``NAME=PATH`` pairs (``--weights uni=/models/uni.bin gene_drvi=gene_models/drvi``)."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--weights {item!r}: expected NAME=PATH, e.g. uni=weights/uni.bin")
        if not Path(path).expanduser().exists():
            raise ConfigError(f"--weights {item!r}: {path} does not exist")
        out[name] = path
    return out


def run_hescape_bench(
    data: str | Path,
    out: str | Path,
    *,
    image_encoders: list[str],
    gene_encoders: list[str],
    weights: dict[str, str] | None = None,
    loss: str | None = None,
    config: str = "her2st",
    split: str | Path | None = None,
    fold: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    random_weights: bool = False,
) -> dict[str, Any]:
    """Run the grid and write its JSON, Markdown table and HTML report; returns the JSON.

    Parameters
    ----------
    data
        A paired dataset (``histoxmodal build``).
    image_encoders, gene_encoders
        Registered towers (``histoxmodal models``).
    weights
        Local weights by tower name (foundation image towers; ``gene_drvi``/``gene_scvi``
        folders from ``pretrain-genes``).
    loss, epochs
        Override the config's (``clip`` or ``siglip``).
    config
        The one training recipe every cell uses (bundled name or YAML).
    split, fold
        Train/test split; default the dataset's patient split and its first fold.
    """
    from histoxmodal.data.splits import Split, split_file
    from histoxmodal.data.store import load_paired
    from histoxmodal.workflows.run import Run
    from histoxmodal.workflows.train import resumable, train

    weights = dict(weights or {})
    if not image_encoders or not gene_encoders:
        raise ConfigError("--image-encoders and --gene-encoders each need at least one tower")
    data = Path(data)
    if not (data / keys.PAIRED_MANIFEST_FILE).is_file():
        raise ConfigError(f"--data {data}: not a paired dataset (histoxmodal build writes one)")
    split = Path(split) if split else split_file(data, "patient")
    sp = Split.load(split)
    fold_name = fold or sp.fold(0).name
    adata, _ = load_paired(data)
    f = sp.fold(fold_name)
    tr, te = f.train(adata.n_obs), np.asarray(f.test)
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict[str, Any]] = {}
    for gene in gene_encoders:
        for image in image_encoders:
            name = f"{image}__{gene}".replace(":", "-").replace("/", "-")
            cell_file = out / "cells" / f"{name}.json"
            if cell_file.exists():
                cells[name] = json.loads(cell_file.read_text(encoding="utf-8"))
                continue
            cfg = _cell_config(config, image, gene, weights, loss=loss, epochs=epochs,
                               seed=seed, random_weights=random_weights)  # fmt: skip
            run_dir = out / "runs" / name
            t0 = time.perf_counter()
            if (run_dir / keys.RUN_WEIGHTS_FILE).exists():
                run = Run.load(run_dir)
            else:
                run = train(cfg, run_dir, data=data, split=split, fold=fold_name,
                            accelerator="cpu", devices=1,
                            resume=resumable(run_dir))  # fmt: skip
            z = run.embed(data)
            m = cell_metrics(z["image"], z["gene"], adata, tr, te, seed=seed)
            m.update({"image_encoder": image, "gene_encoder": gene, "run": str(run_dir),
                      "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
            write_json_atomic(cell_file, m)
            cells[name] = m
    result = {
        "protocol": {
            "dataset": str(data.resolve()),
            "split": str(split.resolve()),
            "split_sha256": sp.sha256,
            "fold": fold_name,
            "config": config,
            "loss": loss,
            "epochs": epochs,
            "seed": seed,
            "in_batch_size": IN_BATCH,
            "hest": f"StandardScaler + PCA({HEST_PCA}) + Ridge(alpha=100/(d*n_genes), lsqr, "
            f"no intercept) onto the top-{HEST_GENES} HVGs of the training spots",
            "weights": weights,
            "versions": _versions(),
        },
        "image_encoders": image_encoders,
        "gene_encoders": gene_encoders,
        "cells": cells,
    }
    write_json_atomic(out / "hescape_bench.json", result)
    table = format_table(result)
    tmp = out / ".hescape_table.md.partial"
    tmp.write_text(table, encoding="utf-8")
    tmp.replace(out / "hescape_table.md")
    write_report(out / "report.html", result)
    return result


#: the table's columns: (title, key)
TABLE_METRICS = (
    ("R@5 image→gene, in-batch B=64", "in_batch.image_to_gene.R@5"),
    ("R@5 image→gene, full gallery", "full.image_to_gene.R@5"),
    ("R@5 gene→image, in-batch B=64", "in_batch.gene_to_image.R@5"),
    ("Pearson top-50 (HEST), pooled", "hest.pearson_pooled"),
    ("Pearson top-50 (HEST), per-sample mean", "hest.pearson_per_sample_mean"),
    ("iLISI (scib-metrics)", "scib.ilisi"),
)


def _cell(result: dict, image: str, gene: str) -> dict | None:
    name = f"{image}__{gene}".replace(":", "-").replace("/", "-")
    return result["cells"].get(name)


def format_table(result: dict) -> str:
    """HESCAPE's table shape, one block per metric: a row per gene tower, a column per image
    tower; chance levels under the retrieval blocks."""
    images, genes = result["image_encoders"], result["gene_encoders"]
    lines = [
        f"HESCAPE grid on {Path(result['protocol']['dataset']).name}, fold "
        f"{result['protocol']['fold']} (seed {result['protocol']['seed']})",
        "",
    ]
    any_cell = next(iter(result["cells"].values()), {})
    for title, key in TABLE_METRICS:
        lines.append(f"**{title}**")
        lines.append("")
        lines.append("| gene tower | " + " | ".join(images) + " |")
        lines.append("|---|" + "---|" * len(images))
        for g in genes:
            vals = []
            for i in images:
                c = _cell(result, i, g)
                vals.append(f"{c[key]:.3f}" if c and key in c else "-")
            lines.append(f"| {g} | " + " | ".join(vals) + " |")
        if key.startswith("in_batch") and "in_batch.chance.R@5" in any_cell:
            lines.append(f"\nchance {any_cell['in_batch.chance.R@5']:.3f} (about 5/64)")
        if key.startswith("full") and "full.chance.R@5" in any_cell:
            lines.append(f"\nchance {any_cell['full.chance.R@5']:.3f} (5/n)")
        lines.append("")
    return "\n".join(lines)


def write_report(path: Path, result: dict) -> None:
    """The grid as an HTML report (tables per metric, provenance)."""
    from histoxmodal.workflows.report import Report, Row, Table, provenance
    from histoxmodal.workflows.report import write_report as write

    images, genes = result["image_encoders"], result["gene_encoders"]
    tables = []
    for title, key in TABLE_METRICS:
        rows = []
        for g in genes:
            vals = []
            for i in images:
                c = _cell(result, i, g)
                vals.append(float(c[key]) if c and key in c else float("nan"))
            rows.append(Row(g, vals))
        tables.append(Table(title, "rows: gene tower; columns: image tower", images, rows))
    p = result["protocol"]
    write(
        path,
        Report(
            title=f"HESCAPE grid: {Path(p['dataset']).name}, fold {p['fold']}",
            summary=(
                f"Each cell trained with config {p['config']!r} on the training fold and "
                f"measured on the test fold. In-batch recall follows HESCAPE (B={IN_BATCH}, "
                f"chance about k/{IN_BATCH}); the full gallery ranks among every test spot. "
                f"Expression: {p['hest']}."
            ),
            tables=tables,
            provenance=provenance(
                dataset=p["dataset"],
                split=p["split"],
                split_sha256=p["split_sha256"],
                seed=p["seed"],
            ),
            config={"protocol": p},
        ),
    )


def _versions() -> dict[str, str]:
    import contextlib
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("histoxmodal", "torch", "timm", "scvi-tools", "drvi-py", "scib-metrics"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
