"""Heads on real labels: per-spot labels (pathologist regions, expression clusters) probed from
embeddings with whole sections or patients held out, and a bulk mutation label (NCI-60 p53)
predicted through a gene tower.

Every function takes arrays or AnnData the caller provides and returns
``{"metrics": {flat dotted keys: float}, "protocol": {...}}``, the layout of ``metrics.json``
written by :func:`histoxmodal.evaluation.report.evaluate`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError

log = logging.getLogger(__name__)

#: the her2st sections with pathologist region labels (``pathology/<S>_labeled_coordinates.tsv``)
PATHOLOGY_SECTIONS = ("A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1")

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

_METRICS = ("auroc_macro", "balanced_accuracy", "accuracy")


# ---------------------------------------------------------------------------- spot-label probe


def _missing(labels: np.ndarray, exclude: Sequence[str]) -> np.ndarray:
    """``(n,)`` True where a label is None, NaN, empty or one of ``exclude``."""
    import pandas as pd

    s = pd.Series(np.asarray(labels, dtype=object))
    bad = s.isna().to_numpy()
    text = s.astype(str).str.strip()
    bad |= text.isin(["", "nan", "None", *map(str, exclude)]).to_numpy()
    return bad


def _probe_fold(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    c: float,
    seed: int,
) -> dict[str, object]:
    """Fit :func:`~histoxmodal.heads.probe.linear_probe` on one fold and score the test spots.

    Macro AUROC: mean one-vs-rest AUROC over the classes seen in training that occur in the test
    set alongside at least one other class (NaN when there is none). Balanced accuracy: mean
    recall over the classes present in the test set; a test class never seen in training is
    never predicted and counts with recall 0. Accuracy: share of test spots predicted right.
    """
    from sklearn.metrics import roc_auc_score

    from histoxmodal.heads.probe import linear_probe

    classes = np.unique(train_y)
    if len(classes) == 1:  # logistic regression needs two classes: predict the only one
        proba = np.ones((len(test_x), 1))
    else:
        proba = linear_probe(train_x, train_y, test_x, c=c, seed=seed)
    pred = classes[proba.argmax(axis=1)]
    present = np.unique(test_y)
    aucs = {}
    for k, cl in enumerate(classes):
        pos = test_y == cl
        if len(classes) > 1 and 0 < pos.sum() < len(test_y):
            aucs[str(cl)] = float(roc_auc_score(pos, proba[:, k]))
    recalls = [float((pred[test_y == cl] == cl).mean()) for cl in present]
    return {
        "auroc_macro": float(np.mean(list(aucs.values()))) if aucs else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)),
        "accuracy": float((pred == test_y).mean()),
        "n_test": len(test_y),
        "classes_scored": sorted(aucs),
        "unseen_in_training": sorted(str(x) for x in set(present) - set(classes)),
    }


def _leave_one_group_out(
    get_embeddings: Callable[[object, int], np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    seeds: Sequence[int],
    c: float,
    prefix: str = "",
) -> tuple[dict[str, float], dict[str, object]]:
    """Run the probe with each group held out in turn; ``get_embeddings(held_out, seed)``
    returns ``(n, d)`` embeddings of every spot (it may depend on the held-out group)."""
    uniq = np.unique(groups)
    per: dict[str, dict[str, list[float]]] = {m: {} for m in _METRICS}
    folds: dict[str, object] = {}
    for g in uniq:
        test = groups == g
        for seed in seeds:
            z = np.asarray(get_embeddings(g, seed), np.float64)
            r = _probe_fold(z[~test], labels[~test], z[test], labels[test], c=c, seed=seed)
            for m in _METRICS:
                per[m].setdefault(str(g), []).append(r[m])
        folds[str(g)] = {
            "n_test": int(test.sum()),
            "classes_scored": r["classes_scored"],
            "unseen_in_training": r["unseen_in_training"],
        }
    metrics: dict[str, float] = {}
    for m in _METRICS:
        table = np.array([per[m][str(g)] for g in uniq])  # (n_groups, n_seeds)
        for g, row in zip(uniq, table, strict=True):
            metrics[f"{prefix}{m}.{g}"] = float(np.mean(row))
        # one mean over held-out groups per seed; groups with nothing to score (NaN) left out
        scored = ~np.isnan(table)
        over_groups = np.where(scored, table, 0).sum(0) / np.maximum(scored.sum(0), 1)
        over_groups[~scored.any(axis=0)] = np.nan
        metrics[f"{prefix}{m}.mean"] = float(np.mean(over_groups))
        metrics[f"{prefix}{m}.mean.min_over_seeds"] = float(np.min(over_groups))
        metrics[f"{prefix}{m}.mean.max_over_seeds"] = float(np.max(over_groups))
    return metrics, folds


def _check_labels(n: int, labels, groups, exclude) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=object)
    groups = np.asarray(groups)
    if len(labels) != n or len(groups) != n:
        raise ConfigError(
            f"{n} embeddings, {len(labels)} labels and {len(groups)} groups: pass one label and "
            "one group (section or patient id) per spot"
        )
    keep = ~_missing(labels, exclude)
    if len(np.unique(groups[keep])) < 2:
        raise ConfigError(
            f"groups: {len(np.unique(groups[keep]))} group(s) with labelled spots; "
            "leave-one-group-out needs at least two sections or patients"
        )
    return labels, groups, keep


def spot_label_probe(
    embeddings: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    exclude: Sequence[str] = ("undetermined",),
    c: float = 1.0,
) -> dict[str, object]:
    """Per-spot linear probe with leave-one-group-out: how well do embeddings separate spot
    labels in a section (or patient) the probe never saw?

    Protocol: spots whose label is missing (None, NaN, empty) or listed in ``exclude`` are
    dropped. For each group ``g`` (a section or patient) in turn, a multinomial logistic
    regression on L2-normalised embeddings (:func:`~histoxmodal.heads.probe.linear_probe`,
    inverse penalty ``c``) is fitted on the labelled spots of every other group and predicts the
    spots of ``g``. Per held-out group: macro AUROC (one-vs-rest, averaged over the classes
    seen in training that occur in ``g`` next to another class), balanced accuracy (mean
    recall over the classes present in ``g``; a class absent from training counts with recall
    0) and accuracy. ``mean`` is the unweighted mean over held-out groups (groups with no
    scorable class left out of the AUROC mean). The whole is repeated for each seed (the
    probe's ``random_state``; the lbfgs fit is deterministic, so with fixed embeddings the
    seeds agree) and values are averaged over seeds, with the range of the group mean.

    Parameters
    ----------
    embeddings
        ``(n_spots, dim)``.
    labels
        ``(n_spots,)`` class per spot (strings or integers; missing values allowed).
    groups
        ``(n_spots,)`` section or patient of each spot: the unit held out.
    exclude
        Label values treated as missing, e.g. her2st's ``"undetermined"``; ``()`` keeps all.

    Returns
    -------
    dict
        ``metrics``: ``{auroc_macro,balanced_accuracy,accuracy}.{<group>,mean}`` and
        ``<metric>.mean.{min,max}_over_seeds``; ``protocol``: the description, classes with
        their counts, spots dropped, and per held-out group the classes scored and those never
        seen in training.
    """
    z = np.asarray(embeddings, np.float64)
    if z.ndim != 2:
        raise ConfigError(f"embeddings has shape {z.shape}: expected (n_spots, dim)")
    labels, groups, keep = _check_labels(len(z), labels, groups, exclude)
    z, y, g = z[keep], labels[keep].astype(str), groups[keep]
    metrics, folds = _leave_one_group_out(lambda _g, _s: z, y, g, seeds=seeds, c=c)
    cls, counts = np.unique(y, return_counts=True)
    return {
        "metrics": metrics,
        "protocol": {
            "description": (
                "leave-one-group-out linear probe (multinomial logistic regression on "
                f"L2-normalised embeddings, C={c}); macro one-vs-rest AUROC, balanced accuracy "
                "and accuracy per held-out group, unweighted mean over groups, averaged over "
                "seeds"
            ),
            "n_spots": int(keep.sum()),
            "n_dropped": int((~keep).sum()),
            "excluded_labels": list(exclude),
            "classes": dict(zip(cls.tolist(), counts.tolist(), strict=True)),
            "groups": [str(x) for x in np.unique(g)],
            "seeds": list(seeds),
            "folds": folds,
        },
    }


# ------------------------------------------------------------------------------ gene towers


def _counts(adata, genes: Sequence[str]) -> np.ndarray:
    """Dense ``(n_spots, len(genes))`` float counts."""
    import scipy.sparse as sp

    x = adata[:, list(genes)].X
    return np.asarray(x.toarray() if sp.issparse(x) else x, np.float64)


def _log_norm(x: np.ndarray) -> np.ndarray:
    """``log1p`` of counts per 10,000 (library size over the columns given)."""
    return np.log1p(x * (1e4 / np.maximum(x.sum(axis=1, keepdims=True), 1.0)))


def _common_genes(fit, apply) -> list[str]:
    have = set(apply.var_names)
    common = [g for g in fit.var_names if g in have]
    if not common:
        raise ConfigError(
            "the pretraining and the labelled AnnData share no gene names; are both gene "
            "symbols (var_names)?"
        )
    return common


def _hvg(adata, genes: Sequence[str], n_top: int) -> list[str]:
    """The ``n_top`` most variable of ``genes`` (scanpy's Seurat-flavour dispersion on
    log-normalised counts), in ``genes`` order."""
    import anndata as ad
    import scanpy as sc

    if n_top >= len(genes):
        return list(genes)
    b = ad.AnnData(_log_norm(_counts(adata, genes)))
    b.var_names = list(genes)
    sc.pp.highly_variable_genes(b, n_top_genes=n_top, flavor="seurat")
    return [g for g, keep in zip(genes, b.var["highly_variable"], strict=True) if keep]


@dataclass
class PcaEmbedder:
    """Baseline gene embedding: PCA of log-normalised expression.

    ``embedder(fit, apply, seed)``: on the spots of ``fit``, counts over the genes shared with
    ``apply`` are normalised to 10,000 per spot and ``log1p``-transformed; the ``n_top_genes``
    of highest variance are kept, centred on the ``fit`` mean, and the top ``n_components``
    principal axes of ``fit`` project ``apply`` to ``(n_apply, n_components)``.
    Deterministic: ``seed`` is ignored.
    """

    n_components: int = 50
    n_top_genes: int = 2000
    deterministic = True

    @property
    def name(self) -> str:
        return f"pca{self.n_components}"

    def describe(self) -> str:
        return (
            f"PCA({self.n_components}) of log1p(CP10k) expression, top {self.n_top_genes} genes "
            "by variance; genes, mean and axes from the pretraining spots"
        )

    def __call__(self, fit, apply, seed: int = 0) -> np.ndarray:
        from sklearn.utils.extmath import randomized_svd

        genes = _common_genes(fit, apply)
        xf = _log_norm(_counts(fit, genes))
        top = np.sort(np.argsort(-xf.var(axis=0), kind="stable")[: self.n_top_genes])
        xf = xf[:, top]
        mean = xf.mean(axis=0)
        k = min(self.n_components, *xf.shape)
        # randomised SVD with a fixed state: deterministic, and 5x faster than a full SVD here
        _, _, vt = randomized_svd(xf - mean, k, n_iter=7, random_state=0)
        xa = _counts(apply, genes)
        xa = np.log1p(xa[:, top] * (1e4 / np.maximum(xa.sum(axis=1, keepdims=True), 1.0)))
        return (xa - mean) @ vt.T


@dataclass
class ScviEmbedder:
    """Gene tower: the scVI encoder (:class:`~histoxmodal.encoders.gene.ScviGeneEncoder`)
    pretrained on raw counts, its posterior latent mean as the embedding.

    ``embedder(fit, apply, seed)``: the panel is ``genes`` if given, else the
    ``n_top_genes`` most variable (Seurat-flavour dispersion on log-normalised ``fit`` counts)
    of the genes ``fit`` and ``apply`` share; scVI is trained for ``max_epochs`` on ``fit`` with
    ``batch_key`` as its batch (scVI's decoder sees the batch; the encoder does not, so it
    applies to spots of unseen batches); ``apply``'s raw counts are encoded to
    ``(n_apply, n_latent)``.
    """

    n_latent: int = 10
    n_hidden: int = 128
    n_top_genes: int = 2000
    max_epochs: int = 10
    batch_key: str = keys.OBS_PATIENT
    genes: tuple[str, ...] | None = None
    name: str = "scvi"
    deterministic = False

    def describe(self) -> str:
        panel = f"{len(self.genes)} given genes" if self.genes else f"top {self.n_top_genes} HVG"
        return (
            f"scVI encoder (n_latent={self.n_latent}, n_hidden={self.n_hidden}), {panel}, "
            f"{self.max_epochs} epochs on the pretraining spots, batch_key={self.batch_key!r}; "
            "posterior mean of raw counts"
        )

    def pretrain(self, fit, apply_genes: Sequence[str], seed: int):
        """Fit scVI on ``fit`` and return the trained :class:`ScviGeneEncoder`."""
        from histoxmodal.encoders.gene import ScviGeneEncoder

        if self.batch_key not in fit.obs:
            raise ConfigError(
                f"batch_key={self.batch_key!r} is not a column of obs (columns: "
                f"{list(fit.obs.columns)}); pass batch_key= one of them"
            )
        if self.genes is not None:
            panel = list(self.genes)
        else:
            apply_set = set(apply_genes)
            panel = _hvg(fit, [g for g in fit.var_names if g in apply_set], self.n_top_genes)
        tower = ScviGeneEncoder(genes=panel, n_latent=self.n_latent, n_hidden=self.n_hidden)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scvi-tools' and Lightning's advice on workers etc.
            tower.pretrain(fit, batch_key=self.batch_key, max_epochs=self.max_epochs, seed=seed)
        return tower.eval()

    @staticmethod
    def encode(tower, counts: np.ndarray) -> np.ndarray:
        """``(n, n_genes)`` counts (tower panel order) -> ``(n, n_latent)``."""
        import torch

        with torch.no_grad():
            return tower(torch.as_tensor(counts, dtype=torch.float32)).double().numpy()

    def __call__(self, fit, apply, seed: int = 0) -> np.ndarray:
        tower = self.pretrain(fit, list(apply.var_names), seed)
        return self.encode(tower, _counts(apply, tower.genes))


EmbedFn = Callable[..., np.ndarray]

#: the default baseline of :func:`pathology_from_genes`: PCA(50) of log-normalised expression
PCA_BASELINE = PcaEmbedder()


def read_her2st_pathology(root: str | Path, sections: Sequence[str] = PATHOLOGY_SECTIONS):
    """The her2st sections with pathologist labels, concatenated (genes in all of them).

    ``read_her2st(root, None)`` keeps only obs columns every section has, which drops
    ``obs['pathology']``; this reads the labelled sections one by one instead.

    Returns
    -------
    anndata.AnnData
        ``(n_spots, n_genes)`` raw counts with ``obs['pathology']``, ``obs['sample']``,
        ``obs['patient']``.
    """
    import anndata as ad

    from histoxmodal.io.spatial.st import read_her2st

    parts = []
    for s in sections:
        a = read_her2st(root, s)
        if "pathology" not in a.obs:
            raise ConfigError(
                f"sections: {s} has no pathology/{s}_labeled_coordinates.tsv under {root}; "
                f"labelled sections are {', '.join(PATHOLOGY_SECTIONS)}"
            )
        a.obs["pathology"] = a.obs["pathology"].astype(object)
        a.uns.pop(keys.UNS_SPATIAL, None)
        parts.append(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        out = ad.concat(parts, join="inner", merge="first")
    for col in ("pathology", keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH):
        out.obs[col] = out.obs[col].astype(str).astype("category")
    return out


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
    embedding), then embeds every spot of ``adata``. The probe of :func:`spot_label_probe`
    (multinomial logistic regression on L2-normalised embeddings) is fitted on the labelled
    spots of the other patients and scored on ``p``'s: macro one-vs-rest AUROC, balanced
    accuracy, accuracy; ``mean`` over held-out patients, averaged over seeds. Spots labelled
    missing or in ``exclude`` are not used for the probe (they still count for pretraining).

    Parameters
    ----------
    adata
        ``(n_spots, n_genes)`` raw counts with ``obs[label_key]`` and ``obs[group_key]``, e.g.
        :func:`read_her2st_pathology`.
    towers
        Name -> embedder ``f(fit_adata, apply_adata, seed) -> (n_apply, dim)``, e.g.
        ``{"scvi": ScviEmbedder()}``; ``None``: the baseline only.
    baseline
        Compared on the same folds under its ``name``; default :data:`PCA_BASELINE`
        (``pca50``: PCA(50) of log-normalised expression); ``None`` for none.
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
    labels, groups, keep = _check_labels(
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
        m, folds = _leave_one_group_out(
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
                + "; multinomial logistic regression on L2-normalised embeddings "
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


def read_nci60_p53(bulk_dir: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The NCI-60 p53 set: ``(50, 10100)`` MAS5 microarray intensities, gene names, and
    ``(50,)`` mutant flags (``P53.cls``: 33 MUT, 17 WT, in column order)."""
    from histoxmodal.io.bulk import read_cls, read_expression_table

    d = Path(bulk_dir)
    a = read_expression_table(d / "P53.txt")
    labels = read_cls(d / "P53.cls", a.n_obs)
    return np.asarray(a.X, np.float64), list(a.var_names), labels == "MUT"


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

    Protocol. Tower: scVI (``tower``, default :class:`ScviEmbedder`) is pretrained once, with
    seed ``tower_seed``, on the spatial spots ``pretrain`` (raw counts, e.g. all her2st
    sections, ``batch_key`` patient) over a panel of its most variable genes among those the
    NCI-60 table also has; no cell line and no label is seen in pretraining. The cell lines'
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
        ``(n_lines, n_genes)`` microarray intensities (see :func:`read_nci60_p53`).
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
    depth = float(np.median(_counts(pretrain, panel).sum(axis=1)))
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
