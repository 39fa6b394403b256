"""``histoxmodal evaluate``: metrics of a trained run on a dataset, as ``metrics.json`` (flat,
self-explaining keys) and a self-contained HTML report with tables and figures."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal._fileutil import write_json_atomic
from histoxmodal.errors import ConfigError


def _log_cp10k(adata, genes: list[str]) -> np.ndarray:
    import scipy.sparse as sp

    x = sp.csr_matrix(adata.X, dtype=np.float64)
    tot = np.asarray(x.sum(axis=1)).ravel()
    x = sp.diags(1e4 / np.maximum(tot, 1)) @ x
    sub = x[:, [adata.var_names.get_loc(g) for g in genes]].toarray()
    return np.log1p(sub)


def _figure(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def evaluate(
    run: str | Path,
    dataset: str | Path,
    out: str | Path,
    *,
    split: str | Path | None = None,
    fold: int | str | None = None,
    in_batch_size: int = 128,
    n_genes: int = 50,
) -> dict[str, object]:
    """Evaluate ``run`` on ``dataset``; writes ``out/metrics.json`` and ``out/report.html``.

    Without ``split`` the whole dataset is the test set and the ridge head is fitted on the
    run's own training spots (its dataset's random split, train part); with a split file, the
    test rows of ``fold`` (index or name such as ``"sample=C5"``; default: the fold the run was
    trained on when it used this split file, else fold 0) are the test set and its train rows
    fit the heads. Heads: ridge (closed form, penalty by grouped CV), an MLP (early stopping on
    held-out training samples) and BLEEP-style retrieval over the training spots' gene
    embeddings.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histoxmodal.data.paired import load_paired
    from histoxmodal.data.splits import load_split, split_file
    from histoxmodal.evaluation.expression import expression_metrics, top_variable_genes
    from histoxmodal.evaluation.mixing import batch_mixing
    from histoxmodal.evaluation.retrieval import cross_modal_retrieval, in_batch_recall
    from histoxmodal.heads.expression import MLPHead, RetrievalHead, RidgeHead
    from histoxmodal.training.fit import RUN_CONFIG, compute_embeddings, load_run

    run, dataset, out = Path(run), Path(dataset), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = load_run(run)
    run_cfg = json.loads((run / RUN_CONFIG).read_text())
    adata, patches = load_paired(dataset)
    if split is not None:
        folds = load_split(split)
        if fold is None:
            same = (
                run_cfg.get("split") and Path(run_cfg["split"]).resolve() == Path(split).resolve()
            )
            fold = run_cfg.get("fold", 0) if same else 0
        names = [f.name for f in folds]
        if isinstance(fold, str) and fold not in names:
            raise ConfigError(f"fold {fold!r} not in {split}; folds: {', '.join(names)}")
        chosen = folds[names.index(fold)] if isinstance(fold, str) else folds[fold]
        test_rows, train_rows, train_data = chosen.test, chosen.train(adata.n_obs), dataset
        split_sha = json.loads(Path(split).read_text())["sha256"]
    else:
        test_rows = np.arange(adata.n_obs)
        train_data = Path(run_cfg["data"])
        tr_split = Path(run_cfg.get("split") or split_file(train_data, "random"))
        folds = load_split(tr_split)
        fold_id = run_cfg.get("fold", 0)
        chosen = (
            folds[[f.name for f in folds].index(fold_id)]
            if isinstance(fold_id, str)
            else folds[fold_id]
        )
        train_rows = chosen.train(load_paired(train_data)[0].n_obs)
        split_sha = json.loads(tr_split.read_text())["sha256"]
    train_adata = load_paired(train_data)[0]
    za_tr, zb_tr = compute_embeddings(module, train_data, train_rows)
    za, zb = compute_embeddings(module, dataset, test_rows)
    genes = [g for g in module.gene.genes if g in adata.var_names]
    y_tr_all = _log_cp10k(train_adata[train_rows], genes)
    top = top_variable_genes(y_tr_all, genes, n=n_genes)
    idx = [genes.index(g) for g in top]
    ridge = RidgeHead(pca=256 if za.shape[1] > 256 else None).fit(
        za_tr, y_tr_all[:, idx], groups=np.asarray(train_adata.obs[keys.OBS_SAMPLE])[train_rows]
    )
    y_true = _log_cp10k(adata[test_rows], top)
    y_pred = ridge.predict(za)
    samples = np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))[test_rows]
    batch = np.asarray(adata.obs[keys.OBS_BATCH].astype(str))[test_rows]
    ret = cross_modal_retrieval(za, zb)
    inb = in_batch_recall(za, zb, batch_size=in_batch_size)
    expr = expression_metrics(y_true, y_pred, top, samples=samples)
    m: dict[str, object] = {}
    for d, short in (("image_to_gene", "i2g"), ("gene_to_image", "g2i")):
        for k, v in ret[d].items():
            m[f"retrieval.full.{short}.{k.lower().replace('r@', 'recall@')}"] = v
        for k in (1, 5, 10):
            m[f"retrieval.in_batch_B{in_batch_size}.{short}.recall@{k}"] = inb[f"{d}:R@{k}"]
    m["expression.ridge.pearson_pooled_mean"] = expr["pooled"]["pearson"]
    m["expression.ridge.spearman_pooled_mean"] = expr["pooled"]["spearman"]
    m["expression.ridge.mse_pooled"] = expr["pooled"]["mse"]
    if "per_sample_mean" in expr:
        m["expression.ridge.pearson_per_sample_mean"] = expr["per_sample_mean"]["pearson"]
    m["expression.ridge.alpha"] = ridge.alpha_
    bleep = RetrievalHead(k=50).fit(zb_tr, y_tr_all[:, idx])
    expr_r = expression_metrics(y_true, bleep.predict(za), top, samples=samples)
    m["expression.retrieval.pearson_pooled_mean"] = expr_r["pooled"]["pearson"]
    m["expression.retrieval.mse_pooled"] = expr_r["pooled"]["mse"]
    groups_tr = np.asarray(train_adata.obs[keys.OBS_SAMPLE])[train_rows]
    mlp = MLPHead(seed=run_cfg["optim"]["seed"]).fit(za_tr, y_tr_all[:, idx], groups=groups_tr)
    expr_m = expression_metrics(y_true, mlp.predict(za), top, samples=samples)
    m["expression.mlp.pearson_pooled_mean"] = expr_m["pooled"]["pearson"]
    m["expression.mlp.mse_pooled"] = expr_m["pooled"]["mse"]
    if len(set(batch)) > 1:
        for name, z in (("image", za), ("gene", zb)):
            for k, v in batch_mixing(z, batch).items():
                m[f"batch_mixing.{name}.{k}"] = v
    protocol = {
        "run": str(run),
        "dataset": str(dataset),
        "split_sha256": split_sha,
        "split": str(split)
        if split
        else "whole dataset as test; heads fitted on the run's training spots",
        "n_test": len(test_rows),
        "in_batch_size": in_batch_size,
        "genes": top,
        "seed": run_cfg["optim"]["seed"],
        "model": run_cfg["model"],
        "loss": run_cfg["loss"],
        "correction": run_cfg["correction"],
    }
    result = {
        "metrics": m,
        "protocol": protocol,
        "per_gene_pearson": {g: v["pearson"] for g, v in expr["pooled"]["per_gene"].items()},
    }
    write_json_atomic(out / "metrics.json", result)
    # ---- figures
    figs = {}
    sim = za @ zb.T
    fig, axes = plt.subplots(3, 6, figsize=(12, 6.4))
    for r, q in enumerate(np.random.default_rng(0).choice(len(za), 3, replace=False)):
        best = np.argsort(-sim[q])[:5]
        axes[r, 0].imshow(patches[test_rows[q]])
        axes[r, 0].set_title("query", fontsize=8)
        for c, j in enumerate(best, start=1):
            axes[r, c].imshow(patches[test_rows[j]])
            axes[r, c].set_title(
                ("match" if j == q else f"#{c}") + f" {sim[q, j]:.2f}",
                fontsize=8,
                color="green" if j == q else "black",
            )
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle("image query and its top-5 spots by gene embedding")
    figs["Retrieval examples"] = _figure(fig)
    best_genes = sorted(top, key=lambda g: -np.nan_to_num(result["per_gene_pearson"][g]))[:3]
    first = samples[0]
    sel = samples == first
    xy = np.asarray(adata.obsm[keys.OBSM_SPATIAL])[test_rows][sel]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for c, g in enumerate(best_genes):
        j = top.index(g)
        for r, (vals, lab) in enumerate(
            ((y_true[sel, j], "measured"), (y_pred[sel, j], "predicted"))
        ):
            axes[r, c].scatter(xy[:, 0], xy[:, 1], c=vals, s=12, cmap="viridis")
            axes[r, c].invert_yaxis()
            axes[r, c].set_title(f"{g} {lab}", fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle(f"sample {first}: measured vs predicted expression (log1p CP10k)")
    figs["Predicted vs measured expression"] = _figure(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([v for v in result["per_gene_pearson"].values() if np.isfinite(v)], bins=20)
    ax.set_xlabel(f"Pearson r (top {len(top)} genes)")
    ax.set_ylabel("genes")
    figs["Per-gene Pearson"] = _figure(fig)
    try:
        from sklearn.decomposition import PCA

        pc = PCA(2).fit_transform(np.concatenate([za, zb]))
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for u in np.unique(samples):
            s = samples == u
            axes[0].scatter(pc[: len(za)][s, 0], pc[: len(za)][s, 1], s=5, label=u)
            axes[1].scatter(pc[len(za) :][s, 0], pc[len(za) :][s, 1], s=5, label=u)
        axes[0].set_title("image embeddings by sample")
        axes[1].set_title("gene embeddings by sample")
        axes[1].legend(fontsize=7, markerscale=2)
        figs["Embeddings (PCA) coloured by sample"] = _figure(fig)
    except ValueError:
        pass
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
        for k, v in m.items()
    )
    imgs = "".join(
        f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'/>" for t, b in figs.items()
    )
    page = (
        f"<!doctype html><meta charset='utf-8'><title>histoxmodal evaluation</title>"
        f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}"
        f"td{{padding:2px 10px;border-bottom:1px solid #ddd}}</style>"
        f"<h1>Evaluation of {html.escape(run.name)} on {html.escape(dataset.name)}</h1>"
        f"<p>{html.escape(protocol['split'])}; {protocol['n_test']} test spots; split "
        f"sha256 {split_sha[:16]}…</p><table>{rows}</table>{imgs}"
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    return result
