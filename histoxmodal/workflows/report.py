"""The one report writer: a self-contained HTML page (tables and inline PNG figures) for spatial
evaluations, cohort evaluations and their comparisons, plus the spatial report's figures."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def figure_png(fig) -> str:
    """A matplotlib figure as base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def write_report(
    path: str | Path,
    *,
    title: str,
    summary: str,
    columns: Sequence[str],
    rows: Sequence[tuple[str, Sequence[object]]],
    figures: Mapping[str, str] | None = None,
) -> None:
    """Write one self-contained HTML report atomically.

    Parameters
    ----------
    title, summary
        Heading and the protocol line under it.
    columns
        Header of the value columns (e.g. ``["value"]``, or one per compared run).
    rows
        ``(metric name, values)`` per table row, one value per column.
    figures
        ``{heading: base64 PNG}`` shown below the table.
    """
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{_cell(v)}</td>' for v in vals)}</tr>"
        for name, vals in rows
    )
    imgs = "".join(
        f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'/>"
        for t, b in (figures or {}).items()
    )
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td,th{padding:2px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
        f"<table><tr><th>metric</th>{head}</tr>{body}</table>{imgs}"
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)


def write_cohort_report(path: str | Path, results: list[dict]) -> None:
    """Cohort evaluations side by side, one column per run (its loss), through
    :func:`write_report`."""
    names = sorted(
        {k.split(".", 2)[0] + "." + k.split(".", 2)[2] for r in results for k in r["metrics"]}
    )
    losses = [r["protocol"]["config"]["loss"]["name"] for r in results]
    rows = []
    for key in names:
        kind, rest = key.split(".", 1)
        rows.append(
            (
                key,
                [
                    r["metrics"].get(f"{kind}.{loss}.{rest}")
                    for r, loss in zip(results, losses, strict=True)
                ],
            )
        )
    p0 = results[0]["protocol"]
    write_report(
        path,
        title="Multimodal evaluation",
        summary=(
            f"Held-out patients: {p0['n_test']} rows; zero-shot: the true record among "
            f"k={p0['k']} candidates (chance {p0['chance']:.3f}), given the other modalities."
        ),
        columns=losses,
        rows=rows,
    )


def spatial_figures(
    za: np.ndarray,
    zb: np.ndarray,
    patches,
    test_rows: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    genes: Sequence[str],
    per_gene_pearson: Mapping[str, float],
    samples: np.ndarray,
    xy: np.ndarray,
) -> dict[str, str]:
    """The spatial report's figures: retrieval examples, measured vs predicted expression of the
    best-predicted genes on the first test sample, the per-gene Pearson histogram and the
    embeddings' PCA coloured by sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    sim = za @ zb.T
    n_q = min(3, len(za))
    fig, axes = plt.subplots(n_q, 6, figsize=(12, 2.2 * n_q), squeeze=False)
    for r, q in enumerate(np.random.default_rng(0).choice(len(za), n_q, replace=False)):
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
    figs["Retrieval examples"] = figure_png(fig)
    best_genes = sorted(genes, key=lambda g: -np.nan_to_num(per_gene_pearson[g]))[:3]
    first = samples[0]
    sel = samples == first
    fig, axes = plt.subplots(2, 3, figsize=(11, 7), squeeze=False)
    for c, g in enumerate(best_genes):
        j = list(genes).index(g)
        for r, (vals, lab) in enumerate(
            ((y_true[sel, j], "measured"), (y_pred[sel, j], "predicted"))
        ):
            axes[r, c].scatter(xy[sel, 0], xy[sel, 1], c=vals, s=12, cmap="viridis")
            axes[r, c].invert_yaxis()
            axes[r, c].set_title(f"{g} {lab}", fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle(f"sample {first}: measured vs predicted expression (log1p CP10k)")
    figs["Predicted vs measured expression"] = figure_png(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([v for v in per_gene_pearson.values() if np.isfinite(v)], bins=20)
    ax.set_xlabel(f"Pearson r (top {len(genes)} genes)")
    ax.set_ylabel("genes")
    figs["Per-gene Pearson"] = figure_png(fig)
    if len(za) >= 2 and za.shape[1] >= 2:
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
        figs["Embeddings (PCA) coloured by sample"] = figure_png(fig)
    return figs


def _nice_length(um: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k µm) close to ``um``."""
    k = 10 ** np.floor(np.log10(max(um, 1e-9)))
    return float(max(m * k for m in (1, 2, 5) if m * k <= um) if um >= k else k)


def expression_map_figure(
    thumb: np.ndarray,
    xy: np.ndarray,
    values: np.ndarray,
    spot_px: float,
    *,
    title: str,
    um_per_px: float,
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "log1p-CP10k",
    ax=None,
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
        µm per thumbnail pixel, for the scale bar.
    vmin, vmax
        Colour limits (give the same to compare maps of one gene); default the 1st-99th
        percentiles of ``values``.
    ax
        Draw into this axes; default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    values = np.asarray(values, np.float64)
    if vmin is None or vmax is None:
        lo, hi = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
        vmin = lo if vmin is None else vmin
        vmax = (hi if hi > lo else lo + 1e-6) if vmax is None else vmax
    if ax is None:
        h, w = thumb.shape[:2]
        fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.4))
    else:
        fig = ax.figure
    ax.imshow(thumb)
    half = spot_px / 2.0
    squares = [
        [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
        for x, y in np.asarray(xy, np.float64)
    ]
    coll = PolyCollection(squares, array=values, cmap="magma", alpha=0.75, edgecolors="none")
    coll.set_clim(vmin, vmax)
    ax.add_collection(coll)
    fig.colorbar(coll, ax=ax, fraction=0.035, pad=0.02, label=label)
    bar_um = _nice_length(0.2 * thumb.shape[1] * um_per_px)
    bar_px = bar_um / um_per_px
    x0, y0 = 0.04 * thumb.shape[1], 0.95 * thumb.shape[0]
    ax.plot([x0, x0 + bar_px], [y0, y0], color="black", lw=3)
    ax.text(x0 + bar_px / 2, y0 - 0.015 * thumb.shape[0], f"{bar_um:g} µm", ha="center",
            va="bottom", fontsize=8)  # fmt: skip
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return fig
