"""The one report writer: a self-contained HTML page (grouped metric tables with chance levels
and baselines, inline PNG figures, warnings and provenance), rendered from the Jinja2 template
``histoxmodal/templates/report.html.j2``, for spatial evaluations, cohort evaluations and
benchmark comparisons; plus the spatial report's figures."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: suffixes of the keys that sit beside a metric (see :mod:`histoxmodal.workflows.evaluate`)
CHANCE_SUFFIX = "_chance"
BASELINE_SUFFIX = "_baseline"
#: above this fraction of variance on the first principal component, embeddings have collapsed
COLLAPSE_FRACTION = 0.9
#: obs columns drawn as labels in the embedding plots, where a dataset has them
LABEL_COLUMNS = ("label", "pathology", "cluster", "cell_type", "state")


@dataclass(frozen=True)
class Row:
    """One table row: a label, one value per column, what the metric says."""

    label: str
    values: Sequence[object]
    explanation: str = ""


@dataclass(frozen=True)
class Table:
    """A titled group of rows with a one-line explanation."""

    title: str
    explanation: str
    columns: Sequence[str]
    rows: Sequence[Row]


@dataclass(frozen=True)
class Figure:
    """A base64 PNG with a title and a caption."""

    title: str
    png: str
    caption: str = ""


@dataclass
class Report:
    """Everything one report page shows; :func:`write_report` renders it."""

    title: str
    summary: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, object] = field(default_factory=dict)
    config: Mapping[str, object] | None = None


def figure_png(fig) -> str:
    """A matplotlib figure as base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _number(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4g}" if abs(v) >= 100 else f"{v:.4f}"
    return str(v)


