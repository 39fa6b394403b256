"""``histoxmodal train``: a run folder from a config and a dataset, for every kind of run.

:func:`train` validates everything first (dataset, split, fold, an existing run in the folder),
writes the run's identity (:class:`~histoxmodal.workflows.run.Run`), trains with Lightning and
writes the final weights. A resumed run must be the same run: same config, dataset, split and
fold.
"""

from __future__ import annotations

import logging
from pathlib import Path

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.training.trainer import check_devices
from histoxmodal.workflows.run import Run

log = logging.getLogger(__name__)

__all__ = ["check_devices", "ensemble_size", "member_config", "resumable", "train"]


def train(
    config,
    out: str | Path,
    *,
    data: str | Path | None = None,
    split: str | Path | None = None,
    fold: int | str = 0,
    max_epochs: int | None = None,
    resume: bool = False,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    enable_progress_bar: bool = False,
) -> Run:
    """Train a contrastive model; writes the run folder ``out`` and returns its :class:`Run`.

    Parameters
    ----------
    config
        A :class:`~histoxmodal.training.config.TrainConfig` (image + gene towers on a paired
        dataset) or :class:`~histoxmodal.training.multimodal.MultimodalConfig` (one tower per
        modality on a cohort store), e.g. from
        :func:`~histoxmodal.workflows.config_files.load_config`.
    out
        The run folder.
    data
        The dataset (default ``config.data``).
    split, fold
        The split file and the fold (index or name such as ``"sample=C5"``) whose training rows
        train the model; validation uses the fold's validation rows, or its test rows when the
        split has none (leave-one-out). Default: the dataset's random split (spatial) or
        patient split (cohort), fold 0.
    max_epochs
        Overrides ``config.optim.max_epochs`` (``None``: the config's); must be ``>= 1``.
    resume
        Continue ``out``'s last checkpoint; refused when ``out`` holds another run. The rows
        already in ``csv/metrics.csv`` are kept and the resumed epochs appended.
    accelerator, devices, num_nodes, enable_progress_bar
        Passed to Lightning's ``Trainer``.

    Returns
    -------
    Run
        The finished run, its trained module in ``run.module``.
    """
    import lightning as L

    from histoxmodal.training.trainer import (
        check_max_epochs,
        checkpoint_position,
        fit_module,
        last_checkpoint,
        make_trainer,
        save_weights,
    )

    out = Path(out)
    check_max_epochs(max_epochs, config.optim)
    check_image_weights(config)
    lightning_kw = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "enable_progress_bar": enable_progress_bar,
    }
    if ensemble_size(config) > 1:
        return _train_ensemble(
            config, out, data=data, split=split, fold=fold, max_epochs=max_epochs,
            resume=resume, **lightning_kw,
        )  # fmt: skip
    run = Run.create(out, config, data=data, split=split, fold=fold)
    last = last_checkpoint(out)
    if resume:
        if not last.exists():
            raise ConfigError(f"--resume: {out} has no checkpoints/last.ckpt to continue from")
        Run.load(out, require_weights=False).check_same(run)
    elif last.exists() or (out / keys.RUN_WEIGHTS_FILE).exists():
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    _check_full_batches(run)
    # the towers are built before anything is written: a config they refuse leaves no folder
    L.seed_everything(config.optim.seed, workers=True, verbose=False)
    module = run.new_module()
    # Lightning's checks (accelerator, devices) pass before anything is written
    trainer = make_trainer(out, config.optim, max_epochs=max_epochs, resume=resume, **lightning_kw)
    if not resume:
        run.write_identity()
    start_epoch = checkpoint_position(last)[0] + 1 if resume else 0
    train_dl, val_dl = _loaders(run, module, distributed=trainer.world_size > 1, epoch=start_epoch)
    if len(train_dl) == 0:  # e.g. a batch sampler whose groups are all smaller than a batch
        raise ConfigError(
            f"no full training batch of optim.batch_size={config.optim.batch_size} can be formed "
            f"(batches are drawn within groups, see correction.*); lower optim.batch_size"
        )
    if fit_module(module, train_dl, val_dl, out, config.optim, resume=resume, trainer=trainer):
        save_weights(module, out / keys.RUN_WEIGHTS_FILE)
    run.attach(module)
    _fit_heads(run)
    return run


