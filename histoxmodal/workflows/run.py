"""One ``Run`` for every kind of training run: its identity, config, weights and fitted heads.

A run folder (``histoxmodal train --out RUN``) holds:

- ``run.json``: the run's identity, fixed at creation: ``kind`` (``spatial`` | ``cohort``), the
  dataset (path and manifest hash), the split file (path and hash) and fold it trained on, the
  gene panel's normalization and size, the number of batches, the package version.
- ``config.json``: the resolved training config.
- ``genes.txt``: the gene panel, one per line (spatial runs).
- ``stain.json``: the stain normaliser fitted on the config's ``stain.target`` (when
  ``stain.method`` is set), applied to every patch the image tower reads, in training and on new
  slides; ``run.json`` records its method, source and checksum.
- ``model.safetensors``: the final weights (the towers' original weight files are not needed).
- ``heads/<name>/``: expression or label heads fitted on the run's embeddings
  (:mod:`histoxmodal.heads`), so a run predicts without its training dataset.
- ``checkpoints/``, ``csv/``, ``tensorboard/``, ``cache/``: Lightning's checkpoints and logs, the
  frozen image tower's feature cache.

Everything that differs between spatial and cohort runs (which module, which dataset, how a
batch is collated, which rows validate) lives in their registered classes
(:mod:`histoxmodal.workflows.run_kinds`, ``run.run_kind``); the rest of the package asks the
``Run``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.data.normalize import DEFAULT_NORMALIZATION
from histoxmodal.errors import (
    ConfigError,
    DataError,
    DatasetChangedError,
    HeadFolderError,
    StaleHeadError,
)
from histoxmodal.fileutil import write_json_atomic
from histoxmodal.reprs import safe_repr, short_list, short_path
from histoxmodal.version import __version__
from histoxmodal.workflows.run_kinds import (
    RUN_KINDS,
    RunKind,
    dataset_patch,
    is_paired_dataset,
    run_kind,
)

log = logging.getLogger(__name__)

#: version of the run folder layout written by this package
RUN_FORMAT = 1


def dataset_digest(data: str | Path) -> str:
    """A cheap identity of a built dataset: the SHA-256 of its manifest's recorded file hashes
    and parameters (the build time left out)."""
    from histoxmodal.data.splits import digest

    m = json.loads((Path(data) / keys.PAIRED_MANIFEST_FILE).read_text(encoding="utf-8"))
    m.pop("seconds", None)
    return digest(m)


def _read_run_json(file: Path, run: Path) -> dict[str, Any]:
    """A JSON object of a run folder; unreadable files name the file and the run."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{file}: not valid JSON ({exc}); the run {run} is incomplete or corrupt"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a JSON object; the run {run} is incomplete or corrupt")
    return data


def _read_stain(path: Path, ident: dict[str, Any]) -> dict[str, Any] | None:
    """``stain.json`` of a run folder, checked against ``run.json``'s record of it."""
    record = ident.get("stain")
    if not record:
        return None
    file = path / keys.RUN_STAIN_FILE
    if not file.exists():
        raise DataError(
            f"{file} not found, but {path / keys.RUN_FILE} records a {record.get('method')} "
            "stain normaliser; copy the run folder whole, or retrain"
        )
    from histoxmodal.data.stain import StainNormalizer

    norm = StainNormalizer.load(file)
    if record.get("sha256") and norm.digest != record["sha256"]:
        raise DataError(
            f"{file} is not the stain normaliser {path} trained with (its checksum differs "
            f"from run.json's); restore it, or retrain"
        )
    return _read_run_json(file, path)


# ------------------------------------------------------------------------------------ the Run


