"""The spatial protocol of ``histoxmodal evaluate``: which rows fit the heads and which are
scored (refusing test spots the run trained on), the embeddings as the heads and retrieval read
them (:class:`~histoxmodal.heads.inputs.HeadInputs`), and every metric beside its chance level
and the hand-crafted baseline on the same split and genes: cross-modal retrieval (whole test set
and in-batch), expression by three heads (ridge, MLP, BLEEP-style retrieval), Moran's I of the
predicted maps, batch mixing; then ``metrics.json`` and the HTML report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.fileutil import write_json_atomic
from histoxmodal.version import __version__
from histoxmodal.workflows.report import (
    BASELINE_SUFFIX,
    CHANCE_SUFFIX,
    Figure,
    Report,
    embedding_figure,
    embedding_warnings,
    expression_maps_figure,
    figure_png,
    metric_tables,
    pearson_histogram,
    provenance,
    retrieval_figure,
)
from histoxmodal.workflows.run import Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRows:
    """Which rows fit the heads and which are scored."""

    train_data: Path
    train_rows: np.ndarray
    test_rows: np.ndarray
    split: str  # description for the report
    split_sha256: str
    fold: str


def resolve_rows(
    run: Run, dataset: Path, split: str | Path | None, fold: int | str | None, obs_names
) -> EvalRows:
    """Without ``split`` the whole dataset is the test set and heads are fitted on the run's own
    training rows; with a split file, ``fold``'s test rows are scored and its training rows fit
    the heads (default fold: the run's own when it trained on this split file, else 0)."""
    from histoxmodal.data.splits import Split

    n_obs = len(obs_names)
    if split is not None:
        sp = Split.load(split)
        sp.check(obs_names, dataset=dataset)  # a split made for other rows is refused
        if fold is None:
            fold = run.fold if Path(split).resolve() == Path(run.split).resolve() else 0
        f = sp.fold(fold)
        return EvalRows(dataset, f.train(n_obs), f.test, str(split), sp.sha256, f.name)
    sp = run.training_split()
    train_names = _obs_names(run.data)
    sp.check(train_names, dataset=run.data)  # the training dataset may have been rebuilt
    f = sp.fold(run.fold)
    return EvalRows(
        run.data,
        f.train(len(train_names)),
        np.arange(n_obs),
        "whole dataset as test; heads fitted on the run's training spots",
        sp.sha256,
        f.name,
    )


def training_overlap(run: Run, test_names) -> int:
    """How many of ``test_names`` (spot names) were training spots of ``run``.

    Spot names carry their section (``C3:10x12``), so a dataset rebuilt from the same sections
    is caught as well as the run's own.
    """
    run.check_dataset()
    names = _obs_names(run.data)
    trained = set(np.asarray(names, dtype=object)[run.training_fold().train(len(names))])
    return int(sum(str(n) in trained for n in test_names))


def _named(path: str | Path) -> str:
    """``parent/name`` of a folder: ``histoxmodal_demo/run``, not a bare ``run``."""
    p = Path(path).resolve()
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _take(patches, rows: np.ndarray) -> np.ndarray:
    """``patches[rows]`` in the order of ``rows`` (h5py wants increasing indices)."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *patches.shape[1:]), np.uint8)
    out[order] = patches[rows[order]]
    return out


def _standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (x - ref.mean(0)) / np.maximum(ref.std(0), 1e-6)


def _obs_names(data: Path) -> list[str]:
    import anndata as ad

    return list(ad.read_h5ad(Path(data) / keys.PAIRED_ADATA_FILE, backed="r").obs_names)


def evaluate_spatial(run, dataset, out, *, split, fold, in_batch_size, n_genes, allow_overlap):
    """``evaluate`` for a spatial run, in four steps: rows (refusing leaked test spots), the
    embeddings as the heads read them, targets, then every metric beside its chance and
    baseline."""
    from histoxmodal.data.store import load_paired

    run.check_genes(dataset)
    adata, patches = load_paired(dataset)
    rows = resolve_rows(run, dataset, split, fold, adata.obs_names)
    leaked = _check_overlap(run, adata, rows, allow_overlap)
    train_adata, train_patches = (
        (adata, patches) if rows.train_data == dataset else load_paired(rows.train_data)
    )
    v = _spatial_views(run, dataset, adata, train_adata, rows)
    t = _spatial_targets(run, adata, train_adata, rows, n_genes)
    m = _Metrics()
    preds = _score_spatial(m, run, adata, rows, v, t, train_patches, patches, in_batch_size)
    result = {
        "metrics": m.values,
        "protocol": _spatial_protocol(
            run, dataset, rows, leaked, allow_overlap, in_batch_size, t.genes, v
        ),
        "per_gene_pearson": preds["per_gene_pearson"],
        # Moran's I of each gene's predicted (ridge head) and measured map over the test spots
        "per_gene_morans_i": {
            g: {
                "predicted": preds["moran"]["predicted"][g],
                "measured": preds["moran"]["measured"][g],
            }
            for g in t.genes
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / keys.METRICS_FILE, result)
    _write_spatial_report(run, dataset, out, adata, patches, rows, leaked, m.values, result, v, t,
                          preds["ridge"])  # fmt: skip
    return result


def _check_overlap(run, adata, rows, allow_overlap: bool) -> int:
    """The number of test spots the run trained on; refused unless ``allow_overlap``."""
    leaked = training_overlap(run, adata.obs_names[rows.test_rows])
    if leaked and not allow_overlap:
        raise ConfigError(
            f"{leaked} of the {len(rows.test_rows)} test spots ({rows.split}, fold {rows.fold}) "
            f"were training spots of {run.path} (fold {run.fold} of {run.split}): its scores "
            f"would be inflated. Evaluate on the split and fold the run trained on (--split "
            f"{run.split} --fold {run.fold}), or on a dataset of sections it never saw; "
            f"--allow-overlap scores them anyway, stamped in metrics.json and the report"
        )
    if leaked:
        log.warning(
            "%d of the %d test spots were training spots of the run: scores are inflated",
            leaked, len(rows.test_rows),
        )  # fmt: skip
    return leaked


@dataclass
class _Views:
    """The embeddings as each consumer reads them: the expression heads (``x_*``, with the
    config's centring and context), retrieval and the BLEEP head (``ra``/``rb``/``zb_tr``, with
    centring and smoothing), and the raw test embeddings (``za``/``zb``) for batch mixing."""

    inputs: Any
    ret_inputs: Any
    x_tr: np.ndarray
    x_te: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    zb_tr: np.ndarray
    za: np.ndarray
    zb: np.ndarray


def _spatial_views(run, dataset, adata, train_adata, rows) -> _Views:
    from histoxmodal.heads.inputs import HeadInputs

    # the heads' and retrieval's inputs (head.centre, context_um, smooth_um) read whole
    # sections, so then every row is embedded (once when the run trained on this dataset)
    inputs, ret_inputs = HeadInputs.of(run, "ridge"), HeadInputs.of(run, "retrieval")
    if inputs or ret_inputs:
        te_all = run.embed(dataset)
        tr_all = te_all if rows.train_data == dataset else run.embed(rows.train_data)
        tr = {k: v[rows.train_rows] for k, v in tr_all.items()}
        te = {k: v[rows.test_rows] for k, v in te_all.items()}
    else:
        tr = run.embed(rows.train_data, rows.train_rows)
        te = run.embed(dataset, rows.test_rows)
    zb_tr, za, zb = tr["gene"], te["image"], te["gene"]
    x_tr, x_te, ra, rb = tr["image"], za, za, zb
    if inputs:
        x_tr = inputs.of_dataset(tr_all["image"], train_adata, rows.train_rows)
        x_te = inputs.of_dataset(te_all["image"], adata, rows.test_rows)
    if ret_inputs:  # retrieval (metrics and the BLEEP head)
        ra = ret_inputs.of_dataset(te_all["image"], adata, rows.test_rows)
        rb = ret_inputs.of_dataset(te_all["gene"], adata, rows.test_rows)
        zb_tr = ret_inputs.of_dataset(tr_all["gene"], train_adata, rows.train_rows)
    return _Views(inputs, ret_inputs, x_tr, x_te, ra, rb, zb_tr, za, zb)


@dataclass
class _Targets:
    """The genes scored (the training rows' most variable of the panel) and their expression."""

    genes: list[str]
    y_tr: np.ndarray
    y_true: np.ndarray
    samples: np.ndarray  # the test rows' sections
    batch: np.ndarray  # the test rows' batches
    groups_tr: np.ndarray  # the training rows' sections (grouped CV of the heads)


def _spatial_targets(run, adata, train_adata, rows, n_genes: int) -> _Targets:
    from histoxmodal.data.normalize import expression_matrix, top_variable_genes

    genes = [g for g in run.genes if g in adata.var_names]
    y_tr_all = expression_matrix(train_adata, genes, rows=rows.train_rows)
    top = top_variable_genes(y_tr_all, genes, n=n_genes)
    idx = [genes.index(g) for g in top]
    return _Targets(
        top,
        y_tr_all[:, idx],
        expression_matrix(adata, top, rows=rows.test_rows),
        np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))[rows.test_rows],
        np.asarray(adata.obs[keys.OBS_BATCH].astype(str))[rows.test_rows],
        np.asarray(train_adata.obs[keys.OBS_SAMPLE].astype(str))[rows.train_rows],
    )


