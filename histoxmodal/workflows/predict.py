"""``hx.predict``: expression predicted from a run's image embeddings by a registered head.

Two ways:

- :func:`fit_expression_head` fits a head on the run's own training rows and saves it with the
  run (``RUN/heads/<name>/``), so the run predicts afterwards without its training dataset;
- :func:`predict_expression` predicts the rows of a dataset, with a head saved with the run, or
  with one fitted now on the training rows of a split fold of that dataset.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.data.normalize import DEFAULT_NORMALIZATION
from histoxmodal.errors import ConfigError
from histoxmodal.heads.inputs import HeadInputs  # re-exported: what fit-head passes in
from histoxmodal.training.config import EXPRESSION_HEADS
from histoxmodal.workflows.run import Run


def _fit(head: str, za, zb, y, groups, seed: int):
    from histoxmodal.heads import create_head

    if head not in EXPRESSION_HEADS:
        raise ConfigError(f"head={head!r}: expected one of {', '.join(EXPRESSION_HEADS)}")
    h = create_head(head, **({"seed": seed} if head == "mlp" else {}))
    if head == "retrieval":
        # BLEEP: image queries against the training spots' gene embeddings
        return h.fit(zb, y)
    return h.fit(za, y, groups=groups)


def _panel_targets(run: Run, adata, rows, genes, n_genes: int) -> list[str]:
    from histoxmodal.data.normalize import expression_matrix, top_variable_genes

    panel = [g for g in run.genes if g in adata.var_names]
    if genes is None:
        return top_variable_genes(expression_matrix(adata, panel, rows=rows), panel, n=n_genes)
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise ConfigError(f"genes not in the dataset: {missing[:5]}")
    return list(genes)


def head_genes(run: Run, name: str, fitted) -> list[str]:
    """The genes the saved head ``name`` predicts (from its ``head.json``), or one clear error
    for a head that names none (not an expression head)."""
    if not fitted.outputs:
        raise ConfigError(
            f"{run.path / keys.RUN_HEADS_DIR / name} names no predicted genes: it is not an "
            f"expression head; fit one with `histoxmodal fit-head {run.path}`"
        )
    return list(fitted.outputs)


def check_spatial(run: Run) -> None:
    """Refuse a run that has no image-to-expression path (a cohort run), saying what it has."""
    if not run.run_kind.image_to_expression:
        raise ConfigError(
            f"{run.path} is a {run.kind} run: it aligns patient-level modalities and has no "
            "image-to-expression path, so expression heads, `fit-head` and `predict` do not "
            f"apply; evaluate it with `histoxmodal evaluate {run.path} --data DATASET`"
        )


def fit_expression_head(
    run: str | Path | Run,
    *,
    head: str = "ridge",
    genes: list[str] | None = None,
    n_genes: int = 50,
    name: str | None = None,
    inputs: HeadInputs | None = None,
):
    """Fit an expression head on the run's training rows and save it with the run.

    Parameters
    ----------
    run
        A spatial run folder or :class:`Run`.
    head
        ``ridge``, ``mlp`` or ``retrieval`` (see :func:`histoxmodal.heads.describe_head`).
    genes, n_genes
        Genes to predict; default the ``n_genes`` most variable of the training rows.
    name
        Saved as ``RUN/heads/<name>``; default ``expression_<head>``.
    inputs
        What the head reads (:class:`HeadInputs`: section centring, neighbour context);
        default the run config's ``head.centre`` and ``head.context_um``. The head carries it
        (``head.inputs``, saved in its ``head.json``) with the genes it predicts
        (``head.outputs``), so ``run.load_head(name).predict(z, coords_um=..., groups=...)``
        reads the same.

    Returns
    -------
    Head
        The fitted head (also in ``run.load_head(name)``).
    """
    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.store import load_paired

    run = run if isinstance(run, Run) else Run.load(run)
    check_spatial(run)
    run.check_dataset()  # the training rows are read from the run's dataset
    adata, _ = load_paired(run.data)
    tr = run.training_fold().train(adata.n_obs)
    targets = _panel_targets(run, adata, tr, genes, n_genes)
    y = expression_matrix(adata, targets, rows=tr)
    inputs = HeadInputs.of(run, head) if inputs is None else inputs.for_head(head)
    # with centring or context, every spot's embedding: whole sections are read
    z = run.embed(run.data, None if inputs else tr)
    rows = tr if inputs else None
    x = inputs.of_dataset(z["image"], adata, rows)
    zb = inputs.of_dataset(z["gene"], adata, rows) if head == "retrieval" else None
    groups = np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))[tr]
    fitted = _fit(head, x, zb, y, groups, run.config.optim.seed)
    fitted.reading(inputs).predicting(targets, DEFAULT_NORMALIZATION)
    run.save_head(name or f"expression_{head}", fitted, fold=run.fold)
    return fitted


def predict_expression(
    run: str | Path | Run,
    dataset: str | Path,
    *,
    head: str = "ridge",
    split: str | Path | None = None,
    fold: int | str = 0,
    genes: list[str] | None = None,
    layer: str = "predicted",
):
    """Predict the expression of a dataset's spots from their image embeddings.

    Parameters
    ----------
    run
        A spatial run folder or :class:`Run`.
    dataset
        A paired dataset (``histoxmodal build``).
    head
        The name of a head saved with the run (:func:`fit_expression_head`, e.g.
        ``"expression_ridge"``): every row of ``dataset`` (or the test rows of ``split``'s
        ``fold``) is predicted and the training data is not read. Otherwise a head type,
        ``"ridge"`` (closed form, penalty by grouped CV), ``"mlp"`` (early stopping on held-out
        samples) or ``"retrieval"`` (BLEEP), fitted now on the training rows of ``fold`` of
        ``split`` (default: the dataset's random split) and predicting its test rows.
    split, fold
        Split file and fold (index or name, e.g. ``"sample=C5"``).
    genes
        Genes to predict (a fitted-now head; default: the 50 most variable of the training
        rows).
    layer
        Layer of the returned AnnData that holds the predictions.

    Returns
    -------
    anndata.AnnData
        The predicted rows with the predicted genes: ``X`` and ``layers['measured']`` the
        measured log1p-CP10k expression, ``layers[layer]`` the prediction ``(n, n_genes)``,
        ``obsm['X_image']`` the image embeddings; ``uns['prediction']`` names head, split, fold
        and what the head read (:class:`HeadInputs`, from the saved head or the config).
    """
    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.splits import Split
    from histoxmodal.data.store import load_paired

    run = run if isinstance(run, Run) else Run.load(run)
    run.check_genes(dataset)
    adata, _ = load_paired(dataset)
    sp = Split.load(split) if split else Split.of_dataset(dataset, "random")
    sp.check(adata.obs_names, dataset=dataset)
    chosen = sp.fold(fold)
    if head in run.heads:
        fitted = run.load_head(head)
        genes = head_genes(run, head, fitted)
        rows = chosen.test if split else np.arange(adata.n_obs)
        # centring or context read whole sections: every spot is embedded, then ``rows`` kept
        whole = bool(fitted.inputs)
        za = run.embed(dataset, None if whole else rows)["image"]
        y_pred = fitted.predict(za, **fitted.inputs.layout(adata))
        za, y_pred = (za[rows], y_pred[rows]) if whole else (za, y_pred)
        inputs = fitted.inputs
        fold_name = chosen.name if split else "all rows"
    else:
        tr, rows = chosen.train(adata.n_obs), chosen.test
        genes = _panel_targets(run, adata, tr, genes, 50)
        inputs = HeadInputs.of(run, head)
        z = run.embed(dataset)
        groups = np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))[tr]
        y_tr = expression_matrix(adata, genes, rows=tr)
        xall = inputs.of_dataset(z["image"], adata)
        zb = inputs.of_dataset(z["gene"], adata, tr) if head == "retrieval" else None
        fitted = _fit(head, xall[tr], zb, y_tr, groups, run.config.optim.seed)
        za, y_pred = z["image"][rows], fitted.predict(xall[rows])
        fold_name = chosen.name
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise ConfigError(f"genes not in the dataset: {missing[:5]}")
    y = expression_matrix(adata, genes, rows=rows)
    out = adata[rows, genes].copy()
    out.X = y
    out.layers["measured"] = y
    out.layers[layer] = np.asarray(y_pred, np.float32)
    out.obsm["X_image"] = za
    out.uns["prediction"] = {
        "head": head,
        **asdict(inputs),
        "split": str(sp.path),
        "fold": fold_name,
        "run": str(run.path),
    }
    return out
