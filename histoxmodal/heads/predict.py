"""One API for expression prediction: fit a head on a trained run's image embeddings of a
dataset split, predict into an AnnData layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError

HEADS = ("ridge", "mlp", "retrieval")


def predict_expression(
    run: str | Path,
    dataset: str | Path,
    *,
    head: str = "ridge",
    split: str | Path | None = None,
    fold: int | str = 0,
    genes: list[str] | None = None,
    layer: str = "predicted",
):
    """Fit ``head`` on the training rows of ``split``/``fold`` and predict every test row.

    Parameters
    ----------
    run
        A training run folder (``histoxmodal train``).
    dataset
        A paired dataset (``histoxmodal build``).
    head
        ``"ridge"`` (closed form, penalty by grouped CV), ``"mlp"`` (early stopping on held-out
        samples) or ``"retrieval"`` (BLEEP: weighted expression of the nearest training spots
        by gene embedding).
    split, fold
        Split file and fold (index or name, e.g. ``"sample=C5"``); default: the dataset's
        random split.
    genes
        Genes to predict (default: the 50 most variable of the training rows).
    layer
        Layer of the returned AnnData that holds the predictions.

    Returns
    -------
    anndata.AnnData
        The test rows with the predicted genes: ``X`` and ``layers['measured']`` the measured
        log1p-CP10k expression, ``layers[layer]`` the prediction ``(n_test, n_genes)``,
        ``obsm['X_image']`` the image embeddings; ``uns['prediction']`` names head, split, fold.
    """
    from histoxmodal.data.paired import load_paired
    from histoxmodal.data.splits import load_split, split_file
    from histoxmodal.evaluation.expression import top_variable_genes
    from histoxmodal.evaluation.report import _log_cp10k
    from histoxmodal.heads.expression import MLPHead, RetrievalHead, RidgeHead
    from histoxmodal.training.fit import compute_embeddings, load_run

    if head not in HEADS:
        raise ConfigError(f"head={head!r}: expected one of {', '.join(HEADS)}")
    module = load_run(run)
    adata, _ = load_paired(dataset)
    split = Path(split) if split else split_file(dataset, "random")
    folds = load_split(split)
    names = [f.name for f in folds]
    if isinstance(fold, str) and fold not in names:
        raise ConfigError(f"fold {fold!r} not in {split}; folds: {', '.join(names)}")
    chosen = folds[names.index(fold)] if isinstance(fold, str) else folds[fold]
    tr, te = chosen.train(adata.n_obs), chosen.test
    panel = [g for g in module.gene.genes if g in adata.var_names]
    if genes is None:
        genes = top_variable_genes(_log_cp10k(adata[tr], panel), panel, n=50)
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise ConfigError(f"genes not in the dataset: {missing[:5]}")
    y_tr, y_te = _log_cp10k(adata[tr], genes), _log_cp10k(adata[te], genes)
    za, zb = compute_embeddings(module, dataset)
    groups = np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))[tr]
    if head == "ridge":
        pred = RidgeHead().fit(za[tr], y_tr, groups=groups).predict(za[te])
    elif head == "mlp":
        pred = MLPHead().fit(za[tr], y_tr, groups=groups).predict(za[te])
    else:
        pred = RetrievalHead().fit(zb[tr], y_tr).predict(za[te])
    out = adata[te, genes].copy()
    out.X = y_te
    out.layers["measured"] = y_te
    out.layers[layer] = np.asarray(pred, np.float32)
    out.obsm["X_image"] = za[te]
    out.uns["prediction"] = {
        "head": head,
        "split": str(split),
        "fold": chosen.name,
        "run": str(run),
    }
    return out
