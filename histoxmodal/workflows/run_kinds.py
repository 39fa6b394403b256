"""The kinds of training run, as registered classes: how each builds its module, reads its data,
picks its validation rows and describes itself.

A :class:`~histoxmodal.workflows.run.Run` asks its kind (``run.run_kind``) instead of testing
``run.kind == "spatial"``; a new kind of run (say, slide-level MIL pretraining) is one subclass
registered here, and nothing else in the package changes::

    @register_run_kind("slides")
    class SlideRunKind(RunKind):
        default_split = "patient"
        what = "a slide feature store"
        ...

``spatial`` pairs spots' H&E patches with their expression (image and gene towers);
``cohort`` pairs patient-level modalities (ECG, radiology, reports, ...).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.registry import Registry

if TYPE_CHECKING:
    from histoxmodal.workflows.run import Run

log = logging.getLogger(__name__)

#: every kind of run, by the name written in ``run.json`` (``kind``)
RUN_KINDS: Registry[type[RunKind]] = Registry("run kind")


def register_run_kind(name: str):
    """Class decorator: register a :class:`RunKind` subclass under ``name``."""

    def decorator(cls: type[RunKind]) -> type[RunKind]:
        cls.name = name
        return RUN_KINDS.register(name)(cls)

    return decorator


def run_kind(name: str) -> RunKind:
    """The kind of run registered as ``name`` (unknown names raise
    :class:`~histoxmodal.errors.UnknownNameError` naming the registered ones)."""
    return RUN_KINDS.get(name)()


def run_kind_names() -> list[str]:
    return RUN_KINDS.list()


def is_paired_dataset(path: str | Path) -> bool:
    """Whether ``path`` holds a paired spot dataset (``histoxmodal build``), not a cohort."""
    p = Path(path) / keys.PAIRED_MANIFEST_FILE
    return p.exists() and json.loads(p.read_text(encoding="utf-8")).get("kind") != "cohort"


def dataset_patch(data: str | Path) -> dict[str, float]:
    """``{"patch_um", "patch_px"}`` of a paired dataset's patches (``patches.h5``)."""
    import h5py

    with h5py.File(Path(data) / keys.PAIRED_PATCHES_FILE, "r") as f:
        d = f["patches"]
        if "patch_um" not in d.attrs:
            return {}
        return {"patch_um": float(d.attrs["patch_um"]), "patch_px": int(d.shape[1])}


def fit_config_stain(config) -> dict[str, Any] | None:
    """The JSON of the stain normaliser a config's ``stain`` section asks for, fitted now on
    its target (``None`` when ``stain.method`` is off)."""
    stain = getattr(config, "stain", None)
    if stain is None or not stain.method:
        return None
    from histoxmodal.data.stain import fit_stain_target

    try:
        norm = fit_stain_target(stain.target, stain.method, min_tissue=stain.min_tissue)
    except FileNotFoundError as exc:
        raise ConfigError(f"stain.target: {exc}") from exc
    log.info("stain: %s target fitted on %s", stain.method, stain.target)
    return norm.to_dict()


class RunKind:
    """How one kind of run builds its module and reads its data (subclass and register with
    :func:`register_run_kind`). Instances hold no state: every method is given the run."""

    name: ClassVar[str] = ""
    #: the split kind used when none is given
    default_split: ClassVar[str] = "random"
    #: the dataset it needs, for messages
    what: ClassVar[str] = ""
    #: spots with an image tower and a gene panel: expression heads, ``features --run``,
    #: ``embed`` and ``predict`` apply
    image_to_expression: ClassVar[bool] = False

    def is_dataset(self, path: Path) -> bool:
        raise NotImplementedError

    def n_obs(self, data: Path) -> int:
        raise NotImplementedError

    def obs_names(self, data: Path) -> list[str] | None:
        """The rows' names a split is checked against (``None``: checked by count only)."""
        return None

    def module(self, run: Run):
        """A fresh (untrained) Lightning module of ``run``'s config."""
        raise NotImplementedError

    def dataset(self, run: Run, data: Path, rows, *, augment: bool, seed: int = 0):
        raise NotImplementedError

    #: the ``collate_fn`` of the kind's datasets (``None``: torch's default)
    collate: ClassVar[Any] = None

    def prepare(self, run: Run, fold) -> None:
        """Fill in what a new run chooses from its training rows (gene panel, patch size...)."""

    def summary(self, run: Run) -> str:
        """What the run aligns, for its ``repr``."""
        return ""

    def validation_rows(self, fold):
        """The rows validated on during training (the fold's validation rows)."""
        return fold.val

    def tower_config(self, run: Run):
        """The config the module's towers are built from (a saved run's, see
        :meth:`~histoxmodal.workflows.run.Run.tower_config`)."""
        return run.config

    def before_embed(self, run: Run, data: Path | None) -> None:
        """Checks and adaptation before ``run.embed(data)`` (``None``: the training data)."""