class _Metrics:
    """``metrics.json``'s flat metrics, each beside its ``_chance`` and ``_baseline``."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def put(self, key: str, value, chance=None, baseline=None) -> None:
        self.values[key] = value
        if chance is not None:
            self.values[f"{key}{CHANCE_SUFFIX}"] = float(chance)
        if baseline is not None:
            self.values[f"{key}{BASELINE_SUFFIX}"] = float(baseline)

    def expression(self, name: str, e: dict, base: dict, mean_mse: float) -> None:
        """A head's expression metrics beside the hand-crafted baseline's (``base``)."""
        self.put(f"expression.{name}.pearson_pooled_mean", e["pooled"]["pearson"], 0.0,
                 base["pooled"]["pearson"])  # fmt: skip
        self.put(f"expression.{name}.spearman_pooled_mean", e["pooled"]["spearman"], 0.0,
                 base["pooled"]["spearman"])  # fmt: skip
        self.put(f"expression.{name}.mse_pooled", e["pooled"]["mse"], mean_mse,
                 base["pooled"]["mse"])  # fmt: skip
        if "per_sample_mean" in e:
            key = f"expression.{name}.pearson_per_sample_mean"
            self.put(key, e["per_sample_mean"]["pearson"], 0.0, base["per_sample_mean"]["pearson"])


def _score_spatial(m: _Metrics, run, adata, rows, v: _Views, t: _Targets, train_patches, patches,
                   in_batch_size: int) -> dict:  # fmt: skip
    """Every spatial metric into ``m``; returns the ridge head's prediction, its per-gene
    Pearson and the Moran's I per gene."""
    from histoxmodal.evaluation.baselines import handcrafted_features, ridge_to_expression_space
    from histoxmodal.evaluation.expression import expression_metrics
    from histoxmodal.heads import MLPHead, RetrievalHead, RidgeHead

    ridge = RidgeHead(pca=256 if v.x_tr.shape[1] > 256 else None)
    y_pred = ridge.fit(v.x_tr, t.y_tr, groups=t.groups_tr).predict(v.x_te)
    # the hand-crafted baseline on the same rows and genes: colour/texture features of the
    # patches, ridge to expression, and ridge to expression's PCs for retrieval
    hc_tr = handcrafted_features(_take(train_patches, rows.train_rows))
    hc_te = handcrafted_features(_take(patches, rows.test_rows))
    hc_pred = (
        RidgeHead()
        .fit(_standardise(hc_tr, hc_tr), t.y_tr, groups=t.groups_tr)
        .predict(_standardise(hc_te, hc_tr))
    )
    pa, pb = ridge_to_expression_space(hc_tr, t.y_tr, hc_te, t.y_true, groups=t.groups_tr)
    if v.ret_inputs:  # the baseline's joint space read the same way (over the test rows)
        from histoxmodal.data.neighbours import spot_coords_um

        xy_te = spot_coords_um(adata, rows.test_rows)
        pa, pb = v.ret_inputs.apply(pa, xy_te, t.samples), v.ret_inputs.apply(pb, xy_te, t.samples)
    h = run.config.head
    _score_retrieval(m, v.ra, v.rb, pa, pb, in_batch_size, h.retrieval_score, h.csls_k)
    expr = expression_metrics(t.y_true, y_pred, t.genes, samples=t.samples)
    base = expression_metrics(t.y_true, hc_pred, t.genes, samples=t.samples)
    # the mean predictor (the training spots' mean expression) knows nothing of the image
    mean_mse = float(((t.y_true - t.y_tr.mean(axis=0)) ** 2).mean())
    m.expression("ridge", expr, base, mean_mse)
    m.values["expression.ridge.alpha"] = ridge.alpha_
    seed = run.config.optim.seed
    for name, head, x_fit, x_pred in (
        ("retrieval", RetrievalHead(k=50), v.zb_tr, v.ra),
        ("mlp", MLPHead(seed=seed), v.x_tr, v.x_te),
    ):
        if name == "retrieval":
            head.fit(x_fit, t.y_tr)
        else:
            head.fit(x_fit, t.y_tr, groups=t.groups_tr)
        e = expression_metrics(t.y_true, head.predict(x_pred), t.genes, samples=t.samples)
        m.expression(name, e, base, mean_mse)
    m.expression("handcrafted_ridge", base, base, mean_mse)
    moran = _score_morans_i(m, adata, rows, t, y_pred, hc_pred)
    if len(set(t.batch)) > 1:
        _score_mixing(m, v, t.batch, _standardise(hc_te, hc_tr))
    per_gene = {g: x["pearson"] for g, x in expr["pooled"]["per_gene"].items()}
    return {"ridge": y_pred, "per_gene_pearson": per_gene, "moran": moran}


