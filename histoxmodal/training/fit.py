"""Running a training: data, model, Lightning trainer, run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal._fileutil import write_json_atomic
from histoxmodal.errors import ConfigError
from histoxmodal.training.config import TrainConfig

RUN_CONFIG = "config.json"
RUN_WEIGHTS = "model.safetensors"


def select_genes(adata, rows: np.ndarray, n: int | None) -> list[str]:
    """The ``n`` most variable genes (log1p CP10k) over the training ``rows``; all if ``None``."""
    import scipy.sparse as sp

    if n is None or n >= adata.n_vars:
        return list(adata.var_names)
    X = sp.csr_matrix(adata.X[rows], dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags(1e4 / np.maximum(totals, 1)) @ X
    X.data = np.log1p(X.data)
    mean = np.asarray(X.mean(axis=0)).ravel()
    var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    top = np.sort(np.argsort(-var, kind="stable")[:n])
    return [str(adata.var_names[i]) for i in top]


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` / ``16-mixed`` on CUDA (by bf16 support), ``32-true`` else."""
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def fit(
    config: TrainConfig,
    out: str | Path,
    *,
    data: str | Path | None = None,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    enable_progress_bar: bool = False,
    resume: bool = False,
    split: str | Path | None = None,
    fold: int | str = 0,
):
    """Train a contrastive model; writes the run folder and returns the module.

    ``split`` (a split file) and ``fold`` (index or name such as ``"sample=C5"``) choose the
    training rows; by default the dataset's random split, fold 0.

    The run folder holds ``config.json`` (resolved), ``genes.txt``, ``metrics.csv`` logs
    (``csv/``), TensorBoard logs (``tensorboard/``), Lightning checkpoints (``checkpoints/``) and
    the final weights ``model.safetensors``.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.paired import load_paired
    from histoxmodal.data.splits import load_split, split_file
    from histoxmodal.data.transforms import Augment
    from histoxmodal.encoders import describe_encoder
    from histoxmodal.training.module import ContrastiveModule
    from histoxmodal.training.sampler import GroupBatchSampler

    data = Path(data or config.data or "")
    if not (data / keys.PAIRED_MANIFEST_FILE).exists():
        raise ConfigError(
            f"--data {data}: not a paired dataset (build one with `histoxmodal build`)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.optim.seed, workers=True)
    adata, _ = load_paired(data)
    folds = load_split(split or split_file(data, "random"))
    if isinstance(fold, str):
        names = [f.name for f in folds]
        if fold not in names:
            raise ConfigError(f"fold {fold!r} not in the split; folds: {', '.join(names)}")
        chosen = folds[names.index(fold)]
    else:
        chosen = folds[fold]
    # train on the fold's train rows; validate on its validation rows, or its test rows when the
    # split has no validation part (leave-one-out splits)
    train_rows = chosen.train(adata.n_obs)
    val_rows = chosen.val if len(chosen.val) else chosen.test
    genes = select_genes(adata, train_rows, config.genes)
    (out / "genes.txt").write_text("\n".join(genes) + "\n")
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise ConfigError(f"--resume: {out} has no checkpoints/last.ckpt to continue from")
    if not resume and last.exists():
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    o, c, m = config.optim, config.correction, config.model
    aug = Augment(**config.augment)
    # the gene tower states the normalisation it reads
    norm = describe_encoder(m.gene_encoder).get("normalisation", "log1p_cp10k")
    train_ds = PairedDataset(
        data, indices=train_rows, genes=genes, augment=aug, seed=o.seed, normalisation=norm
    )
    val_ds = PairedDataset(data, indices=val_rows, genes=genes, normalisation=norm)
    n_batches = len(train_ds.categories[c.batch_key])
    write_json_atomic(
        out / RUN_CONFIG,
        {
            **config.to_dict(),
            "data": str(data),
            "n_batches": n_batches,
            "split": str(split) if split else None,
            "fold": fold,
        },
    )
    module = ContrastiveModule(config, genes, n_batches)
    if getattr(module.gene, "pretrain_epochs", 0):
        module.gene.pretrain(adata[train_rows], batch_key=c.batch_key, seed=o.seed)
    if m.image_mode == "frozen" and m.cache_image_features:
        from histoxmodal.training.cache import CachedFeatures, image_features

        feats = image_features(module, data, n_views=m.cache_views, cache_dir=out / "cache")
        train_ds = CachedFeatures(train_ds, feats, random_view=True)
        val_ds = CachedFeatures(val_ds, feats, random_view=False)
    loader_kw = {"num_workers": o.num_workers, "persistent_workers": o.num_workers > 0}
    if c.sampler == "random":
        train_dl = DataLoader(
            train_ds, batch_size=o.batch_size, shuffle=True, drop_last=True, **loader_kw
        )
    else:
        groups = PairedDataset.codes_of(data, c.batch_key)[train_rows]
        sampler = GroupBatchSampler(groups, o.batch_size, mode=c.sampler, seed=o.seed)
        train_dl = DataLoader(train_ds, batch_sampler=sampler, **loader_kw)
    val_dl = DataLoader(val_ds, batch_size=o.batch_size, **loader_kw) if len(val_rows) else None
    train_and_save(
        module,
        train_dl,
        val_dl,
        out,
        o,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        enable_progress_bar=enable_progress_bar,
        resume=resume,
    )
    return module


def make_trainer(
    out: Path,
    optim,
    *,
    max_epochs: int | None,
    accelerator: str,
    devices: int | str,
    num_nodes: int,
    enable_progress_bar: bool,
):
    """The Lightning ``Trainer`` of every training run: CSV and TensorBoard logs, checkpoints
    (``checkpoints/last.ckpt`` for ``--resume``), precision and accumulation from ``optim``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    return L.Trainer(
        default_root_dir=out,
        max_epochs=max_epochs or optim.max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        precision=resolve_precision(optim.precision, accelerator),
        accumulate_grad_batches=optim.accumulate,
        log_every_n_steps=1,
        logger=[
            CSVLogger(out, name="csv", version=""),
            TensorBoardLogger(out, name="tensorboard", version=""),
        ],
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)],
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )


