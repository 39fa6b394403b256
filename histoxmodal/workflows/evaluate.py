"""``histoxmodal evaluate``: a trained run's metrics on a dataset, as ``metrics.json`` and a
self-contained HTML report.

Spatial runs: cross-modal retrieval (whole test set and in-batch), expression prediction from
image embeddings by three heads fitted on training spots (ridge, MLP, BLEEP-style retrieval) and
batch mixing. Cohort runs: Symile's zero-shot protocol and pairwise retrieval on held-out
patients. The metrics themselves are array functions in :mod:`histoxmodal.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.fileutil import write_json_atomic
from histoxmodal.workflows.run import Run


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


def _obs_names(data: Path) -> list[str]:
    import anndata as ad

    return list(ad.read_h5ad(Path(data) / keys.PAIRED_ADATA_FILE, backed="r").obs_names)


def evaluate(
    run: str | Path | Run,
    dataset: str | Path,
    out: str | Path,
    *,
    split: str | Path | None = None,
    fold: int | str | None = None,
    in_batch_size: int = 128,
    n_genes: int = 50,
    k: int = 10,
    seed: int = 0,
) -> dict[str, object]:
    """Evaluate ``run`` on ``dataset``; writes ``out/metrics.json`` and ``out/report.html``.

    Parameters
    ----------
    run
        A run folder or :class:`~histoxmodal.workflows.run.Run`, spatial or cohort.
    dataset
        A paired dataset (spatial runs) or cohort store (cohort runs).
    split, fold
        Spatial runs: see :func:`resolve_rows`. Cohort runs are scored on the held-out patients
        of their patient split.
    in_batch_size
        Batch size of the in-batch retrieval protocol (spatial).
    n_genes
        Expression is scored on the ``n_genes`` most variable genes of the training rows.
    k, seed
        Candidates per zero-shot query and the seed of their draw (cohort).

    Returns
    -------
    dict
        ``{"metrics": {flat dotted keys: float}, "protocol": {...}}`` (spatial results also
        carry ``per_gene_pearson``), as written to ``metrics.json``.
    """
    run = run if isinstance(run, Run) else Run.load(run)
    dataset, out = Path(dataset), Path(out)
    if run.kind == "cohort":
        return _evaluate_cohort(run, dataset, out, k=k, seed=seed)
    return _evaluate_spatial(
        run, dataset, out, split=split, fold=fold, in_batch_size=in_batch_size, n_genes=n_genes
    )


def _evaluate_spatial(run, dataset, out, *, split, fold, in_batch_size, n_genes):
    from histoxmodal.data.normalize import expression_matrix, top_variable_genes
    from histoxmodal.data.store import load_paired
    from histoxmodal.evaluation.expression import expression_metrics
    from histoxmodal.evaluation.mixing import batch_mixing
    from histoxmodal.evaluation.retrieval import cross_modal_retrieval, in_batch_recall
    from histoxmodal.heads import MLPHead, RetrievalHead, RidgeHead
    from histoxmodal.workflows.report import spatial_figures, write_report

    run.check_genes(dataset)
    adata, patches = load_paired(dataset)
    rows = resolve_rows(run, dataset, split, fold, adata.obs_names)
    train_adata = adata if rows.train_data == dataset else load_paired(rows.train_data)[0]
    tr = run.embed(rows.train_data, rows.train_rows)
    te = run.embed(dataset, rows.test_rows)
    za_tr, zb_tr, za, zb = tr["image"], tr["gene"], te["image"], te["gene"]
    genes = [g for g in run.genes if g in adata.var_names]
    y_tr_all = expression_matrix(train_adata, genes, rows=rows.train_rows)
    top = top_variable_genes(y_tr_all, genes, n=n_genes)
    idx = [genes.index(g) for g in top]
    y_tr = y_tr_all[:, idx]
    y_true = expression_matrix(adata, top, rows=rows.test_rows)
    samples = np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))[rows.test_rows]
    batch = np.asarray(adata.obs[keys.OBS_BATCH].astype(str))[rows.test_rows]
    groups_tr = np.asarray(train_adata.obs[keys.OBS_SAMPLE].astype(str))[rows.train_rows]
    seed = run.config.optim.seed

    ridge = RidgeHead(pca=256 if za.shape[1] > 256 else None).fit(za_tr, y_tr, groups=groups_tr)
    y_pred = ridge.predict(za)
    ret = cross_modal_retrieval(za, zb)
    inb = in_batch_recall(za, zb, batch_size=in_batch_size)
    expr = expression_metrics(y_true, y_pred, top, samples=samples)
    m: dict[str, object] = {}
    for d, short in (("image_to_gene", "i2g"), ("gene_to_image", "g2i")):
        for key, v in ret[d].items():
            m[f"retrieval.full.{short}.{key.lower().replace('r@', 'recall@')}"] = v
        for kk in (1, 5, 10):
            m[f"retrieval.in_batch_B{in_batch_size}.{short}.recall@{kk}"] = inb[f"{d}:R@{kk}"]
    m["expression.ridge.pearson_pooled_mean"] = expr["pooled"]["pearson"]
    m["expression.ridge.spearman_pooled_mean"] = expr["pooled"]["spearman"]
    m["expression.ridge.mse_pooled"] = expr["pooled"]["mse"]
    if "per_sample_mean" in expr:
        m["expression.ridge.pearson_per_sample_mean"] = expr["per_sample_mean"]["pearson"]
    m["expression.ridge.alpha"] = ridge.alpha_
    for name, head, x_fit in (
        ("retrieval", RetrievalHead(k=50), zb_tr),
        ("mlp", MLPHead(seed=seed), za_tr),
    ):
        if name == "retrieval":
            head.fit(x_fit, y_tr)
        else:
            head.fit(x_fit, y_tr, groups=groups_tr)
        e = expression_metrics(y_true, head.predict(za), top, samples=samples)
        m[f"expression.{name}.pearson_pooled_mean"] = e["pooled"]["pearson"]
        m[f"expression.{name}.mse_pooled"] = e["pooled"]["mse"]
    if len(set(batch)) > 1:
        for name, z in (("image", za), ("gene", zb)):
            for key, v in batch_mixing(z, batch).items():
                m[f"batch_mixing.{name}.{key}"] = v
    cfg = run.config.to_dict()
    protocol = {
        "run": str(run.path),
        "dataset": str(dataset),
        "split_sha256": rows.split_sha256,
        "split": rows.split,
        "fold": rows.fold,
        "n_test": len(rows.test_rows),
        "in_batch_size": in_batch_size,
        "genes": top,
        "seed": seed,
        "model": cfg["model"],
        "loss": cfg["loss"],
        "correction": cfg["correction"],
    }
    result = {
        "metrics": m,
        "protocol": protocol,
        "per_gene_pearson": {g: v["pearson"] for g, v in expr["pooled"]["per_gene"].items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / keys.METRICS_FILE, result)
    figs = spatial_figures(
        za,
        zb,
        patches,
        rows.test_rows,
        y_true,
        y_pred,
        top,
        result["per_gene_pearson"],
        samples,
        np.asarray(adata.obsm[keys.OBSM_SPATIAL])[rows.test_rows],
    )
    write_report(
        out / keys.REPORT_FILE,
        title=f"Evaluation of {run.path.name} on {dataset.name}",
        summary=(
            f"{protocol['split']}; {protocol['n_test']} test spots; split sha256 "
            f"{rows.split_sha256[:16]}…"
        ),
        columns=["value"],
        rows=[(k, [v]) for k, v in m.items()],
        figures=figs,
    )
    return result


def _evaluate_cohort(run: Run, dataset: Path, out: Path, *, k: int, seed: int):
    from histoxmodal.data.splits import Split
    from histoxmodal.evaluation.zeroshot import cohort_metrics
    from histoxmodal.workflows.report import write_cohort_report

    sp = Split.load(dataset / keys.split_path("patient"))
    fold = sp.fold(0)
    z = run.embed(dataset, fold.test)
    present = z.pop(keys.BATCH_PRESENT)
    loss = run.config.loss.name
    m, scorer = cohort_metrics(z, present, loss=loss, k=k, seed=seed)
    protocol = {
        "run": str(run.path),
        "dataset": str(dataset),
        "split_sha256": sp.sha256,
        "n_test": len(fold.test),
        "k": k,
        "chance": 1.0 / k,
        "scorer": scorer,
        "seed": seed,
        "config": run.config.to_dict(),
    }
    result = {"metrics": m, "protocol": protocol}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / keys.METRICS_FILE, result)
    write_cohort_report(out / keys.REPORT_FILE, [result])
    return result
