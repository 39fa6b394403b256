"""Running a training: data, model, Lightning trainer, run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.training.config import TrainConfig


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
):
    """Train a contrastive model; writes the run folder and returns the module.

    The run folder holds ``config.json`` (resolved), ``genes.txt``, ``metrics.csv`` logs
    (``csv/``), TensorBoard logs (``tensorboard/``), Lightning checkpoints (``checkpoints/``) and
    the final weights ``model.safetensors``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.paired import load_paired
    from histoxmodal.data.splits import load_split, split_file
    from histoxmodal.data.transforms import Augment
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
    fold = load_split(split_file(data, "random"))[0]
    train_rows, val_rows = fold.train(adata.n_obs), fold.val
    genes = select_genes(adata, train_rows, config.genes)
    (out / "genes.txt").write_text("\n".join(genes) + "\n")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "data": str(data)}, indent=2))
    o, c = config.optim, config.correction
    aug = Augment(**config.augment)
    train_ds = PairedDataset(data, indices=train_rows, genes=genes, augment=aug, seed=o.seed)
    val_ds = PairedDataset(data, indices=val_rows, genes=genes)
    n_batches = len(train_ds.categories[c.batch_key])
    loader_kw = {"num_workers": o.num_workers, "persistent_workers": o.num_workers > 0}
    if c.sampler == "random":
        train_dl = DataLoader(
            train_ds, batch_size=o.batch_size, shuffle=True, drop_last=True, **loader_kw
        )
    else:
        groups = train_ds._codes[c.batch_key][train_rows]
        sampler = GroupBatchSampler(groups, o.batch_size, mode=c.sampler, seed=o.seed)
        train_dl = DataLoader(train_ds, batch_sampler=sampler, **loader_kw)
    val_dl = DataLoader(val_ds, batch_size=o.batch_size, **loader_kw) if len(val_rows) else None
    module = ContrastiveModule(config, genes, n_batches)
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=max_epochs or o.max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        precision=o.precision,
        accumulate_grad_batches=o.accumulate,
        log_every_n_steps=1,
        logger=[
            CSVLogger(out, name="csv", version=""),
            TensorBoardLogger(out, name="tensorboard", version=""),
        ],
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)],
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dl, val_dl)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, out / "model.safetensors")
    return module