@dataclass
class Run:
    """A training run folder: identity, config, module and fitted heads.

    Create one with :meth:`create` (nothing is written) and :meth:`write_identity` (after all
    checks passed), or open a finished one with :meth:`load`. ``run.module`` loads the weights
    on first use.

    Attributes
    ----------
    path
        The run folder.
    kind
        ``"spatial"`` (image + gene towers on a paired dataset) or ``"cohort"`` (one tower per
        modality on a cohort store).
    config
        :class:`~histoxmodal.training.config.TrainConfig` or
        :class:`~histoxmodal.training.multimodal.MultimodalConfig`.
    data, split, fold
        The dataset, the split file and the fold name it trained on.
    genes, normalization
        The gene panel and the normalization its tower reads (spatial runs; empty for cohorts).
    n_batches
        Number of batches (``correction.batch_key`` categories) the towers were built for.
    patch
        The field of view of the image tower's patches, ``{"patch_um", "patch_px"}`` from the
        training dataset (spatial runs): a new slide is cut the same way.
    """

    path: Path
    kind: str
    config: Any
    data: Path
    split: Path
    fold: str
    genes: list[str] = field(default_factory=list)
    normalization: str | None = None
    n_batches: int = 1
    dataset_sha256: str = ""
    split_sha256: str = ""
    patch: dict[str, float] = field(default_factory=dict)
    batch_names: list[str] = field(default_factory=list)
    #: the fitted stain normaliser's JSON (:meth:`StainNormalizer.to_dict`), or ``None``
    stain: dict[str, Any] | None = None
    _module: Any = field(default=None, repr=False)
    _weights_digest: Any = field(default=None, repr=False)
    #: opened from its folder (:meth:`load`): the towers' weights come from model.safetensors
    _saved: bool = field(default=False, repr=False)

    @safe_repr
    def __repr__(self) -> str:
        cfg = self.config
        what = self.run_kind.summary(self)
        try:
            heads = self.heads
        except OSError:
            heads = []
        state = "" if self.finished else ", unfinished"
        return (
            f"Run({short_path(self.path)!r}, {self.kind}, {what}, loss={cfg.loss.name!r}, "
            f"fold={self.fold!r}, heads={short_list(heads)}{state})"
        )

    # ---------------------------------------------------------------------------- creating

    @classmethod
    def create(
        cls,
        path: str | Path,
        config,
        *,
        data: str | Path | None = None,
        split: str | Path | None = None,
        fold: int | str = 0,
    ) -> Run:
        """A new run of ``config`` on ``data`` (default ``config.data``) trained on ``fold`` of
        ``split`` (default: the dataset's own random split for spatial runs, patient split for
        cohorts). Validates everything and chooses the gene panel on the fold's training rows;
        writes nothing (see :meth:`write_identity`)."""
        from histoxmodal.data.splits import Split, split_file

        kind = run_kind(config.kind)
        data = Path(data or config.data or "")
        if not str(data) or not kind.is_dataset(data):
            raise ConfigError(f"--data {data}: not {kind.what}")
        sp = Split.load(split) if split else Split.load(split_file(data, kind.default_split))
        names = kind.obs_names(data)
        if names is not None:
            sp.check(names, dataset=data)
        chosen = sp.fold(fold)
        run = cls(
            Path(path),
            config.kind,
            config,
            data.resolve(),
            sp.path.resolve(),
            chosen.name,
            dataset_sha256=dataset_digest(data),
            split_sha256=sp.sha256,
        )
        kind.prepare(run, chosen)
        return run

    @property
    def run_kind(self) -> RunKind:
        """The registered kind of this run (:mod:`histoxmodal.workflows.run_kinds`)."""
        return run_kind(self.kind)

    @property
    def saved(self) -> bool:
        """Opened from its folder (:meth:`load`): the towers' weights come from
        ``model.safetensors``."""
        return self._saved

    def choose_genes(self, fold) -> None:
        """The gene panel of a new spatial run, chosen on ``fold``'s training rows."""
        from histoxmodal.data.normalize import DEFAULT_NORMALIZATION, highly_variable_genes
        from histoxmodal.data.store import load_paired
        from histoxmodal.encoders import describe_encoder

        adata, _ = load_paired(self.data)
        saved = self.config.model.gene_weights
        if self.config.genes is None and saved:
            # a saved gene model and no panel size: the model's genes the dataset measures
            from histoxmodal.encoders.scvi_models import saved_model_genes

            have = set(map(str, adata.var_names))
            self.genes = [g for g in saved_model_genes(saved) if g in have]
            if not self.genes:
                raise ConfigError(
                    f"model.gene_weights {saved}: none of its genes is in {self.data}; are "
                    f"both gene symbols (or both Ensembl ids)?"
                )
        else:
            self.genes = highly_variable_genes(
                adata, self.config.genes, rows=fold.train(adata.n_obs)
            )
        # the gene tower states the normalization it reads
        self.normalization = describe_encoder(self.config.model.gene_encoder).get(
            "normalization", DEFAULT_NORMALIZATION
        )
        key = self.config.correction.batch_key
        self.batch_names = [str(c) for c in adata.obs[key].astype("category").cat.categories]
        self.n_batches = len(self.batch_names)

    def identity(self) -> dict[str, Any]:
        """What ``run.json`` records: everything that fixes what the run is."""
        return {
            "format": RUN_FORMAT,
            "kind": self.kind,
            "version": __version__,
            "data": str(self.data),
            "dataset_sha256": self.dataset_sha256,
            "split": str(self.split),
            "split_sha256": self.split_sha256,
            "fold": self.fold,
            "n_genes": len(self.genes),
            "normalization": self.normalization,
            "n_batches": self.n_batches,
            # the names behind the towers' batch ids 0 .. n_batches - 1 (correction.batch_key)
            "batch_names": self.batch_names,
            "patch": self.patch,
            **({"stain": self.stain_record()} if self.stain else {}),
        }

    def stain_record(self) -> dict[str, Any]:
        """What ``run.json`` says of the stain normaliser: method, file, what it was fitted on
        and its checksum (:attr:`StainNormalizer.digest`)."""
        norm = self.stain_normalizer()
        return {
            "method": norm.method,
            "file": keys.RUN_STAIN_FILE,
            "target": getattr(getattr(self.config, "stain", None), "target", None),
            "fitted_on": norm.fitted_on,
            "sha256": norm.digest,
        }

    def stain_normalizer(self):
        """The run's :class:`~histoxmodal.data.stain.StainNormalizer` (``None``: no stain
        normalisation), a fresh one (counts at zero) at each call."""
        if not self.stain:
            return None
        from histoxmodal.data.stain import StainNormalizer

        return StainNormalizer.from_dict(self.stain, where=str(self.path / keys.RUN_STAIN_FILE))

    def check_same(self, other: Run) -> None:
        """Refuse to continue this run as ``other`` (a resume) when their identity or config
        differs, naming what differs."""
        mine, theirs = self.identity(), other.identity()
        diff = [
            k
            for k in ("kind", "data", "dataset_sha256", "split", "split_sha256", "fold")
            if mine[k] != theirs[k]
        ]
        if self.genes != other.genes:
            diff.append("genes")
        if (self.stain or {}).get("target") != (other.stain or {}).get("target"):
            diff.append("stain")
        if self.config.to_dict() != other.config.to_dict():
            a, b = self.config.to_dict(), other.config.to_dict()
            diff += [f"config.{k}" for k in a if a.get(k) != b.get(k)]
        if diff:
            raise ConfigError(
                f"{self.path} holds a run with another {', '.join(diff)}; --resume continues a "
                "run exactly as it was created (same config, data, split and fold). Choose "
                "another --out to train a new run"
            )

    def write_identity(self) -> None:
        """Write ``config.json``, ``genes.txt`` and ``run.json`` (last: it marks the run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / keys.RUN_CONFIG_FILE, self.config.to_dict())
        self._copy_gene_model()
        if self.stain:
            write_json_atomic(self.path / keys.RUN_STAIN_FILE, self.stain)
        if self.genes:
            tmp = self.path / f".{keys.RUN_GENES_FILE}.partial"
            tmp.write_text("\n".join(self.genes) + "\n", encoding="utf-8")
            tmp.replace(self.path / keys.RUN_GENES_FILE)
        write_json_atomic(self.path / keys.RUN_FILE, self.identity())

    def _copy_gene_model(self) -> None:
        """Copy ``model.gene_weights`` into the run (``gene_model/``), so the run reloads with
        its gene tower's architecture after the original folder moves; staged, then renamed."""
        import shutil

        source = getattr(getattr(self.config, "model", None), "gene_weights", None)
        target = self.path / keys.RUN_GENE_MODEL_DIR
        if not source or target.exists() or Path(source).resolve() == target.resolve():
            return
        tmp = self.path / f".{keys.RUN_GENE_MODEL_DIR}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        src = Path(source).expanduser()
        if src.is_file():
            # a checkpoint file (gene_nicheformer): it and the small files beside it (gene list,
            # technology mean, config)
            tmp.mkdir()
            shutil.copy2(src, tmp / src.name)
            for side in src.parent.iterdir():
                if side.is_file() and side.suffix in (".txt", ".npy", ".json"):
                    shutil.copy2(side, tmp / side.name)
        else:
            shutil.copytree(src, tmp)
        tmp.replace(target)

    def save(self, module=None) -> None:
        """Write the run folder: identity (:meth:`write_identity`) and the weights of
        ``module`` (default: the run's module), e.g. after fine-tuning a loaded run by hand."""
        from histoxmodal.training.trainer import save_weights

        module = module if module is not None else self._module
        if module is None:
            raise ConfigError(f"Run.save: no module to save for {self.path}; pass module=")
        self.write_identity()
        save_weights(module, self.path / keys.RUN_WEIGHTS_FILE)
        self._module = module

    def attach(self, module) -> Run:
        """Use ``module`` as the run's trained module, in eval mode, without writing weights: a
        module just trained in this process, or an untrained baseline tower. Returns the run."""
        self._module = module.eval()
        return self

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path, *, require_weights: bool = True) -> Run:
        """Open a run folder written by :func:`histoxmodal.workflows.train.train`."""
        from histoxmodal.training.config import parse_config

        path = Path(path)
        cfg_file, run_file = path / keys.RUN_CONFIG_FILE, path / keys.RUN_FILE
        need = [cfg_file] + ([path / keys.RUN_WEIGHTS_FILE] if require_weights else [])
        for f in need:
            if not f.exists():
                raise FileNotFoundError(f"{f} not found: is {path} a finished training run?")
        raw = _read_run_json(cfg_file, path)
        if run_file.exists():
            ident = _read_run_json(run_file, path)
        else:  # run folders written before run.json kept the identity inside config.json
            ident = {k: raw.pop(k, None) for k in ("n_batches", "split", "fold")}
            ident["kind"] = "cohort" if "modalities" in raw else "spatial"
            ident["data"] = raw.get("data")
        for k in ("n_batches", "split", "fold"):
            raw.pop(k, None)
        if ident.get("kind") not in RUN_KINDS:
            raise DataError(
                f"{run_file}: kind={ident.get('kind')!r} is not one of "
                f"{', '.join(RUN_KINDS.list())}; the run is incomplete or corrupt"
            )
        raw["kind"] = ident["kind"]
        try:
            config = parse_config(raw)
        except ConfigError as exc:
            raise DataError(f"{cfg_file}: {exc}; the run's config is not valid") from exc
        genes_file = path / keys.RUN_GENES_FILE
        genes = genes_file.read_text(encoding="utf-8").split() if genes_file.exists() else []
        if run_kind(ident["kind"]).image_to_expression and not genes:
            raise FileNotFoundError(f"{genes_file} not found: is {path} a finished training run?")
        data = Path(ident.get("data") or config.data or "")
        split = ident.get("split")
        if not split:
            from histoxmodal.data.splits import split_file

            split = split_file(data, run_kind(ident["kind"]).default_split)
        fold = ident.get("fold")
        run = cls(
            path,
            ident["kind"],
            config,
            data,
            Path(split),
            fold if fold is not None else 0,
            genes=genes,
            normalization=ident.get("normalization") or (DEFAULT_NORMALIZATION if genes else None),
            n_batches=int(ident.get("n_batches") or 1),
            batch_names=[str(b) for b in ident.get("batch_names") or []],
            dataset_sha256=ident.get("dataset_sha256", ""),
            split_sha256=ident.get("split_sha256", ""),
            patch=ident.get("patch") or {},
            stain=_read_stain(path, ident),
            _saved=True,
        )
        if not run.patch and run.run_kind.image_to_expression and is_paired_dataset(data):
            run.patch = dataset_patch(data)  # run folders written before run.json held it
        if ident.get("normalization") is None and genes:
            from histoxmodal.encoders import describe_encoder

            run.normalization = describe_encoder(config.model.gene_encoder).get(
                "normalization", DEFAULT_NORMALIZATION
            )
        return run

    @property
    def finished(self) -> bool:
        """Whether the final weights are written."""
        return (self.path / keys.RUN_WEIGHTS_FILE).exists()

    @property
    def module(self):
        """The trained module (weights loaded on first use), in eval mode."""
        if self._module is None:
            from histoxmodal.training.trainer import load_weights

            weights = self.path / keys.RUN_WEIGHTS_FILE
            if not weights.exists():
                raise FileNotFoundError(f"{weights} not found: is {self.path} a finished run?")
            self._module = load_weights(self.new_module(), weights).eval()
        return self._module

    def tower_config(self):
        """The config the towers are built from (:meth:`RunKind.tower_config`: a saved spatial
        run reads every weight from ``model.safetensors`` and its gene model's architecture from
        its own ``gene_model/`` copy)."""
        return self.run_kind.tower_config(self)

    def new_module(self):
        """A fresh (untrained) module of this run's config."""
        return self.run_kind.module(self)

    # -------------------------------------------------------------------------------- data

    def check_dataset(self) -> None:
        """Refuse a dataset at the run's recorded path that is not the one it trained on.

        Raises
        ------
        DatasetChangedError
            The dataset was rebuilt or replaced since (its manifest digest differs), or is gone.
        """
        if not self.run_kind.image_to_expression and not is_paired_dataset(self.data):
            return  # cohort stores have no build manifest to compare
        if not (self.data / keys.PAIRED_MANIFEST_FILE).is_file():
            raise DatasetChangedError(
                f"{self.path} trained on {self.data}, which holds no dataset any more (moved "
                f"or deleted?); put it back, or rebuild it with `histoxmodal build` at that path"
            )
        if self.dataset_sha256 and dataset_digest(self.data) != self.dataset_sha256:
            raise DatasetChangedError(
                f"{self.data} is not the dataset {self.path} trained on (it was rebuilt or "
                f"replaced since: its manifest differs), so the run's training rows cannot be "
                f"told apart there; restore that dataset, or train a new run on this one"
            )

    def training_split(self):
        """The :class:`~histoxmodal.data.splits.Split` the run trained on, after checking that
        the dataset at the run's path is the one it trained on (:meth:`check_dataset`)."""
        from histoxmodal.data.splits import Split

        self.check_dataset()
        return Split.load(self.split)

    def training_fold(self):
        """The :class:`~histoxmodal.data.splits.Fold` the run trained on."""
        return self.training_split().fold(self.fold)

    def dataset(self, data: str | Path | None = None, rows=None, *, augment: bool = False):
        """A torch dataset of ``rows`` of ``data`` (default: the training dataset) as the run's
        module reads it: its gene panel and normalization, or its cohort modalities."""
        data = Path(data) if data is not None else self.data
        seed = self.config.optim.seed
        return self.run_kind.dataset(self, data, rows, augment=augment, seed=seed)

    @property
    def collate(self):
        """The ``collate_fn`` of the run's datasets (``None``: torch's default)."""
        return self.run_kind.collate

    def embed(
        self,
        data: str | Path | None = None,
        rows=None,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> dict[str, np.ndarray]:
        """Embeddings of ``rows`` (default all) of ``data`` (default the training dataset):
        ``{"image", "gene"}`` for spatial runs, ``{modality..., "present"}`` for cohorts."""
        from histoxmodal.training.embedding import embed_dataset

        self.run_kind.before_embed(self, None if data is None else Path(data))
        return embed_dataset(
            self.module,
            self.dataset(data, rows),
            batch_size=batch_size,
            collate_fn=self.collate,
            num_workers=num_workers,
        )

    def adapt_unseen_batches(self, data) -> None:
        """A batch-normalized gene tower meeting samples it never trained on takes their
        statistics from all their rows in ``data``, whatever rows are embedded now
        (:meth:`~histoxmodal.training.module.ContrastiveModule.adapt_to_dataset`)."""
        if self.config.correction.batch_conditioned_genes:
            self.module.adapt_to_dataset(self.dataset(data))

    def run_batch_names(self) -> list[str]:
        """The names of the batches (``correction.batch_key``) behind the towers' batch ids:
        recorded in ``run.json``; for runs written before, read from the training dataset."""
        if not self.batch_names and is_paired_dataset(self.data):
            import anndata as ad

            obs = ad.read_h5ad(self.data / keys.PAIRED_ADATA_FILE, backed="r").obs
            key = self.config.correction.batch_key
            self.batch_names = [str(c) for c in obs[key].astype("category").cat.categories]
        return self.batch_names

    def check_genes(self, data: str | Path) -> None:
        """Refuse a dataset that lacks genes of the run's panel."""
        import anndata as ad

        var = ad.read_h5ad(Path(data) / keys.PAIRED_ADATA_FILE, backed="r").var_names
        missing = [g for g in self.genes if g not in var]
        if missing:
            raise ConfigError(
                f"{data} lacks {len(missing)} genes of the run's panel (e.g. {missing[:5]}); "
                "use a dataset built with the same genes"
            )

    # ------------------------------------------------------------------------------- heads

    def weights_sha256(self) -> str:
        """SHA-256 of ``model.safetensors``: the weights whose embeddings a head is fitted on."""
        from histoxmodal.data.store import file_sha256

        f = self.path / keys.RUN_WEIGHTS_FILE
        if not f.exists():
            raise FileNotFoundError(f"{f} not found: is {self.path} a finished run?")
        st = f.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._weights_digest is None or self._weights_digest[0] != stamp:
            self._weights_digest = (stamp, file_sha256(f))
        return self._weights_digest[1]

    def save_head(self, name: str, head, **provenance) -> Path:
        """Save a fitted head under ``heads/<name>`` (overwriting one of that name).

        ``head.json`` records the checksum of the run's weights and the dataset the head was
        fitted with, so :meth:`load_head` refuses it once either changes, beside any other
        ``provenance`` (JSON values, e.g. the fold).
        """
        folder = self.path / keys.RUN_HEADS_DIR / name
        head.save(
            folder,
            provenance={
                "weights_sha256": self.weights_sha256(),
                "dataset_sha256": self.dataset_sha256,
                **provenance,
            },
        )
        return folder

    def head_is_current(self, name: str) -> bool:
        """Whether the saved head ``name`` was fitted on the run's present weights."""
        from histoxmodal.heads.base import read_head_json

        try:
            meta, _ = read_head_json(self.path / keys.RUN_HEADS_DIR / name)
        except (OSError, ValueError):
            return False
        fitted_on = (meta.get("provenance") or {}).get("weights_sha256")
        return fitted_on == self.weights_sha256()

    def load_head(self, name: str):
        """A head saved with :meth:`save_head`, refused when it was fitted on other weights.

        Raises
        ------
        StaleHeadError
            The run's ``model.safetensors`` is not the one the head was fitted on (the run was
            resumed, or the head or the weights were copied in from another run).
        """
        from histoxmodal.heads import load_head

        folder = self.check_head(name)
        try:
            head = load_head(folder)
            if not head.outputs and (folder / LEGACY_TARGETS_FILE).exists():
                _read_legacy_targets(head, folder / LEGACY_TARGETS_FILE)
            return head
        except (ConfigError, DataError) as exc:  # the same kind of error, with the fix
            raise type(exc)(f"{exc} (histoxmodal fit-head {self.path})") from exc

    def check_head(self, name: str) -> Path:
        """The folder of the saved head ``name`` after checking, without loading it, that it
        was fitted on the run's present weights (see :meth:`load_head`)."""
        from histoxmodal.heads.base import read_head_json

        folder = self.path / keys.RUN_HEADS_DIR / name
        if not folder.exists():
            have = ", ".join(self.heads) or "none"
            raise FileNotFoundError(
                f"{self.path} has no head {name!r} (saved heads: {have}); fit one with "
                f"`histoxmodal fit-head {self.path}` or Run.save_head"
            )
        meta, _ = read_head_json(folder)
        fitted_on = (meta.get("provenance") or {}).get("weights_sha256")
        if fitted_on is None:
            log.warning(
                "%s predates weight checksums: it cannot be checked against %s; refit it with "
                "`histoxmodal fit-head %s` to be sure",
                folder, keys.RUN_WEIGHTS_FILE, self.path,
            )  # fmt: skip
        elif fitted_on != self.weights_sha256():
            raise StaleHeadError(
                f"{folder} was fitted on other weights than {self.path / keys.RUN_WEIGHTS_FILE} "
                f"(sha256 {fitted_on[:12]}… vs {self.weights_sha256()[:12]}…): the run was "
                f"resumed or retrained, or the head or the weights were copied from another "
                f"run. Refit it: histoxmodal fit-head {self.path}"
            )
        return folder

    @property
    def heads(self) -> list[str]:
        """Names of the heads saved with the run."""
        d = self.path / keys.RUN_HEADS_DIR
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    @property
    def expression_heads(self) -> list[str]:
        """Names of the saved heads that predict named genes (their ``head.json`` lists
        ``outputs``, or, saved by an older histoxmodal, a ``targets.json`` lies beside it)."""
        from histoxmodal.heads.base import read_head_json

        found = []
        for name in self.heads:
            folder = self.path / keys.RUN_HEADS_DIR / name
            try:
                meta, _ = read_head_json(folder)
            except (OSError, ValueError):  # unreadable: load_head reports it when asked for
                meta = {}
            if meta.get("outputs") or (folder / LEGACY_TARGETS_FILE).exists():
                found.append(name)
        return found


#: what heads saved before ``head.json`` carried their inputs and outputs wrote beside it
LEGACY_TARGETS_FILE = "targets.json"


def _read_legacy_targets(head, file: Path) -> None:
    """The genes, normalization and inputs an older histoxmodal saved in ``targets.json``."""
    from histoxmodal.heads.inputs import HeadInputs

    try:
        targets = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadFolderError(f"{file} is unreadable or not JSON ({exc})") from exc
    genes = targets.get("genes") if isinstance(targets, dict) else None
    if not (isinstance(genes, list) and genes and all(isinstance(g, str) for g in genes)):
        raise HeadFolderError(f"{file} has no list of predicted genes")
    head.predicting(genes, targets.get("normalization"))
    inputs = {k: targets[k] for k in ("context_um", "centre", "smooth_um") if k in targets}
    head.reading(HeadInputs.from_dict(inputs).for_head(targets.get("head", head.head_name)))