@register_run_kind("spatial")
class SpatialRunKind(RunKind):
    """H&E patches paired with their spots' expression: an image tower and a gene tower."""

    default_split = "random"
    what = "a paired dataset (build one with `histoxmodal build`)"
    image_to_expression = True

    def is_dataset(self, path: Path) -> bool:
        return is_paired_dataset(path)

    def n_obs(self, data: Path) -> int:
        import anndata as ad

        return ad.read_h5ad(data / keys.PAIRED_ADATA_FILE, backed="r").n_obs

    def obs_names(self, data: Path) -> list[str] | None:
        import anndata as ad

        return list(ad.read_h5ad(data / keys.PAIRED_ADATA_FILE, backed="r").obs_names)

    def module(self, run: Run):
        from histoxmodal.training.module import ContrastiveModule

        cfg = run.tower_config()
        if cfg.model.ensemble > 1:
            from histoxmodal.training.ensemble import EnsembleModule

            members = range(cfg.model.ensemble)
            return EnsembleModule(
                [ContrastiveModule(cfg, run.genes, run.n_batches) for _ in members]
            )
        return ContrastiveModule(cfg, run.genes, run.n_batches)

    def dataset(self, run: Run, data: Path, rows, *, augment: bool, seed: int = 0):
        from histoxmodal.data.dataset import PairedDataset
        from histoxmodal.data.transforms import Augment

        return PairedDataset(
            data,
            indices=rows,
            genes=run.genes,
            normalization=run.normalization,
            augment=Augment(**run.config.augment) if augment else None,
            stain=run.stain_normalizer(),
            seed=seed,
            # the batch ids the towers were built with, whatever dataset is read
            categories={run.config.correction.batch_key: run.run_batch_names()},
        )

    def prepare(self, run: Run, fold) -> None:
        run.choose_genes(fold)
        run.patch = dataset_patch(run.data)
        run.stain = fit_config_stain(run.config)

    def summary(self, run: Run) -> str:
        n = run.config.model.ensemble
        ens = f", an ensemble of {n} models" if n > 1 else ""
        return f"{len(run.genes)} genes, image={run.config.model.image_encoder!r}{ens}"

    def validation_rows(self, fold):
        # a spot split without validation rows validates on its test rows (early stopping
        # only; the test metrics are reported by `evaluate` on the same rows, said there)
        return fold.val if len(fold.val) else fold.test

    def tower_config(self, run: Run):
        """A saved spatial run needs no original weight files (``model.safetensors`` has every
        weight, so ``image_weights`` is dropped), and reads a saved gene model's architecture
        from its own copy (``gene_model/``)."""
        import dataclasses

        if not run.saved:
            return run.config
        copy = run.path / keys.RUN_GENE_MODEL_DIR
        model = run.config.model
        gene_weights = str(copy) if copy.is_dir() else model.gene_weights
        return dataclasses.replace(
            run.config,
            model=dataclasses.replace(model, image_weights=None, gene_weights=gene_weights),
        )

    def before_embed(self, run: Run, data: Path | None) -> None:
        if data is not None:
            run.check_genes(data)
        run.adapt_unseen_batches(data)


@register_run_kind("cohort")
class CohortRunKind(RunKind):
    """Patient-level modalities (ECG, radiology, reports, ...) paired by patient and time."""

    default_split = "patient"
    what = (
        "a cohort dataset (build one with `histoxmodal build --recipe cohort --manifest FILE "
        "--out DIR`)"
    )

    def is_dataset(self, path: Path) -> bool:
        from histoxmodal.data.cohort import is_cohort

        return is_cohort(path)

    def n_obs(self, data: Path) -> int:
        from histoxmodal.data.cohort import CohortDataset

        return len(CohortDataset(data))

    def module(self, run: Run):
        from histoxmodal.training.multimodal import MultimodalModule

        return MultimodalModule(run.config)

    def dataset(self, run: Run, data: Path, rows, *, augment: bool, seed: int = 0):
        from histoxmodal.data.cohort import CohortDataset

        return CohortDataset(data, rows, augment=augment and run.config.augment, seed=seed)

    @property
    def collate(self):
        from histoxmodal.data.cohort import collate_cohort

        return collate_cohort

    def summary(self, run: Run) -> str:
        from histoxmodal.reprs import short_list

        return f"modalities={short_list(list(getattr(run.config, 'modalities', {})))}"