def resumable(out: str | Path) -> bool:
    """Whether ``out`` holds a run that a killed :func:`train` left to resume: its last
    checkpoint, or an ensemble's first members."""
    from histoxmodal.training.trainer import last_checkpoint

    out = Path(out)
    members = out / keys.RUN_MEMBERS_DIR
    return last_checkpoint(out).exists() or (members.is_dir() and any(members.iterdir()))


def ensemble_size(config) -> int:
    """``model.ensemble`` of a spatial config (1 for configs without it)."""
    return int(getattr(getattr(config, "model", None), "ensemble", 1))


def member_config(config, i: int):
    """Member ``i`` of an ensemble config: one model, seeded ``optim.seed + i``."""
    import dataclasses

    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, ensemble=1),
        optim=dataclasses.replace(config.optim, seed=config.optim.seed + i),
    )


def _train_ensemble(config, out: Path, *, data, split, fold, max_epochs, resume, **lightning_kw):
    """``model.ensemble: n``: train (or resume, or reuse) the members ``out/members/<i>`` one
    after another, each a run of its own, then save them joined as the run's module
    (:class:`~histoxmodal.training.ensemble.EnsembleModule`) and fit its heads on the joined
    embeddings. A killed ensemble resumes at the member it was training."""
    from histoxmodal.training.ensemble import EnsembleModule
    from histoxmodal.training.trainer import last_checkpoint, save_weights

    n = ensemble_size(config)
    run = Run.create(out, config, data=data, split=split, fold=fold)
    members_dir = out / keys.RUN_MEMBERS_DIR
    started = resumable(out)
    if resume:
        if not started:
            raise ConfigError(f"--resume: {out} has no ensemble members to continue")
        Run.load(out, require_weights=False).check_same(run)
    elif started or (out / keys.RUN_WEIGHTS_FILE).exists():
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if not resume:
        run.write_identity()
    members = []
    for i in range(n):
        d = members_dir / str(i)
        if (d / keys.RUN_WEIGHTS_FILE).exists():
            member = Run.load(d)
            member.check_same(Run.create(d, member_config(config, i), data=data, split=split,
                                         fold=fold))  # fmt: skip
        else:
            # beside the epoch lines (shown by default, hidden by -q): which member they are
            logging.getLogger("histoxmodal.progress").info(
                "ensemble member %d/%d (seed %d): %s", i + 1, n, config.optim.seed + i, d
            )
            member = train(
                member_config(config, i), d, data=data, split=split, fold=fold,
                max_epochs=max_epochs, resume=last_checkpoint(d).exists(), **lightning_kw,
            )  # fmt: skip
        if list(member.genes) != list(run.genes):  # the same fold chooses the same panel
            raise ConfigError(f"{d}: its gene panel differs from the ensemble's ({out})")
        members.append(member.module)
    module = EnsembleModule(members)
    save_weights(module, out / keys.RUN_WEIGHTS_FILE)
    run.attach(module)
    _fit_heads(run)
    return run


def _fit_heads(run: Run) -> None:
    """The config's expression head on the trained weights (refitted when they changed), and
    a warning for every other head fitted on earlier weights."""
    out, config = run.path, run.config
    head = getattr(config, "head", None)
    expression = head.expression if head is not None and run.run_kind.image_to_expression else None
    name = f"expression_{expression}"
    if expression and (name not in run.heads or not run.head_is_current(name)):
        from histoxmodal.workflows.predict import fit_expression_head

        # every gene of the panel, so `histoxmodal predict` maps new slides on its own; a
        # resumed run's weights changed, so the head fitted on the old ones is refitted
        fit_expression_head(run, head=expression, genes=list(run.genes))
    stale = [h for h in run.heads if not run.head_is_current(h)]
    if stale:
        log.warning(
            "%s: heads %s were fitted on earlier weights and will be refused; refit them with "
            "`histoxmodal fit-head %s`",
            out, ", ".join(stale), out,
        )  # fmt: skip


def check_image_weights(config) -> None:
    """Refuse a foundation image tower without its weights, unless asked for explicitly.

    Raises
    ------
    ConfigError
        ``model.image_encoder`` is registered with published weights (``needs_weights``),
        ``model.image_weights`` is not set and ``model.random_weights`` is false.
    """
    m = getattr(config, "model", None)
    if m is None or m.image_weights or m.random_weights or m.image_encoder.startswith("timm:"):
        return
    from histoxmodal.encoders import describe_encoder

    meta = describe_encoder(m.image_encoder)
    if meta.get("needs_weights"):
        raise ConfigError(
            f"model.image_encoder={m.image_encoder!r} is a pretrained foundation model, but "
            f"model.image_weights is not set: it would train from random weights. Give a local "
            f"copy of {meta.get('weights')} with --set model.image_weights=PATH, or --set "
            "model.random_weights=true to start from random weights on purpose"
        )


