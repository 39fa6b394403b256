"""Zero-shot protocols of a multimodal embedding space (Symile's evaluation).

Given every modality but one, pick the missing one's true record among ``k`` candidates (the
true one and ``k - 1`` others drawn from the test set): a Symile model scores a candidate by the
multilinear inner product with the given embeddings, a pairwise (CLIP) model by the sum of its
dot products with them. Plus Recall@k for each ordered pair of modalities.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def zero_shot_accuracy(
    embeddings: Mapping[str, np.ndarray],
    target: str,
    *,
    scorer: str = "symile",
    k: int = 10,
    present: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """Fraction of queries whose true ``target`` record scores highest among ``k`` candidates.

    Parameters
    ----------
    embeddings
        ``{modality: (n, d)}`` (rows aligned).
    target
        The modality to retrieve; the others are given.
    scorer
        ``"symile"``: ``sum_d prod_m z_m[i, d] * z_target[j, d]``; ``"pairwise"``:
        ``sum_m <z_m[i], z_target[j]>``.
    k
        Candidates per query (chance = 1 / k).
    present
        ``(n, n_modalities)`` bool in ``embeddings`` order; only rows with every modality are
        queries and candidates.
    seed
        Seed of the candidate draws.

    Returns
    -------
    float
        Accuracy; ties are shared (a tie of the true record with ``t`` others counts ``1/(t+1)``).
    """
    names = list(embeddings)
    if target not in names:
        raise ValueError(f"target={target!r}: not among {names}")
    if scorer not in ("symile", "pairwise"):
        raise ValueError(f"scorer={scorer!r}: symile or pairwise")
    rows = np.arange(len(embeddings[target]))
    if present is not None:
        rows = rows[np.asarray(present).all(axis=1)]
    if len(rows) < k:
        raise ValueError(f"{len(rows)} complete rows, fewer than k={k} candidates")
    zt = np.asarray(embeddings[target], np.float64)
    given = [np.asarray(embeddings[m], np.float64) for m in names if m != target]
    rng = np.random.default_rng(seed)
    total = 0.0
    for i in rows:
        others = rows[rows != i]
        cand = np.concatenate([[i], rng.choice(others, size=k - 1, replace=False)])
        if scorer == "symile":
            q = np.prod([g[i] for g in given], axis=0)
            s = zt[cand] @ q
        else:
            s = zt[cand] @ np.sum([g[i] for g in given], axis=0)
        best = s.max()
        if s[0] >= best - 1e-12:
            total += 1.0 / np.sum(s >= best - 1e-12)
    return total / len(rows)


def pairwise_recall(
    embeddings: Mapping[str, np.ndarray], present: np.ndarray | None = None
) -> dict[str, float]:
    """Recall@1/5/10 for every ordered pair of modalities over rows where both are present,
    keys ``"{a}_to_{b}.recall@k"``."""
    from histoxmodal.evaluation.retrieval import cross_modal_retrieval

    names = list(embeddings)
    out = {}
    for i, j in itertools.combinations(range(len(names)), 2):
        rows = np.arange(len(embeddings[names[i]]))
        if present is not None:
            rows = rows[np.asarray(present)[:, [i, j]].all(axis=1)]
        ret = cross_modal_retrieval(embeddings[names[i]][rows], embeddings[names[j]][rows])
        for direction, (a, b) in (
            ("image_to_gene", (names[i], names[j])),
            ("gene_to_image", (names[j], names[i])),
        ):
            for kk in (1, 5, 10):
                out[f"{a}_to_{b}.recall@{kk}"] = float(ret[direction][f"R@{kk}"])
    return out


def evaluate_cohort(
    run: str | Path, dataset: str | Path, out: str | Path, *, k: int = 10, seed: int = 0
) -> dict[str, object]:
    """Evaluate a multimodal run on its cohort's held-out patients: zero-shot accuracy for each
    modality given the others and Recall@k for each pair; writes ``out/metrics.json`` and
    ``out/report.html``. Keys name the loss: ``zero_shot.symile.report.accuracy@k10``."""
    import json

    from histoxmodal._fileutil import write_json_atomic
    from histoxmodal.data.splits import load_split
    from histoxmodal.training.multimodal import cohort_embeddings, load_multimodal_run

    run, dataset, out = Path(run), Path(dataset), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = load_multimodal_run(run)
    split = dataset / "splits" / "patient.json"
    fold = load_split(split)[0]
    z, present = cohort_embeddings(module, dataset, fold.test)
    loss = module.config.loss.name
    scorer = "symile" if loss == "symile" else "pairwise"
    m: dict[str, object] = {}
    for target in z:
        acc = zero_shot_accuracy(z, target, scorer=scorer, k=k, present=present, seed=seed)
        m[f"zero_shot.{loss}.{target}.accuracy@k{k}"] = acc
    for key, v in pairwise_recall(z, present).items():
        m[f"retrieval.{loss}.{key}"] = v
    protocol = {
        "run": str(run),
        "dataset": str(dataset),
        "split_sha256": json.loads(split.read_text())["sha256"],
        "n_test": len(fold.test),
        "k": k,
        "chance": 1.0 / k,
        "scorer": scorer,
        "seed": seed,
        "config": module.config.to_dict(),
    }
    result = {"metrics": m, "protocol": protocol}
    write_json_atomic(out / "metrics.json", result)
    write_cohort_report(out / "report.html", [result])
    return result


def write_cohort_report(path: str | Path, results: list[dict]) -> None:
    """A self-contained HTML page: one table of every run's metrics, side by side."""
    import html

    keys = sorted(
        {k.split(".", 2)[0] + "." + k.split(".", 2)[2] for r in results for k in r["metrics"]}
    )
    losses = [r["protocol"]["config"]["loss"]["name"] for r in results]
    rows = []
    for key in keys:
        kind, rest = key.split(".", 1)
        cells = []
        for r, loss in zip(results, losses, strict=True):
            v = r["metrics"].get(f"{kind}.{loss}.{rest}")
            cells.append("" if v is None else f"{v:.3f}")
        rows.append(
            "<tr><td>"
            + html.escape(key)
            + "</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    p0 = results[0]["protocol"]
    page = (
        "<!doctype html><meta charset='utf-8'><title>histoxmodal cohort evaluation</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
        "td,th{padding:2px 10px;border-bottom:1px solid #ddd}</style>"
        "<h1>Multimodal evaluation</h1>"
        f"<p>Held-out patients: {p0['n_test']} rows; zero-shot: the true record among "
        f"k={p0['k']} candidates (chance {p0['chance']:.3f}), given the other modalities.</p>"
        "<table><tr><th>metric</th>"
        + "".join(f"<th>{html.escape(x)}</th>" for x in losses)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    tmp = Path(path).with_suffix(".html.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