def render_report(report: Report) -> str:
    """The HTML page of ``report`` (Jinja2, autoescaped)."""
    from importlib.resources import files

    import jinja2

    template = files("histoxmodal").joinpath("templates/report.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["number"] = _number
    config = json.dumps(report.config, indent=1, default=str) if report.config else ""
    return env.from_string(template).render(
        title=report.title,
        summary=report.summary,
        tables=report.tables,
        figures=report.figures,
        warnings=report.warnings,
        provenance=report.provenance,
        config=config,
    )


def write_report(path: str | Path, report: Report) -> None:
    """Write ``report`` as one self-contained HTML file (images inline), atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(render_report(report), encoding="utf-8")
    tmp.replace(path)


def provenance(
    *,
    run: str | Path | Sequence[str | Path] | None = None,
    dataset: str | Path | None = None,
    split: str | None = None,
    split_sha256: str | None = None,
    **extra: object,
) -> dict[str, object]:
    """Where a report's numbers come from: package version, run and dataset paths, split and
    its SHA-256, date, and the machine (host, CPU, GPU)."""
    from histoxmodal.version import __version__

    torch = sys.modules.get("torch")
    gpu = "none"
    if torch is not None and torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    runs = [run] if isinstance(run, str | Path) else list(run or [])
    out: dict[str, object] = {"histoxmodal version": __version__}
    if runs:
        out["run" if len(runs) == 1 else "runs"] = ", ".join(str(Path(r).resolve()) for r in runs)
    if dataset is not None:
        out["dataset"] = str(Path(dataset).resolve())
    if split is not None:
        out["split"] = split
    if split_sha256 is not None:
        out["split sha256"] = split_sha256
    out.update({k.replace("_", " "): v for k, v in extra.items()})
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out["machine"] = (
        f"{platform.node()}: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), GPU: {gpu}"
    )
    return out


# --- metric tables -------------------------------------------------------------------------

_DIRS = {"i2g": ("image", "gene"), "g2i": ("gene", "image")}
_EXPR = {
    "pearson_pooled_mean": ("Pearson r, pooled", "mean over genes of the correlation of "
                            "predicted with measured expression over all test spots"),
    "spearman_pooled_mean": ("Spearman ρ, pooled", "the same with ranks"),
    "pearson_per_sample_mean": ("Pearson r, per section", "the correlation within each test "
                                "section, averaged: patterns inside a section"),
    "mse_pooled": ("MSE", "mean squared error of log1p-CP10k; lower is better"),
    "alpha": ("ridge penalty", "chosen by cross-validation over training sections"),
}  # fmt: skip
_MIXING = {
    "ilisi": ("iLISI", "effective number of batches around each spot (median); higher = mixed"),
    "batch_silhouette": ("batch silhouette", "1 - |silhouette| with batches as clusters; "
                         "1 = mixed, 0 = separated"),
    "knn_batch_purity": ("kNN batch purity", "own-batch share of the 15 nearest neighbours over "
                         "what random neighbours give; 1 = mixed, higher = separated"),
}  # fmt: skip
_HEADS = {
    "ridge": "ridge head",
    "mlp": "MLP head",
    "retrieval": "retrieval head (BLEEP)",
    "handcrafted_ridge": "hand-crafted + ridge",
}


def describe_metric(key: str) -> tuple[str, str]:
    """A readable label and a one-line explanation of a ``metrics.json`` key (without the run's
    loss name for cohort keys); unknown keys come back as they are."""
    parts = key.split(".")
    m = re.fullmatch(r"recall@(\d+)", parts[-1])
    if parts[0] == "retrieval" and len(parts) == 4 and parts[2] in _DIRS:
        a, b = _DIRS[parts[2]]
        where = "all test spots" if parts[1] == "full" else f"batches of {parts[1][10:]}"
        if m:
            return (
                f"{a} → {b} Recall@{m[1]} ({where})",
                f"share of {a} queries whose own spot's {b} is among the {m[1]} best of {where}",
            )
        what = parts[3].replace("_", " ")
        return (
            f"{a} → {b} {what} ({where})",
            "rank of the true partner (1 = first); lower is better",
        )
    if parts[0] == "retrieval" and len(parts) == 3 and m and "_to_" in parts[1]:
        a, b = parts[1].split("_to_")
        return (
            f"{a} → {b} Recall@{m[1]}",
            f"share of {a} queries whose own {b} is in the top {m[1]}",
        )
    if parts[0] == "zero_shot" and len(parts) == 3:
        k = parts[2].rsplit("@k", 1)[-1]
        return (
            f"{parts[1]} given the others, accuracy among {k}",
            f"share of patients whose true {parts[1]} scores highest among {k} candidates",
        )
    if parts[0] == "expression" and len(parts) == 3 and parts[2] in _EXPR:
        label, text = _EXPR[parts[2]]
        return f"{_HEADS.get(parts[1], parts[1])}: {label}", text
    if parts[0] == "batch_mixing" and len(parts) == 3 and parts[2] in _MIXING:
        label, text = _MIXING[parts[2]]
        return f"{parts[1]} embeddings: {label}", text
    return key, ""


#: (title, key prefix, explanation) of the groups, in the order they are shown
GROUPS = (
    ("Zero-shot", "zero_shot.", "Symile's protocol: given every modality but one, find the "
     "missing record among k candidates (the true one and k - 1 others)."),
    ("Retrieval", "retrieval.", "Cross-modal retrieval between the two embeddings of the test "
     "spots: does a spot's image find its own expression, and the reverse."),
    ("Expression", "expression.", "Expression of the most variable genes predicted from the "
     "image embedding by heads fitted on the training spots, scored on the test spots."),
    ("Batch mixing", "batch_mixing.", "Whether sections or batches are mixed in the embedding "
     "space rather than separated by technical differences."),
)  # fmt: skip


def metric_tables(
    columns: Mapping[str, Mapping[str, object]],
    *,
    normalise=None,
    skip: Sequence[str] = ("expression.handcrafted_ridge.",),
    baseline_label: str = "baseline: hand-crafted + ridge",
) -> list[Table]:
    """Group flat metrics into the report's tables, each metric beside its chance level and
    baseline (the ``_chance`` / ``_baseline`` keys).

    Parameters
    ----------
    columns
        ``{column name: metrics}``: one column per run compared.
    normalise
        Maps a column's key to the shared row key (e.g. drops the loss name of cohort keys).
    skip
        Key prefixes not shown as rows (the baseline's own rows are its column).
    """
    norm = normalise or (lambda key, column: key)
    values: dict[str, dict[str, object]] = {}
    for col, metrics in columns.items():
        for key, v in metrics.items():
            values.setdefault(norm(key, col), {})[col] = v
    tables = []
    for title, prefix, explanation in GROUPS:
        keys_ = [
            k
            for k in values
            if k.startswith(prefix)
            and not k.endswith((CHANCE_SUFFIX, BASELINE_SUFFIX))
            and not k.startswith(tuple(skip))
        ]
        if not keys_:
            continue

        def extra(key: str, suffix: str) -> object:
            got = values.get(key + suffix, {})
            return next(iter(got.values()), None)

        has_chance = any(extra(k, CHANCE_SUFFIX) is not None for k in keys_)
        has_base = any(extra(k, BASELINE_SUFFIX) is not None for k in keys_)
        head = [*columns, *(["chance"] if has_chance else [])]
        head += [baseline_label] if has_base else []
        rows = []
        for k in keys_:
            label, text = describe_metric(k)
            vals = [values[k].get(c) for c in columns]
            vals += [extra(k, CHANCE_SUFFIX)] if has_chance else []
            vals += [extra(k, BASELINE_SUFFIX)] if has_base else []
            rows.append(Row(label, vals, text))
        tables.append(Table(title, explanation, head, rows))
    return tables


# --- warnings ------------------------------------------------------------------------------


def first_component_fraction(z: np.ndarray) -> float:
    """Fraction of the variance of ``(n, d)`` embeddings on their first principal component."""
    z = np.asarray(z, np.float64)
    if len(z) < 2:
        return float("nan")
    s = np.linalg.svd(z - z.mean(axis=0), compute_uv=False) ** 2
    return float(s[0] / s.sum()) if s.sum() > 0 else 1.0


def at_chance(recall: float, chance: float, n: int) -> bool:
    """Whether a recall over ``n`` queries is within two binomial standard errors of its
    ``chance`` level (``k / n`` for Recall@k)."""
    return bool(recall <= chance + 2 * math.sqrt(chance * (1 - chance) / max(n, 1)))


def embedding_warnings(
    embeddings: Mapping[str, np.ndarray], metrics: Mapping[str, object], n: int, *, k: int = 10
) -> list[str]:
    """Warnings for a report (also logged): embeddings that collapsed (first principal
    component above :data:`COLLAPSE_FRACTION` of the variance) and retrieval at chance."""
    out = []
    for name, z in embeddings.items():
        f = first_component_fraction(z)
        if f > COLLAPSE_FRACTION:
            out.append(
                f"the {name} embeddings have collapsed: their first principal component holds "
                f"{100 * f:.1f} % of the variance (above {100 * COLLAPSE_FRACTION:.0f} %); "
                f"check the learning rate, the temperature and the data"
            )
    for short, (a, b) in _DIRS.items():
        r = metrics.get(f"retrieval.full.{short}.recall@{k}")
        if isinstance(r, float) and n > 0 and at_chance(r, min(k, n) / n, n):
            out.append(
                f"{a} → {b} retrieval is at chance: Recall@{k} {r:.4f} against {min(k, n) / n:.4f}"
                f" = {min(k, n)}/{n} for unrelated embeddings"
            )
    for w in out:
        log.warning(w)
    return out


# --- cohort report -------------------------------------------------------------------------


def write_cohort_report(path: str | Path, results: list[dict]) -> None:
    """Cohort evaluations side by side, one column per run (its loss), through
    :func:`write_report`."""
    losses = [r["protocol"]["config"]["loss"]["name"] for r in results]

    def normalise(key: str, loss: str) -> str:
        kind, rest = key.split(".", 1)
        return f"{kind}.{rest[len(loss) + 1 :]}" if rest.startswith(f"{loss}.") else key

    p0 = results[0]["protocol"]
    report = Report(
        title="Multimodal evaluation",
        summary=(
            f"Held-out patients: {p0['n_test']} rows; zero-shot: the true record among "
            f"k={p0['k']} candidates (chance 1/{p0['k']} = {p0['chance']:.3f}), given the other "
            f"modalities; Recall@k chance is k/n over the rows with both modalities."
        ),
        tables=metric_tables(
            {loss: r["metrics"] for loss, r in zip(losses, results, strict=True)},
            normalise=normalise,
        ),
        provenance=provenance(
            run=[r["protocol"]["run"] for r in results],
            dataset=p0["dataset"],
            split=f"patient split of {p0['dataset']}",
            split_sha256=p0["split_sha256"],
            seed=p0["seed"],
        ),
        config={loss: r["protocol"]["config"] for loss, r in zip(losses, results, strict=True)},
    )
    for loss, r in zip(losses, results, strict=True):
        m = r["metrics"]
        keys_ = [k for k in m if k.startswith("zero_shot.") and k + CHANCE_SUFFIX in m]
        if keys_ and all(at_chance(m[k], m[k + CHANCE_SUFFIX], p0["n_test"]) for k in keys_):
            report.warnings.append(
                f"{loss}: zero-shot accuracy is at chance ({1 / p0['k']:.3f}) for every modality"
            )
            log.warning(report.warnings[-1])
    write_report(path, report)


# --- spatial figures -----------------------------------------------------------------------


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, but outside pyplot's state.

    The figure is a plain :class:`matplotlib.figure.Figure`: it never changes the session's
    backend (a notebook keeps showing its own figures inline), needs no ``close`` and still
    renders in Jupyter when it is the cell's value.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def retrieval_figure(
    za: np.ndarray, zb: np.ndarray, patches, rows: np.ndarray, *, n_queries: int = 3, top: int = 5
):
    """Image queries, their ``top`` spots by gene embedding, and the true match with its rank.

    Parameters
    ----------
    za, zb
        ``(n, d)`` image and gene embeddings of the test spots (row i of each pair up).
    patches
        Patches of the dataset; ``patches[rows[i]]`` is test spot i's image.
    """
    sim = za @ zb.T
    n_q = min(n_queries, len(za))
    fig, axes = subplots(n_q, top + 2, figsize=(2 * (top + 2), 2.3 * n_q), squeeze=False)
    for r, q in enumerate(np.random.default_rng(0).choice(len(za), n_q, replace=False)):
        rank = int((sim[q] > sim[q, q]).sum()) + 1
        best = np.argsort(-sim[q], kind="stable")[:top]
        axes[r, 0].imshow(patches[rows[q]])
        axes[r, 0].set_title(f"query\ntrue match rank {rank}/{len(za)}", fontsize=8)
        for c, j in enumerate(best, start=1):
            axes[r, c].imshow(patches[rows[j]])
            hit = j == q
            axes[r, c].set_title(("true match" if hit else f"#{c}") + f"\nsim {sim[q, j]:.2f}",
                                 fontsize=8, color="green" if hit else "black")  # fmt: skip
        axes[r, top + 1].imshow(patches[rows[q]])
        axes[r, top + 1].set_title(f"true match\nrank {rank}, sim {sim[q, q]:.2f}", fontsize=8,
                                   color="green")  # fmt: skip
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle(f"image query, its top {top} spots by gene embedding (shown as their image), "
                 "and its own spot")  # fmt: skip
    return fig


def expression_maps_figure(
    thumb: np.ndarray,
    xy: np.ndarray,
    measured: np.ndarray,
    predicted: np.ndarray,
    genes: Sequence[str],
    spot_px: float,
    *,
    um_per_px: float | None,
    section: str,
):
    """Measured and predicted expression of ``genes`` drawn over the H&E of one section: one
    row per gene, one colour scale per gene (shared by both maps, one colour bar) and the gene's
    Pearson r on this section in each title.

    Parameters
    ----------
    thumb
        ``(h, w, 3)`` uint8 image of the section.
    xy
        ``(n, 2)`` spot centres in ``thumb`` pixels.
    measured, predicted
        ``(n, len(genes))``.
    """
    from matplotlib.figure import Figure

    h, w = thumb.shape[:2]
    # two equal map columns and a narrow one for the shared colour bar, so the measured and
    # the predicted map of a gene are drawn at the same size; each row is as tall as its maps
    # (plus their title), so constrained layout leaves no empty band under the figure's title
    map_in, bar_in, title_in = 4.4, 0.9, 0.35
    fig = Figure(
        figsize=(2 * map_in + bar_in, len(genes) * (map_in * h / w + title_in) + title_in),
        layout="constrained",
    )
    grid = fig.add_gridspec(len(genes), 3, width_ratios=[map_in, map_in, 0.12])
    for i, g in enumerate(genes):
        t, p = np.asarray(measured[:, i], float), np.asarray(predicted[:, i], float)
        r = np.corrcoef(t, p)[0, 1] if t.std() > 0 and p.std() > 0 else float("nan")
        both = np.concatenate([t, p])
        lo, hi = np.percentile(both, [1, 99])
        hi = hi if hi > lo else lo + 1e-6
        cax = fig.add_subplot(grid[i, 2])
        for j, (v, what) in enumerate(((t, "measured"), (p, "predicted"))):
            expression_map_figure(
                thumb, xy, v, spot_px, title=f"{g} {what} (Pearson r = {r:.2f})",
                um_per_px=um_per_px, vmin=lo, vmax=hi, ax=fig.add_subplot(grid[i, j]),
                colorbar=cax if j == 1 else False, clipped=True, clip_values=both,
            )  # fmt: skip
    fig.suptitle(f"section {section}: measured vs predicted expression, log1p-CP10k")
    return fig


#: how a missing label reads once cast to text (pandas NaN, None, empty)
MISSING_LABEL_TEXT = ("nan", "NaN", "None", "", "<NA>")


def embedding_figure(
    za: np.ndarray, zb: np.ndarray, colourings: Mapping[str, np.ndarray], *, max_legend: int = 12
):
    """PCA of the image and gene embeddings (one shared projection), one row per colouring
    (``{"sample": (n,) labels, "pathology": (n,) labels}``)."""
    from sklearn.decomposition import PCA

    pca = PCA(2).fit(np.concatenate([za, zb]))
    pa, pb = pca.transform(za), pca.transform(zb)
    ev = pca.explained_variance_ratio_
    fig, axes = subplots(len(colourings), 2, figsize=(10, 4 * len(colourings)), squeeze=False)
    fig.set_layout_engine("constrained")  # axis labels of stacked rows never overlap
    for r, (name, labels) in enumerate(colourings.items()):
        labels = np.asarray(labels).astype(str)
        # a missing label is named, drawn grey and last, never a 'nan' class of its own
        missing = f"no {name}"
        labels = np.where(np.isin(labels, list(MISSING_LABEL_TEXT)), missing, labels)
        order = sorted(set(labels) - {missing}) + ([missing] if missing in labels else [])
        for c, (pc, what) in enumerate(((pa, "image"), (pb, "gene"))):
            ax = axes[r, c]
            for u in order:
                s = labels == u
                grey = {"color": "lightgrey"} if u == missing else {}
                ax.scatter(pc[s, 0], pc[s, 1], s=5, label=f"{u} ({int(s.sum())})", **grey)
            ax.set_title(f"{what} embeddings by {name}", fontsize=10)
            ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f} %)")
            ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f} %)")
        if len(np.unique(labels)) <= max_legend:
            axes[r, 1].legend(fontsize=7, markerscale=2, loc="best")
    return fig


def pearson_histogram(per_gene_pearson: Mapping[str, float]):
    """Histogram of per-gene Pearson r."""
    fig, ax = subplots(figsize=(5, 3))
    ax.hist([v for v in per_gene_pearson.values() if np.isfinite(v)], bins=20)
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel(f"Pearson r ({len(per_gene_pearson)} genes)")
    ax.set_ylabel("genes")
    return fig


def _nice_length(um: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k µm) close to ``um``."""
    k = 10 ** np.floor(np.log10(max(um, 1e-9)))
    return float(max(m * k for m in (1, 2, 5) if m * k <= um) if um >= k else k)


#: colour map of expression over H&E (see :func:`expression_map_figure`)
MAP_CMAP = "cividis"


def expression_map_figure(
    thumb: np.ndarray,
    xy: np.ndarray,
    values: np.ndarray,
    spot_px: float,
    *,
    title: str,
    um_per_px: float | None,
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "log1p-CP10k",
    ax=None,
    colorbar=True,
    clipped: bool | None = None,
    clip_values: np.ndarray | None = None,
):
    """Values drawn as squares of ``spot_px`` over an H&E thumbnail, with a colour bar and a
    scale bar in µm.

    Parameters
    ----------
    thumb
        ``(h, w, 3)`` uint8 thumbnail.
    xy
        ``(n, 2)`` centres in thumbnail pixels.
    values
        ``(n,)`` one value per centre.
    spot_px
        Side of each square in thumbnail pixels.
    um_per_px
        µm per thumbnail pixel, for the scale bar (``None``: unknown, no scale bar).
    vmin, vmax
        Colour limits (give the same to compare maps of one gene); default the 1st-99th
        percentiles of ``values``.
    ax
        Draw into this axes; default a new figure.
    colorbar
        Draw the colour bar (``False`` for a map sharing another one's scale), or an axes to
        draw it into.
    clipped, clip_values
        Whether ``vmin``/``vmax`` are the 1st-99th percentiles (default: when this function
        chose them) and the values they were taken from (default ``values``): the colour bar
        then says so when some value lies outside.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.collections import PolyCollection

    values = np.asarray(values, np.float64)
    if clipped is None:
        clipped = vmin is None or vmax is None
    if vmin is None or vmax is None:
        lo, hi = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
        vmin = lo if vmin is None else vmin
        vmax = (hi if hi > lo else lo + 1e-6) if vmax is None else vmax
    if ax is None:
        h, w = thumb.shape[:2]
        fig, ax = subplots(figsize=(7, 7 * h / w + 0.4))
    else:
        fig = ax.figure
    ax.imshow(thumb)
    half = spot_px / 2.0
    squares = [
        [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
        for x, y in np.asarray(xy, np.float64)
    ]
    # cividis: its dark end is navy, not the purple of haematoxylin, so low values stay
    # visible over the stain; no antialiasing, so adjacent squares leave no white seam
    coll = PolyCollection(
        squares, array=values, cmap=MAP_CMAP, alpha=0.85, edgecolors="none", antialiaseds=False
    )
    coll.set_clim(vmin, vmax)
    ax.add_collection(coll)
    if colorbar is not False and colorbar is not None:
        ref = values if clip_values is None else np.asarray(clip_values, np.float64)
        cut = bool(len(ref)) and (ref.min() < vmin or ref.max() > vmax)
        where = {"cax": colorbar}
        if colorbar is True:
            where = {"ax": ax, "fraction": 0.035, "pad": 0.02}
        fig.colorbar(
            coll, **where,
            label=label + (" (clipped to 1st-99th percentile)" if clipped and cut else ""),
            extend="both" if cut else "neither",
        )  # fmt: skip
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    if um_per_px is None:
        return fig
    bar_um = _nice_length(0.2 * thumb.shape[1] * um_per_px)
    bar_px = bar_um / um_per_px
    x0, y0 = 0.04 * thumb.shape[1], 0.95 * thumb.shape[0]
    ax.plot([x0, x0 + bar_px], [y0, y0], color="black", lw=3)
    ax.text(x0 + bar_px / 2, y0 - 0.015 * thumb.shape[0], f"{bar_um:g} µm", ha="center",
            va="bottom", fontsize=8)  # fmt: skip
    return fig
