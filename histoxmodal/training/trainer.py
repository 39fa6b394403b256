"""The Lightning loop every training run shares: one ``Trainer`` factory and one fit call.

The workflow layer (:mod:`histoxmodal.workflows.train`) decides what goes into a run folder;
this module only runs Lightning inside it (its logs and checkpoints) and writes weights files.
"""

from __future__ import annotations

import os
from pathlib import Path

from histoxmodal import keys


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` / ``16-mixed`` on CUDA (by bf16 support), ``32-true`` else."""
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def make_trainer(
    root: Path,
    optim,
    *,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    enable_progress_bar: bool = False,
):
    """The Lightning ``Trainer`` of every training run: CSV and TensorBoard logs under ``root``,
    checkpoints in ``root/checkpoints`` (``last.ckpt`` for resuming), precision and gradient
    accumulation from ``optim`` (:class:`~histoxmodal.training.config.OptimConfig`)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    return L.Trainer(
        default_root_dir=root,
        max_epochs=max_epochs or optim.max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        precision=resolve_precision(optim.precision, accelerator),
        accumulate_grad_batches=optim.accumulate,
        log_every_n_steps=1,
        logger=[
            CSVLogger(root, name="csv", version=""),
            TensorBoardLogger(root, name="tensorboard", version=""),
        ],
        callbacks=[ModelCheckpoint(dirpath=root / keys.RUN_CHECKPOINT_DIR, save_last=True)],
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )


def last_checkpoint(root: str | Path) -> Path:
    """Where :func:`make_trainer` keeps the checkpoint a resumed run continues from."""
    return Path(root) / keys.RUN_CHECKPOINT_DIR / keys.RUN_LAST_CHECKPOINT


def fit_module(module, train_dl, val_dl, root: Path, optim, *, resume: bool, **trainer_kw) -> bool:
    """Fit ``module`` with :func:`make_trainer` in ``root``, continuing its last checkpoint when
    ``resume``. Returns whether this process is the main one (the one that writes outputs)."""
    trainer = make_trainer(root, optim, **trainer_kw)
    ckpt = str(last_checkpoint(root)) if resume else None
    trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt)
    return bool(trainer.is_global_zero)


def save_weights(module, path: str | Path) -> None:
    """Write the module's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.partial")
    save_file(state, tmp)
    os.replace(tmp, path)


def load_weights(module, path: str | Path):
    """Load a safetensors state dict written by :func:`save_weights` into ``module``."""
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))
    return module
