"""``histoxmodal evaluate``: a trained run's metrics on a dataset, as ``metrics.json`` and a
self-contained HTML report.

Spatial runs: cross-modal retrieval (whole test set and in-batch), expression prediction from
image embeddings by three heads fitted on training spots (ridge, MLP, BLEEP-style retrieval)
and batch mixing. Heads and retrieval read the embeddings as the config's ``head`` section says
(:class:`~histoxmodal.heads.inputs.HeadInputs`: section centring, neighbour context,
retrieval smoothing); the hand-crafted baseline's retrieval is read the same way, its ridge
head on the plain features. Cohort runs: Symile's
zero-shot protocol and pairwise retrieval on held-out patients. The metrics themselves are
array functions in :mod:`histoxmodal.evaluation`; the spatial protocol is
:mod:`histoxmodal.workflows.evaluate_spatial`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.fileutil import write_json_atomic
from histoxmodal.version import __version__
from histoxmodal.workflows.evaluate_spatial import evaluate_spatial, resolve_rows  # noqa: F401
from histoxmodal.workflows.report import BASELINE_SUFFIX, CHANCE_SUFFIX  # noqa: F401
from histoxmodal.workflows.run import Run

log = logging.getLogger(__name__)


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
    allow_overlap: bool = False,
) -> dict[str, object]:
    """Evaluate ``run`` on ``dataset``; writes ``out/metrics.json`` and ``out/report.html``.

    Parameters
    ----------
    run
        A run folder or :class:`~histoxmodal.workflows.run.Run`, spatial or cohort.
    dataset
        A paired dataset (spatial runs) or cohort store (cohort runs).
    split, fold
        Spatial runs: see :func:`~histoxmodal.workflows.evaluate_spatial.resolve_rows`.
        Cohort runs are scored on the held-out patients of their patient split.
    in_batch_size
        Batch size of the in-batch retrieval protocol (spatial).
    n_genes
        Expression is scored on the ``n_genes`` most variable genes of the training rows.
    k, seed
        Candidates per zero-shot query and the seed of their draw (cohort).
    allow_overlap
        Score test spots that the run trained on (spatial) instead of refusing; the number is
        stamped in ``metrics.json`` (``protocol.overlap``) and in the report.

    Raises
    ------
    ConfigError
        A test spot was a training spot of the run and ``allow_overlap`` is not set.

    Returns
    -------
    dict
        ``{"metrics": {flat dotted keys: float}, "protocol": {...}}`` (spatial results also
        carry ``per_gene_pearson``), as written to ``metrics.json``. A metric with a chance
        level is followed by ``<key>_chance`` (Recall@k: k/n; zero-shot accuracy: 1/k;
        correlations: 0; MSE: the training mean's), and spatial metrics by ``<key>_baseline``,
        hand-crafted colour/texture features + ridge on the same split and genes.
    """
    run = run if isinstance(run, Run) else Run.load(run)
    dataset, out = Path(dataset), Path(out)
    if not run.run_kind.image_to_expression:  # patient-level modalities
        return _evaluate_cohort(run, dataset, out, k=k, seed=seed)
    return evaluate_spatial(
        run, dataset, out, split=split, fold=fold, in_batch_size=in_batch_size, n_genes=n_genes,
        allow_overlap=allow_overlap,
    )  # fmt: skip


def _with_cohort_chance(m: dict, names: list[str], present: np.ndarray, k: int) -> dict:
    """Each cohort metric followed by its ``_chance`` key: 1 / k for zero-shot accuracy among k
    candidates, min(r, n) / n for Recall@r over the n rows where both modalities are present."""
    import re

    out: dict[str, float] = {}
    for key, v in m.items():
        out[key] = v
        if key.startswith("zero_shot."):
            out[f"{key}{CHANCE_SUFFIX}"] = 1.0 / k
        hit = re.fullmatch(r"retrieval\.[^.]+\.(\w+)_to_(\w+)\.recall@(\d+)", key)
        if hit and hit[1] in names and hit[2] in names:
            both = present[:, [names.index(hit[1]), names.index(hit[2])]].all(axis=1)
            n = int(both.sum())
            out[f"{key}{CHANCE_SUFFIX}"] = min(int(hit[3]), n) / n if n else float("nan")
    return out


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
    m = _with_cohort_chance(m, list(z), np.asarray(present, bool), k)
    protocol = {
        "run": str(run.path),
        "dataset": str(dataset),
        "split_sha256": sp.sha256,
        "n_test": len(fold.test),
        "k": k,
        "chance": 1.0 / k,
        "scorer": scorer,
        "histoxmodal_version": __version__,
        "seed": seed,
        "config": run.config.to_dict(),
    }
    result = {"metrics": m, "protocol": protocol}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / keys.METRICS_FILE, result)
    write_cohort_report(out / keys.REPORT_FILE, [result])
    return result
