"""Heads on real labels: pathologist regions from gene embeddings with whole patients held out
(her2st), and a bulk mutation label (NCI-60 p53) predicted through a gene tower pretrained on
spatial spots.

These are experiments, not metrics: they fit gene embedders (:mod:`histoxmodal.encoders.embedders`)
per fold and score them with the protocols of :mod:`histoxmodal.evaluation` (the spot-label
probe of :mod:`histoxmodal.evaluation.probe`, patient-level cross-validation of
:mod:`histoxmodal.evaluation.classification`). Every function takes arrays or AnnData the caller
provides (read with :func:`~histoxmodal.io.spatial.st.read_her2st_pathology` and
:func:`~histoxmodal.io.bulk.read_nci60_p53`) and returns
``{"metrics": {flat dotted keys: float}, "protocol": {...}}``, the layout of ``metrics.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np

from histoxmodal import keys
from histoxmodal.data.normalize import library_sizes
from histoxmodal.encoders.embedders import PCA_BASELINE, EmbedFn, ScviEmbedder
from histoxmodal.errors import ConfigError
from histoxmodal.evaluation.probe import check_labels, leave_one_group_out_probe

log = logging.getLogger(__name__)

#: transcriptional targets of p53, lower in p53-mutant lines (a fixed signature: no fitting)
P53_TARGETS = (
    "CDKN1A",
    "MDM2",
    "BAX",
    "FAS",
    "GADD45A",
    "TP53I3",
    "DDB2",
    "XPC",
    "TNFRSF10B",
    "FDXR",
    "CCNG1",
    "BBC3",
)


def pathology_from_genes(
    adata,
    towers: Mapping[str, EmbedFn] | None = None,
    *,
    baseline: EmbedFn | None = PCA_BASELINE,
    pretrain=None,
    inductive: bool = True,
    label_key: str = "pathology",
    group_key: str = keys.OBS_PATIENT,
    exclude: Sequence[str] = ("undetermined",),
    seeds: Sequence[int] = (0,),
    c: float = 1.0,
) -> dict[str, object]:
    """Pathologist regions from gene embeddings, leave one patient out; towers against a PCA
    baseline.

    Protocol: for each patient ``p`` of ``adata`` (her2st: 8 labelled sections, one per
    patient) and each seed, every embedder is fitted on the pretraining spots (``pretrain``,
    default ``adata``) *without* patient ``p`` when ``inductive`` (no spot of ``p``, labelled
    or not, is seen; the fitting is unsupervised either way) or on all of them once per seed
    otherwise (transductive: the held-out patient's expression, never its labels, shaped the
    embedding), then embeds every spot of ``adata``. The probe of
    :func:`~histoxmodal.evaluation.probe.spot_label_probe` (multinomial logistic regression on
    L2-normalized embeddings, :func:`~histoxmodal.evaluation.probe.leave_one_group_out_probe`)
    is fitted on the labelled spots of the other patients and scored on ``p``'s: macro
    one-vs-rest AUROC, balanced accuracy, accuracy; ``mean`` over held-out patients, averaged
    over seeds. Spots labelled
    missing or in ``exclude`` are not used for the probe (they still count for pretraining).

    Parameters
    ----------
    adata
        ``(n_spots, n_genes)`` raw counts with ``obs[label_key]`` and ``obs[group_key]``, e.g.
        :func:`~histoxmodal.io.spatial.st.read_her2st_pathology`.
    towers
        Name -> embedder ``f(fit_adata, apply_adata, seed) -> (n_apply, dim)``, e.g.
        ``{"scvi": ScviEmbedder()}``; ``None``: the baseline only.
    baseline
        Compared on the same folds under its ``name``; default
        :data:`~histoxmodal.encoders.embedders.PCA_BASELINE` (``pca50``: PCA(50) of
        log-normalized expression); ``None`` for none.
    pretrain
        Spots the embedders are fitted on (e.g. all 35 her2st sections); must have
        ``obs[group_key]``. Default: ``adata``.
    seeds
        Passed to the embedders (scVI's seed) and the probe.

    Returns
    -------
    dict
        ``metrics``: ``<tower>.<metric>.<patient>`` and ``<tower>.<metric>.mean`` (and its
        range over seeds), metric one of ``auroc_macro``, ``balanced_accuracy``, ``accuracy``;
        ``<tower>.cpu_s`` (process CPU seconds spent on that tower, embedding and probes);
        ``protocol``: the description, per-tower descriptions, classes and folds.
    """
    if label_key not in adata.obs or group_key not in adata.obs:
        raise ConfigError(
            f"adata.obs needs {label_key!r} (labels) and {group_key!r} (held-out unit); it has "
            f"{list(adata.obs.columns)}; set label_key=/group_key="
        )
    pretrain = adata if pretrain is None else pretrain
    if inductive and group_key not in pretrain.obs:
        raise ConfigError(
            f"pretrain.obs has no {group_key!r}: inductive folds leave that group out of "
            "pretraining; add the column or pass inductive=False"
        )
    if baseline is None and not towers:
        raise ConfigError("towers is empty and baseline=None: give at least one embedder")
    named: dict[str, EmbedFn] = dict(towers or {})
    if baseline is not None:
        named[getattr(baseline, "name", "baseline")] = baseline
    labels, groups, keep = check_labels(
        adata.n_obs, adata.obs[label_key].astype(object), adata.obs[group_key].astype(str), exclude
    )
    pre_groups = np.asarray(pretrain.obs[group_key].astype(str)) if inductive else None
    lab_adata = adata[keep]
    metrics: dict[str, float] = {}
    folds: dict[str, object] = {}
    for name, fn in named.items():
        cache: dict[tuple, np.ndarray] = {}
        deterministic = bool(getattr(fn, "deterministic", False))

        def get(held_out, seed, fn=fn, cache=cache, deterministic=deterministic):
            key = (held_out if inductive else None, 0 if deterministic else seed)
            if key not in cache:
                if inductive:
                    cache.clear()  # folds run one after another: the last one is not needed
                fit = pretrain[pre_groups != held_out] if inductive else pretrain
                cache[key] = fn(fit, lab_adata, seed)
            return cache[key]

        t0 = time.process_time()
        m, folds = leave_one_group_out_probe(
            get, labels[keep].astype(str), groups[keep], seeds=seeds, c=c, prefix=f"{name}."
        )
        metrics.update(m)
        metrics[f"{name}.cpu_s"] = time.process_time() - t0
        log.info("%s: mean macro AUROC %.3f", name, m[f"{name}.auroc_macro.mean"])
    cls, counts = np.unique(labels[keep].astype(str), return_counts=True)
    return {
        "metrics": metrics,
        "protocol": {
            "description": (
                f"leave-one-{group_key}-out linear probe of obs[{label_key!r}] on gene "
                "embeddings; embedders fitted "
                + (
                    f"on the pretraining spots without the held-out {group_key} (inductive)"
                    if inductive
                    else "once per seed on all pretraining spots, held-out "
                    f"{group_key} included (transductive, unsupervised)"
                )
                + "; multinomial logistic regression on L2-normalized embeddings "
                f"(C={c}); macro one-vs-rest AUROC, balanced accuracy, accuracy per held-out "
                f"{group_key}, unweighted mean, averaged over seeds"
            ),
            "inductive": inductive,
            "towers": {n: getattr(f, "describe", lambda f=f: repr(f))() for n, f in named.items()},
            "n_spots": int(keep.sum()),
            "n_dropped": int((~keep).sum()),
            "n_pretrain_spots": int(pretrain.n_obs),
            "excluded_labels": list(exclude),
            "classes": dict(zip(cls.tolist(), counts.tolist(), strict=True)),
            "seeds": list(seeds),
            "folds": folds,
        },
    }


# ------------------------------------------------------------------------------------- p53


def intensities_to_pseudocounts(
    intensities: np.ndarray, *, floor: float = 10.0, library_size: float = 1e4
) -> np.ndarray:
    """Microarray intensities ``(n_samples, n_genes)`` -> count-like values for a count model.

    MAS5 intensities below ``floor`` are noise, so values are clipped at ``floor`` and the floor
    is subtracted (unexpressed genes become 0, as in count data); each sample is then scaled to
    ``library_size`` in total over the genes given, so its depth matches the spots the model was
    trained on. Values are not rounded (the scVI encoder reads ``log1p`` of its input). Probe
    affinities still differ from sequencing, gene by gene: a domain shift no scaling removes.
    """
    x = np.clip(np.asarray(intensities, np.float64), floor, None) - floor
    return x * (library_size / np.maximum(x.sum(axis=1, keepdims=True), 1e-12))


def _logistic_head(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed),
    )


def p53_gene_tower(
    intensities: np.ndarray,
    genes: Sequence[str],
    mutant: np.ndarray,
    pretrain,
    *,
    tower: ScviEmbedder | None = None,
    floor: float = 10.0,
    baseline_genes: int = 500,
    c: float = 0.1,
    n_folds: int = 5,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    tower_seed: int = 0,
) -> dict[str, object]:
    """p53 mutation status of NCI-60 cell lines from bulk expression through a gene tower, with
    the raw genes as the baseline.

    Protocol. Tower: scVI (``tower``, default
    :class:`~histoxmodal.encoders.embedders.ScviEmbedder`) is pretrained once, with seed
    ``tower_seed``, on the spatial spots ``pretrain`` (raw counts, e.g. all her2st sections,
    ``batch_key`` patient) over a panel of its most variable genes among those the NCI-60 table
    also has; no cell line and no label is seen in pretraining. The cell lines'
    MAS5 microarray intensities (not counts) go through :func:`intensities_to_pseudocounts`
    (clip at ``floor``, subtract it, scale each line to the median per-spot total of the
    pretraining spots over the panel) and the encoder gives ``(50, n_latent)`` posterior means.
    Heads: standardised features, logistic regression (``C=c``, balanced class weights), fitted
    inside each fold of :func:`~histoxmodal.evaluation.classification.cross_validate`
    (``n_folds`` folds, every cell line its own group, one fold split per seed); the score is
    P(mutant); AUROC and balanced accuracy per seed, their mean and 2.5-97.5 % interval over
    seeds. Compared on the same folds: ``baseline`` = the same head on ``log2(max(x, floor))``
    of the ``baseline_genes`` genes of highest variance among the training lines of the fold
    (all genes of the table as candidates); ``baseline_panel`` = the same, candidates limited to
    the tower's panel (separates the gene set from the tower); ``signature``: minus the mean
    standardised log2 expression of p53 targets (:data:`P53_TARGETS`), fitted on nothing, as a
    reference for what the labels allow.

    Parameters
    ----------
    intensities
        ``(n_lines, n_genes)`` microarray intensities (see
        :func:`~histoxmodal.io.bulk.read_nci60_p53`).
    genes
        ``(n_genes,)`` names of the columns.
    mutant
        ``(n_lines,)`` True for p53-mutant lines.
    pretrain
        AnnData of raw spot counts with ``obs[tower.batch_key]``.

    Returns
    -------
    dict
        ``metrics``: ``{tower,baseline,baseline_panel}.{auroc,balanced_accuracy}.{mean,ci95_lo,
        ci95_hi}``, ``signature.auroc``, ``tower.cpu_s`` (pretraining and encoding),
        ``cpu_s``; ``protocol``: the description, panel size, tower description, counts.
    """
    from sklearn.metrics import roc_auc_score

    from histoxmodal.evaluation.classification import cross_validate

    t_all = time.process_time()
    x = np.asarray(intensities, np.float64)
    genes = [str(g) for g in genes]
    y = np.asarray(mutant).astype(int)
    if x.ndim != 2 or x.shape[1] != len(genes):
        raise ConfigError(
            f"intensities has shape {x.shape} for {len(genes)} genes: expected "
            "(n_lines, len(genes))"
        )
    if len(y) != len(x) or set(np.unique(y)) != {0, 1}:
        raise ConfigError(
            f"mutant: expected {len(x)} True/False values with both classes present; got "
            f"{len(y)} values, classes {sorted(set(np.unique(y).tolist()))}"
        )
    tower = tower or ScviEmbedder()
    t0 = time.process_time()
    enc = tower.pretrain(pretrain, genes, tower_seed)
    panel = list(enc.genes)
    depth = float(np.median(library_sizes(pretrain[:, panel].X)))
    col = {g: i for i, g in enumerate(genes)}
    pidx = np.array([col[g] for g in panel])
    z = tower.encode(enc, intensities_to_pseudocounts(x[:, pidx], floor=floor, library_size=depth))
    tower_cpu = time.process_time() - t0
    logx = np.log2(np.clip(x, floor, None))

    def tower_fp(tr, te, seed=0):
        return _logistic_head(c, seed).fit(z[tr], y[tr]).predict_proba(z[te])[:, 1]

    def raw_fp(candidates):
        def fp(tr, te):
            var = logx[tr][:, candidates].var(axis=0)
            top = candidates[np.argsort(-var, kind="stable")[:baseline_genes]]
            head = _logistic_head(c, 0).fit(logx[tr][:, top], y[tr])
            return head.predict_proba(logx[te][:, top])[:, 1]

        return fp

    groups = np.arange(len(x))
    runs = {
        "tower": cross_validate(len(x), y, groups, tower_fp, n_folds=n_folds, seeds=seeds),
        "baseline": cross_validate(
            len(x), y, groups, raw_fp(np.arange(len(genes))), n_folds=n_folds, seeds=seeds
        ),
        "baseline_panel": cross_validate(
            len(x), y, groups, raw_fp(pidx), n_folds=n_folds, seeds=seeds
        ),
    }
    metrics: dict[str, float] = {}
    for name, r in runs.items():
        for k in ("auroc", "balanced_accuracy"):
            metrics[f"{name}.{k}.mean"] = r[k]["mean"]
            metrics[f"{name}.{k}.ci95_lo"], metrics[f"{name}.{k}.ci95_hi"] = r[k]["ci95"]
    targets = [col[g] for g in P53_TARGETS if g in col]
    if targets:
        s = logx[:, targets]
        s = (s - s.mean(axis=0)) / (s.std(axis=0) + 1e-12)
        metrics["signature.auroc"] = float(roc_auc_score(y, -s.mean(axis=1)))
    metrics["tower.cpu_s"] = tower_cpu
    metrics["cpu_s"] = time.process_time() - t_all
    return {
        "metrics": metrics,
        "protocol": {
            "description": (
                f"{runs['tower']['protocol']} with every cell line its own group, "
                f"{len(seeds)} fold splits (seeds); logistic regression (C={c}, balanced class "
                "weights) on standardised features, fitted inside each fold; tower = scVI "
                "pretrained on spatial spot counts only (no cell line, no label), cell-line "
                f"microarray intensities clipped at {floor:g}, floor subtracted, scaled to the "
                f"median spot depth over the panel ({depth:.0f}); baseline = top "
                f"{baseline_genes} variance genes of log2 intensities chosen inside each fold"
            ),
            "tower": tower.describe(),
            "n_panel_genes": len(panel),
            "n_shared_genes": int(sum(g in col for g in pretrain.var_names)),
            "n_pretrain_spots": int(pretrain.n_obs),
            "n_lines": len(x),
            "n_mutant": int(y.sum()),
            "seeds": list(seeds),
            "tower_seed": tower_seed,
            "signature_genes": [g for g in P53_TARGETS if g in col],
        },
    }