#: how the report's summary names the whole-test-set retrieval score (head.retrieval_score)
_SCORED = {
    "ip": "",
    "cosine": "; whole-test-set retrieval by cosine",
    "csls": "; whole-test-set retrieval by CSLS over cosine ({k} neighbours: hubs discounted)",
}


def _score_retrieval(m: _Metrics, ra, rb, pa, pb, in_batch_size: int, score: str = "ip",
                     csls_k: int = 10) -> None:  # fmt: skip
    """Recall@k both ways over the whole test set, scored by ``score`` (``head.retrieval_score``,
    the baseline's the same way), and in batches of ``in_batch_size`` by the inner product, as
    HESCAPE scores them."""
    from histoxmodal.evaluation.retrieval import (
        cross_modal_retrieval,
        in_batch_chance,
        in_batch_recall,
        retrieval_chance,
    )

    n = len(ra)
    kw = {"score": score, "csls_k": csls_k}
    ret, ret_base = cross_modal_retrieval(ra, rb, **kw), cross_modal_retrieval(pa, pb, **kw)
    ret_chance = retrieval_chance(n)
    inb = in_batch_recall(ra, rb, batch_size=in_batch_size)
    inb_base = in_batch_recall(pa, pb, batch_size=in_batch_size)
    inb_chance = in_batch_chance(n, batch_size=in_batch_size)
    for d, short in (("image_to_gene", "i2g"), ("gene_to_image", "g2i")):
        for key, val in ret[d].items():
            name = f"retrieval.full.{short}.{key.lower().replace('r@', 'recall@')}"
            m.put(name, val, ret_chance[key], ret_base[d][key])
        for kk in (1, 5, 10):
            k_ = f"{d}:R@{kk}"
            m.put(f"retrieval.in_batch_B{in_batch_size}.{short}.recall@{kk}", inb[k_],
                  inb_chance[k_], inb_base[k_])  # fmt: skip