def _check_full_batches(run: Run) -> None:
    """Refuse a training fold smaller than one batch before anything is written.

    Incomplete batches are dropped (a contrastive loss needs its negatives), so such a run
    would train nothing and still write weights and fit heads on them.
    """
    bs = run.config.optim.batch_size
    n_train = len(run.training_fold().train(run.run_kind.n_obs(run.data)))
    if n_train < bs:
        raise ConfigError(
            f"optim.batch_size={bs}, but the training fold {run.fold!r} has {n_train} rows: "
            f"not one full training batch, so nothing would train (incomplete batches are "
            f"dropped). Lower it, e.g. --set optim.batch_size={max(2, n_train // 4)}"
        )


def _loaders(run: Run, module, *, distributed: bool = False, epoch: int = 0):
    """Training and validation ``DataLoader`` of a run (and the spatial run's gene-tower
    pretraining and frozen-feature cache, which need the data).

    On one device the training batches come from a :class:`GroupBatchSampler` set to ``epoch``
    (the one a resumed run starts with), whose order and augmentations are functions of the
    seed and the epoch, and the loaders draw nothing from the global generators; with
    :func:`~histoxmodal.training.trainer.make_trainer`'s per-epoch reseeding, a resumed run
    trains the model an uninterrupted one does. Across devices Lightning's distributed sampler
    shuffles (also by seed and epoch).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from histoxmodal.training.sampler import GroupBatchSampler

    o = run.config.optim
    fold = run.training_fold()
    n = run.run_kind.n_obs(run.data)
    train_rows = fold.train(n)
    val_rows = run.run_kind.validation_rows(fold)
    train_ds = run.dataset(rows=train_rows, augment=True)
    val_ds = run.dataset(rows=val_rows) if len(val_rows) else None
    kw = {
        "num_workers": o.num_workers,
        "persistent_workers": o.num_workers > 0,
        # the loaders' own generator: creating an iterator draws nothing from torch's global
        # one, whose state the per-epoch reseeding owns
        "generator": torch.Generator().manual_seed(o.seed),
    }
    sampler = None
    if run.run_kind.image_to_expression:
        train_ds, val_ds, sampler = _spatial_extras(run, module, train_rows, train_ds, val_ds)
    if sampler is None and not distributed and run.run_kind.image_to_expression:
        sampler = GroupBatchSampler(np.zeros(len(train_rows)), o.batch_size, seed=o.seed)
    if sampler is not None:
        sampler.set_epoch(epoch)
        train_dl = DataLoader(train_ds, batch_sampler=sampler, collate_fn=run.collate, **kw)
    else:
        train_dl = DataLoader(
            train_ds,
            batch_size=o.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=run.collate,
            **kw,
        )
    val_dl = (
        DataLoader(val_ds, batch_size=o.batch_size, collate_fn=run.collate, **kw)
        if val_ds is not None
        else None
    )
    return train_dl, val_dl


def _spatial_extras(run: Run, module, train_rows, train_ds, val_ds):
    """Gene-tower pretraining, the frozen image tower's feature cache and the batch sampler of
    a spatial run."""
    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.store import load_paired
    from histoxmodal.training.sampler import GroupBatchSampler

    cfg = run.config
    c, m, o = cfg.correction, cfg.model, cfg.optim
    if getattr(module.gene, "pretrain_epochs", 0):
        adata, _ = load_paired(run.data)
        module.gene.pretrain(adata[train_rows], batch_key=c.batch_key, seed=o.seed)
    if m.image_mode == "frozen" and m.cache_image_features:
        from histoxmodal.training.cache import CachedFeatures, image_features

        feats = image_features(
            module,
            run.data,
            n_views=m.cache_views,
            cache_dir=run.path / keys.RUN_CACHE_DIR,
            stain=run.stain_normalizer(),
        )
        train_ds = CachedFeatures(train_ds, feats, random_view=True)
        val_ds = CachedFeatures(val_ds, feats, random_view=False) if val_ds else None
    sampler = None
    if c.sampler != "random":
        groups = PairedDataset.codes_of(run.data, c.batch_key)[train_rows]
        sampler = GroupBatchSampler(groups, o.batch_size, mode=c.sampler, seed=o.seed)
    return train_ds, val_ds, sampler
