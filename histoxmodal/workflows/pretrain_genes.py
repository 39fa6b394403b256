"""``histoxmodal pretrain-genes``: a gene model (scVI or DRVI) trained on every section that has
counts, paired with an image or not, saved in the library's own folder format for the
``gene_scvi`` / ``gene_drvi`` towers (``model.gene_weights``).

HESCAPE's finding is that gene encoders pretrained on spatial data align best with histology.
her2st has 35 sections with counts and only 5 with an H&E image, so the 30 unpaired sections are
exactly the data such pretraining needs.

Output ``OUT/``:

- ``model.pt``: the model as ``SCVI.save`` / ``DRVI.save`` writes it (no AnnData inside);
- ``genes.txt``: its genes, one per line, in the model's order;
- ``gene_model.json``: provenance (sections and spots, source file hashes, gene selection,
  batch key, epochs, the final training and validation ELBO, library versions, seconds).

The folder is built in a staging folder beside ``OUT`` and renamed into place when complete; a
killed run keeps Lightning's ``last.ckpt`` there and continues with ``resume=True``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, DataError
from histoxmodal.fileutil import (
    check_output_location,
    check_replaceable,
    output_lock,
    publish_dir,
    write_json_atomic,
)
from histoxmodal.version import __version__

log = logging.getLogger(__name__)

#: the gene-model libraries ``pretrain_genes`` trains, and the tower that loads each
MODELS = {"scvi": "gene_scvi", "drvi": "gene_drvi"}
#: where sections are read from (``--recipe``)
RECIPES = ("her2st", "h5ad")
#: default epochs, chosen by measurement on her2st (13,442 spots x 2,000 genes, 2 CPU cores):
#: scVI takes 1.8 s and DRVI 9 s per epoch; scVI's validation ELBO stops improving near epoch
#: 100 (1047.1 at 103, 1046.0 at 115, 1046.6 at 125); both finish well under 15 minutes
DEFAULT_EPOCHS = {"scvi": 100, "drvi": 60}
#: the metrics logged once per epoch off a terminal
_ELBO = ("elbo_train", "elbo_validation")


@dataclass
class GeneModelResult:
    """What :func:`pretrain_genes` wrote."""

    out: Path
    model: str
    n_spots: int
    n_sections: int
    genes: list[str] = field(repr=False)
    epochs: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


def read_sections(src: str | Path, recipe: str):
    """Every section with counts under ``src`` as one AnnData of raw counts (``obs['sample']``
    per section), plus the source files and their SHA-256.

    ``her2st``: the 35 sections of a her2st-layout folder, images or not (genes measured in all).
    ``h5ad``: an ``.h5ad`` file, or a folder of them (one section per file unless the file has
    ``obs['sample']``); raw counts in ``X`` or ``layers['counts']``.
    """
    src = Path(src).expanduser()
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r}: pretrain-genes reads {', '.join(RECIPES)}")
    if not src.exists():
        raise ConfigError(f"--src {src}: no such file or folder")
    if recipe == "her2st":
        from histoxmodal.io.spatial.st import read_her2st

        if not (src / "counts").is_dir():
            raise ConfigError(
                f"--src {src}: not a her2st-layout folder (no counts/ inside); give the "
                f"folder that holds counts/, spots/ and images/"
            )
        adata = read_her2st(src)
        files = sorted((src / "counts").glob("*.tsv*"))
    else:
        import anndata as ad

        files = [src] if src.is_file() else sorted(src.glob("*.h5ad"))
        if not files:
            raise ConfigError(f"--src {src}: no .h5ad files")
        parts = []
        for f in files:
            a = ad.read_h5ad(f)
            if "counts" in a.layers:
                a.X = a.layers["counts"]
            if keys.OBS_SAMPLE not in a.obs:
                a.obs[keys.OBS_SAMPLE] = f.stem
            a.obs_names = [f"{f.stem}:{n}" for n in a.obs_names]
            parts.append(a)
        adata = parts[0] if len(parts) == 1 else ad.concat(parts, join="inner")
        for col in (keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH):
            if col in adata.obs:
                adata.obs[col] = adata.obs[col].astype(str).astype("category")
    from histoxmodal.data.store import file_sha256

    return adata, {str(f): file_sha256(f) for f in files}


def _check_counts(adata, src) -> None:
    import scipy.sparse as sp

    x = adata.X
    sample = x[: min(2000, x.shape[0])]
    values = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    if values.size and (values.min() < 0 or not np.allclose(values, np.round(values))):
        raise DataError(
            f"--src {src}: the expression is not raw counts (negative or fractional values); "
            f"scVI and DRVI model counts: give the counts (X or layers['counts'])"
        )


def select_genes(adata, n_genes: int, batch_key: str) -> list[str]:
    """The ``n_genes`` most variable genes (scanpy's ``seurat_v3`` on raw counts, ranked
    within each batch and merged), among genes seen in at least 10 spots."""
    import scanpy as sc

    keep = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= 10
    sub = adata[:, keep]
    if sub.n_vars <= n_genes:
        return list(sub.var_names)
    hv = sc.pp.highly_variable_genes(
        sub, n_top_genes=n_genes, flavor="seurat_v3", batch_key=batch_key, inplace=False
    )
    chosen = hv.index[hv["highly_variable"]] if "highly_variable" in hv else hv.index[:n_genes]
    return [g for g in sub.var_names if g in set(chosen)]


def _params(recipe, model, batch_key, n_genes, epochs, seed, files) -> dict[str, Any]:
    return {
        "recipe": recipe,
        "model": model,
        "batch_key": batch_key,
        "n_genes": n_genes,
        "max_epochs": epochs,
        "seed": seed,
        "sources": files,
    }


def _is_gene_model(p: Path) -> bool:
    return (p / keys.GENE_MODEL_MANIFEST).is_file()


def pretrain_genes(
    src: str | Path,
    out: str | Path,
    *,
    recipe: str = "her2st",
    model: str = "drvi",
    batch_key: str = keys.OBS_PATIENT,
    n_genes: int = 2000,
    max_epochs: int | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    enable_progress_bar: bool = False,
) -> GeneModelResult:
    """Train a gene model on every section of ``src`` and save it to ``out``.

    Parameters
    ----------
    src, recipe
        Where the sections are and how to read them (:func:`read_sections`).
    model
        ``"scvi"`` (scvi-tools) or ``"drvi"`` (drvi-py).
    batch_key
        ``obs`` column the model corrects for (``patient``, ``sample``); its decoder sees it,
        its encoder does not, so the saved encoder embeds sections it never saw.
    n_genes
        Highly variable genes to model (all genes if fewer).
    max_epochs
        Default :data:`DEFAULT_EPOCHS` of the model.
    resume
        Continue a killed run from its last epoch (same parameters and sources).
    overwrite
        Replace an earlier gene model at ``out``.

    Raises
    ------
    ConfigError
        Bad options or data, with the fix; ``out`` is left as it was.
    """
    from histoxmodal.deps import require_extra

    if model not in MODELS:
        raise ConfigError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    require_extra("drvi" if model == "drvi" else "scvi", f"pretrain-genes --model {model}")
    if isinstance(n_genes, bool) or not isinstance(n_genes, int) or n_genes < 2:
        raise ConfigError(f"--genes {n_genes!r}: expected an integer >= 2")
    epochs = DEFAULT_EPOCHS[model] if max_epochs is None else max_epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"--max-epochs {max_epochs!r}: expected an integer >= 1")
    out = check_output_location(out, inputs=[src])
    check_replaceable(out, overwrite=overwrite, is_ours=_is_gene_model, kind="gene model")
    t0 = time.perf_counter()
    with output_lock(out):
        adata, files = read_sections(src, recipe)
        if batch_key not in adata.obs:
            raise ConfigError(
                f"--batch-key {batch_key!r}: not a column of the sections' obs (they have "
                f"{', '.join(map(str, adata.obs.columns))})"
            )
        _check_counts(adata, src)
        params = _params(recipe, model, batch_key, n_genes, epochs, seed, files)
        stage = out.parent / f".{out.name}.partial"
        resumed_from = _prepare_stage(stage, params, resume)
        genes = select_genes(adata, n_genes, batch_key)
        sub = adata[:, genes].copy()
        sub.obs = sub.obs[[c for c in sub.obs.columns if c in (batch_key, keys.OBS_SAMPLE)]]
        log.info(
            "%s: %d spots of %d sections, %d genes, batch key %r (%d batches); %d epochs",
            model, sub.n_obs, sub.obs[keys.OBS_SAMPLE].nunique(), len(genes), batch_key,
            sub.obs[batch_key].nunique(), epochs,
        )  # fmt: skip
        trained = _train(sub, model, batch_key, epochs, seed, stage, enable_progress_bar)
        trained.save(str(stage / "saved"), overwrite=True, save_anndata=False)
        shutil.move(str(stage / "saved" / "model.pt"), stage / "model.pt")
        shutil.rmtree(stage / "saved")
        shutil.rmtree(stage / keys.RUN_CHECKPOINT_DIR, ignore_errors=True)
        (stage / keys.RUN_GENES_FILE).write_text("\n".join(genes) + "\n", encoding="utf-8")
        history = {
            k: float(trained.history[k].values[-1][0])
            for k in _ELBO
            if k in trained.history and len(trained.history[k])
        }
        seconds = time.perf_counter() - t0
        sections = sub.obs[keys.OBS_SAMPLE].value_counts().sort_index()
        manifest = {
            "kind": "gene_model",
            "model": model,
            "tower": MODELS[model],
            "params": params,
            "sections": {str(k): int(v) for k, v in sections.items()},
            "n_spots": int(sub.n_obs),
            "n_genes": len(genes),
            "batches": sorted(map(str, sub.obs[batch_key].unique())),
            "final": history,
            "resumed_from_epoch": resumed_from,
            "seconds": round(seconds, 1),
            "versions": _versions(model),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "use": {
                "model.gene_encoder": MODELS[model],
                "model.gene_weights": str(out),
            },
        }
        (stage / "params.json").unlink(missing_ok=True)
        write_json_atomic(stage / keys.GENE_MODEL_MANIFEST, manifest)
        publish_dir(stage, out)
    return GeneModelResult(
        out, model, int(sub.n_obs), len(sections), genes, epochs, seconds, resumed_from
    )


def _prepare_stage(stage: Path, params: dict, resume: bool) -> int | None:
    """The staging folder: kept (and its epoch returned) when resuming the same run."""
    last = stage / keys.RUN_CHECKPOINT_DIR / "last.ckpt"
    if resume and last.is_file():
        try:
            before = json.loads((stage / "params.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before != json.loads(json.dumps(params)):
            raise ConfigError(
                f"--resume: {stage} was started with other options or sources; rerun without "
                f"--resume to start again"
            )
        from histoxmodal.training.trainer import checkpoint_position

        return checkpoint_position(last)[0] + 1
    if resume:
        log.warning("--resume: no interrupted run at %s; starting from the first epoch", stage)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    write_json_atomic(stage / "params.json", params)
    return None


def _train(adata, model: str, batch_key: str, epochs: int, seed: int, stage: Path, bar: bool):
    """Fit the model with scvi-tools' trainer, a ``last.ckpt`` per epoch in ``stage`` (atomic),
    resuming from it when present."""
    import scvi
    from lightning.pytorch.callbacks import Callback

    from histoxmodal.training.trainer import epoch_log_callback, sigterm_interrupts

    scvi.settings.seed = seed
    if model == "scvi":
        scvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
        m = scvi.model.SCVI(adata)
    else:
        import drvi

        drvi.model.DRVI.setup_anndata(
            adata, categorical_covariate_keys=[batch_key], is_count_data=True
        )
        m = drvi.model.DRVI(adata)
    last = stage / keys.RUN_CHECKPOINT_DIR / "last.ckpt"

    class SaveLast(Callback):
        """``last.ckpt`` after every epoch (weights, optimizer, loop state) through the
        trainer's atomic writer. Not Lightning's ModelCheckpoint: scvi-tools' trainer needs
        ``enable_checkpointing`` for that, which also adds its own checkpoint writer under
        ``scvi.settings.logging_dir`` (the current folder)."""

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            last.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(last, weights_only=False)  # the optimizer too, to resume

    callbacks: list = [SaveLast()]
    if not bar:
        callbacks.append(epoch_log_callback(lambda k: k in _ELBO))
    with sigterm_interrupts():  # a killed run exits 143, its last.ckpt kept for --resume
        _fit(m, epochs, bar, callbacks, last, stage)
    return m


def _fit(m, epochs: int, bar: bool, callbacks: list, last: Path, stage: Path) -> None:
    from histoxmodal.training.trainer import atomic_checkpoint_io

    m.train(
        max_epochs=epochs,
        accelerator="cpu",
        enable_progress_bar=bar,
        check_val_every_n_epoch=1,
        callbacks=callbacks,
        plugins=[atomic_checkpoint_io()],
        default_root_dir=str(stage),
        ckpt_path=str(last) if last.is_file() else None,
    )


def _versions(model: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"histoxmodal": __version__}
    for pkg in ("scvi-tools", "torch", "anndata", "scanpy") + (
        ("drvi-py",) if model == "drvi" else ()
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