def _score_morans_i(m: _Metrics, adata, rows, t: _Targets, y_pred, hc_pred) -> dict:
    """Is the predicted map as smooth as the tissue? Moran's I over each section's spots."""
    from histoxmodal.data.neighbours import spot_coords_um
    from histoxmodal.evaluation.spatial import morans_i, morans_i_summary

    xy_um = spot_coords_um(adata, rows.test_rows)
    moran = {
        name: morans_i(val, xy_um, t.samples, genes=t.genes)
        for name, val in (("predicted", y_pred), ("measured", t.y_true), ("baseline", hc_pred))
    }
    pred = morans_i_summary(moran["predicted"], moran["measured"])
    base = morans_i_summary(moran["baseline"], moran["measured"])
    n = len(rows.test_rows)
    m.put("spatial.morans_i.predicted_mean", pred["predicted_mean"], -1.0 / max(n - 1, 1),
          base["predicted_mean"])  # fmt: skip
    m.put("spatial.morans_i.measured_mean", pred["measured_mean"])
    m.put("spatial.morans_i.difference_mean", pred["difference_mean"], None,
          base["difference_mean"])  # fmt: skip
    return moran


def _score_mixing(m: _Metrics, v: _Views, batch: np.ndarray, hc_te_std: np.ndarray) -> None:
    """Batch mixing of the raw test embeddings, beside random neighbours and the baseline's."""
    from histoxmodal.evaluation.mixing import batch_mixing

    _, counts = np.unique(batch, return_counts=True)
    mixed = {  # what random neighbours give (iLISI: the inverse Simpson index of batches)
        "ilisi": 1.0 / float(((counts / counts.sum()) ** 2).sum()),
        "knn_batch_purity": 1.0,
    }
    hc_mix = batch_mixing(hc_te_std, batch)
    for name, z in (("image", v.za), ("gene", v.zb)):
        for key, val in batch_mixing(z, batch).items():
            m.put(f"batch_mixing.{name}.{key}", val, mixed.get(key),
                  hc_mix[key] if name == "image" else None)  # fmt: skip