def train_and_save(
    module, train_dl, val_dl, out: Path, optim, *, resume: bool, **trainer_kw
) -> None:
    """Fit with :func:`make_trainer` (continuing ``checkpoints/last.ckpt`` when ``resume``),
    then write the final weights (``model.safetensors``) from the main process."""
    trainer = make_trainer(out, optim, **trainer_kw)
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume else None)
    if trainer.is_global_zero:
        save_weights(module, out / RUN_WEIGHTS)


def save_weights(module, path: Path) -> None:
    """Write the module's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.partial")
    save_file(state, tmp)
    os.replace(tmp, path)


def load_run(run: str | Path):
    """Rebuild a trained module from a run folder (``config.json``, ``genes.txt``,
    ``model.safetensors``); the towers' original weight files are not needed."""
    import dataclasses

    from safetensors.torch import load_file

    from histoxmodal.training.config import config_from_dict
    from histoxmodal.training.module import ContrastiveModule

    run = Path(run)
    for f in (RUN_CONFIG, "genes.txt", RUN_WEIGHTS):
        if not (run / f).exists():
            raise FileNotFoundError(f"{run / f} not found: is {run} a finished training run?")
    raw = json.loads((run / RUN_CONFIG).read_text())
    n_batches = raw.pop("n_batches")
    raw.pop("split", None)
    raw.pop("fold", None)
    cfg = config_from_dict(raw)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_weights=None))
    genes = (run / "genes.txt").read_text().split()
    module = ContrastiveModule(cfg, genes, n_batches)
    module.load_state_dict(load_file(str(run / RUN_WEIGHTS)))
    return module.eval()


def compute_embeddings(module, dataset: str | Path, rows=None, *, batch_size: int = 128):
    """Image and gene embeddings ``(n, d)`` of ``rows`` (default all) of a paired dataset, in
    batches with a progress bar; expression normalised as the run's gene tower states."""
    import numpy as np
    import torch

    from histoxmodal._progress import progress
    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.encoders import describe_encoder

    norm = describe_encoder(module.config.model.gene_encoder).get("normalisation", "log1p_cp10k")
    ds = PairedDataset(dataset, genes=module.gene.genes, indices=rows, normalisation=norm)
    key = module.config.correction.batch_key
    za, zb = [], []
    starts = range(0, len(ds), batch_size)
    with torch.no_grad():
        for i in progress(starts, total=len(starts), desc="embed", unit="batch"):
            items = [ds[j] for j in range(i, min(len(ds), i + batch_size))]
            za.append(module.embed_images(torch.stack([t["image"] for t in items])).numpy())
            zb.append(
                module.embed_genes(
                    torch.stack([t["expression"] for t in items]),
                    torch.stack([t["gene_mask"] for t in items]),
                    torch.stack([t[key] for t in items]),
                ).numpy()
            )
    return np.concatenate(za), np.concatenate(zb)


def embed(run: str | Path, dataset: str | Path, out: str | Path, *, batch_size: int = 128):
    """Image and gene embeddings of every spot of ``dataset`` with a trained run.

    Writes ``out`` (``.h5ad``: the dataset's AnnData with ``obsm['X_image']`` and
    ``obsm['X_gene']``) and ``<out stem>_image.npy`` / ``_gene.npy`` beside it.
    """
    import numpy as np

    from histoxmodal.data.paired import load_paired

    module = load_run(run)
    adata, _ = load_paired(dataset)
    missing = [g for g in module.gene.genes if g not in adata.var_names]
    if missing:
        raise ConfigError(
            f"{dataset} lacks {len(missing)} genes of the run's panel (e.g. "
            f"{missing[:5]}); embed a dataset built with the same genes"
        )
    adata.obsm["X_image"], adata.obsm["X_gene"] = compute_embeddings(
        module, dataset, batch_size=batch_size
    )
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    adata.write_h5ad(tmp)
    os.replace(tmp, out)
    np.save(out.with_name(f"{out.stem}_image.npy"), adata.obsm["X_image"])
    np.save(out.with_name(f"{out.stem}_gene.npy"), adata.obsm["X_gene"])
    return adata