def _spatial_protocol(run, dataset, rows, leaked, allow_overlap, in_batch_size, genes, v) -> dict:
    cfg = run.config.to_dict()
    return {
        "run": str(run.path),
        "dataset": str(dataset),
        "split_sha256": rows.split_sha256,
        "split": rows.split,
        "fold": rows.fold,
        "n_test": len(rows.test_rows),
        # test spots the run trained on (scored only with allow_overlap): 0 is a clean split
        "overlap": {"n_test_spots_trained_on": leaked, "allowed": bool(allow_overlap)},
        "in_batch_size": in_batch_size,
        "genes": genes,
        "seed": run.config.optim.seed,
        "head_inputs": asdict(v.inputs),
        "retrieval_inputs": asdict(v.ret_inputs),
        "retrieval_score": {
            "score": run.config.head.retrieval_score,
            "csls_k": run.config.head.csls_k,
        },
        "histoxmodal_version": __version__,
        "baseline": (
            "hand-crafted colour/texture features of the same patches (35 per patch) + ridge, "
            "fitted on the same training rows; for retrieval, ridge onto the first 50 principal "
            "components of the training expression"
        ),
        "chance": (
            "unrelated embeddings: Recall@k = k/n, rank (n+1)/2; correlation 0; MSE of the "
            "training mean; batch mixing of random neighbours"
        ),
        "model": cfg["model"],
        "loss": cfg["loss"],
        "correction": cfg["correction"],
    }


def _write_spatial_report(run, dataset, out, adata, patches, rows, leaked, m, result, v, t,
                          y_pred) -> None:  # fmt: skip
    from histoxmodal.workflows.report import LABEL_COLUMNS, write_report

    xy = np.asarray(adata.obsm[keys.OBSM_SPATIAL], np.float64)[rows.test_rows]
    labels = {
        c: np.asarray(adata.obs[c].astype(str))[rows.test_rows]
        for c in LABEL_COLUMNS
        if c in adata.obs and adata.obs[c].iloc[rows.test_rows].nunique() > 1
    }
    report = _spatial_report(
        run, dataset, rows, m, result["per_gene_pearson"], v.za, v.zb, patches, t.y_true, y_pred,
        t.genes, t.samples, xy, labels, adata.uns.get(keys.UNS_SPATIAL, {}),
    )  # fmt: skip
    if leaked:
        report.warnings.insert(
            0,
            f"{leaked} of the {len(rows.test_rows)} test spots were training spots of this run "
            "(scored with allow_overlap): these numbers are inflated and not a held-out result.",
        )
    write_report(out / keys.REPORT_FILE, report)


def _section_image(spatial: dict, sample: str, xy: np.ndarray):
    """The H&E of ``sample`` from ``uns['spatial']`` (hires, else lowres) with the spots mapped
    onto it: ``(image, xy in its pixels, spot side in its pixels, µm per pixel)``; without an
    image, a blank canvas over the spots' extent (no scale bar unless the pixel size is known)."""
    entry = spatial.get(sample) or {}
    images, scal = entry.get("images", {}), entry.get("scalefactors", {})
    mpp = (entry.get("metadata") or {}).get("mpp")
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) if 1 < len(xy) <= 5000 else None
    pitch = float(np.median(np.where(d > 0, d, np.inf).min(1))) if d is not None else 10.0
    diameter = float(scal.get(keys.SPOT_DIAMETER) or 0.8 * pitch)
    for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
        if key in images and scal.get(sf):
            f = float(scal[sf])
            return np.asarray(images[key]), xy * f, diameter * f, (mpp / f if mpp else None)
    lo = xy.min(0) - pitch
    span = xy.max(0) + pitch - lo
    f = 800.0 / max(float(span.max()), 1e-9)
    w, h = (np.ceil(span * f).astype(int) + 1).tolist()
    canvas = np.full((h, w, 3), 245, np.uint8)
    return canvas, (xy - lo) * f, diameter * f, (mpp / f if mpp else None)


def _spatial_report(
    run, dataset, rows, m, per_gene, za, zb, patches, y_true, y_pred, top, samples, xy, labels,
    spatial,
) -> Report:  # fmt: skip
    """The spatial report: grouped tables with chance and baseline, warnings, figures."""
    n = len(rows.test_rows)
    figures = [
        Figure(
            "Retrieval examples",
            figure_png(retrieval_figure(za, zb, patches, rows.test_rows)),
            "Each row: an image query, the spots whose gene embedding scores highest for it "
            "(drawn as their images; the query's own spot in green) and the rank of its true "
            f"match among the {n} test spots (chance: a uniform rank, median {(n + 1) / 2:g}).",
        )
    ]
    first = str(samples[0])
    sel = samples == first
    best = sorted(top, key=lambda g: -np.nan_to_num(per_gene[g], nan=-2.0))[:3]
    idx = [top.index(g) for g in best]
    thumb, sxy, spot_px, um_px = _section_image(spatial, first, xy[sel])
    fig = expression_maps_figure(
        thumb, sxy, y_true[sel][:, idx], y_pred[sel][:, idx], best, spot_px,
        um_per_px=um_px, section=first,
    )  # fmt: skip
    figures.append(
        Figure(
            "Measured and predicted expression",
            figure_png(fig),
            f"The 3 best-predicted genes (ridge head) on section {first}"
            + (", over its H&E" if thumb.std() > 0 else " (no image in the dataset)")
            + "; each gene's two maps share one colour scale.",
        )
    )
    figures.append(
        Figure(
            "Per-gene Pearson",
            figure_png(pearson_histogram(per_gene)),
            "Correlation of predicted with measured expression, per gene, over all test spots "
            "(chance: 0).",
        )
    )
    colourings = ({"sample": samples} if len(set(samples)) > 1 else {}) | labels
    if len(za) >= 3 and za.shape[1] >= 2:
        figures.append(
            Figure(
                "Embeddings (PCA)",
                figure_png(embedding_figure(za, zb, colourings or {"sample": samples})),
                "Image and gene embeddings of the test spots in one PCA projection, coloured by "
                + " and by ".join(
                    "section" if k == "sample" else k for k in (colourings or {"sample": 0})
                )
                + (" (one section)" if len(set(samples)) == 1 else "")
                + "; spots without a label are grey, and the legend counts each.",
            )
        )
    warnings = embedding_warnings({"image": za, "gene": zb}, m, n)
    h = run.config.head
    reads = [w for w, on in (("section-centred", h.centre), (f"{h.context_um:g} µm neighbour "
             "context", h.context_um > 0)) if on]  # fmt: skip
    cfg = run.config.to_dict()
    return Report(
        title=f"Evaluation of {_named(run.path)} on {_named(dataset)}",
        summary=(
            f"{rows.split} (fold {rows.fold}); {n} test spots; heads fitted on "
            f"{len(rows.train_rows)} training spots"
            + (f" (ridge and MLP read {', '.join(reads)} embeddings)" if reads else "")
            + _SCORED[h.retrieval_score].format(k=h.csls_k)
            + f"; expression on the {len(top)} most variable "
            "genes of the training spots. Chance: what embeddings unrelated to their partners "
            "score; baseline: hand-crafted colour/texture features of the same patches + ridge."
        ),
        tables=metric_tables({"value": m}),
        figures=figures,
        warnings=warnings,
        provenance=provenance(
            run=run.path,
            dataset=dataset,
            split=f"{rows.split}, fold {rows.fold}",
            split_sha256=rows.split_sha256,
            training_dataset=str(Path(rows.train_data).resolve()),
        ),
        config=cfg,
    )
