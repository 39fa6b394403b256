"""Pretrained scvi-tools models (scVI, DRVI) read from the folders their ``save`` writes, as gene
towers: raw counts in, the posterior mean of the latent space out.

A saved folder holds ``model.pt``: the module's state dict, the model's gene names
(``var_names``) and ``attr_dict`` (the constructor's arguments and the AnnData registry). The
registry holds ``collections.defaultdict`` objects, which PyTorch's ``weights_only`` unpickler
cannot rebuild, and scvi-tools' own ``load`` unpickles with ``weights_only=False``. So the file
is read here through :class:`RestrictedUnpickler`: plain pickle semantics, but only the globals
listed in :data:`ALLOWED_GLOBALS` (containers, NumPy arrays, pandas frames and indexes, tensor
rebuilding) resolve; any other global (a function, a class with code) is refused, so a crafted
file cannot run code.

The module itself is built by the library's own model class, set up on an empty AnnData that
reproduces the saved registry (its genes and categories), then the saved weights are loaded
strictly: the tower is the published architecture, not a re-implementation, and its output
equals the library's ``get_latent_representation`` (tested).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoxmodal import keys
from histoxmodal.encoders.genemap import map_genes, to_model_genes
from histoxmodal.errors import ConfigError, WeightsError
from histoxmodal.errors import RefusedGlobal as RefusedGlobal

log = logging.getLogger(__name__)

#: the file ``BaseModelClass.save`` writes in its folder
MODEL_FILE = "model.pt"

#: ``(module, name)`` globals a saved scvi-tools model may reference; everything else is refused
ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", n)
        for n in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "slice",
            "bytes",
            "bytearray",
            "int",
            "float",
            "complex",
            "str",
            "bool",
        )
    }
    | {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.series", "Series"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.core.arrays.categorical", "Categorical"),
        ("pandas.core.dtypes.dtypes", "CategoricalDtype"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
    }
)
#: modules every name of which is data (dtype classes such as ``numpy.dtypes.Float32DType``)
_ALLOWED_MODULES = ("numpy.dtypes",)
#: Python 2 names protocol-2 pickles use
_RENAMED = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED.get(module, module)
        if (module, name) in ALLOWED_GLOBALS or module in _ALLOWED_MODULES:
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):  # legacy typed storages
            return super().find_class(module, name)
        raise RefusedGlobal(
            f"refused global {module}.{name}: not data a saved scvi-tools model holds"
        )


class restricted_pickle:  # lower case: it stands in for the ``pickle`` module in torch.load
    """The ``pickle_module`` handed to :func:`torch.load`: its ``Unpickler`` is restricted."""

    Unpickler = RestrictedUnpickler
    __name__ = "histoxmodal.encoders.scvi_models.restricted_pickle"

    @staticmethod
    def load(file, **kwargs):  # pragma: no cover - torch uses Unpickler
        return RestrictedUnpickler(file, **kwargs).load()


@dataclass
class SavedModel:
    """What a saved scvi-tools folder holds, read safely."""

    folder: Path
    model_name: str
    genes: list[str]
    init_kwargs: dict[str, Any]
    registry: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    sha256: str

    @property
    def versions(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.registry.items() if k.endswith("_version")}

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: folder, file hash, model class, genes, library versions."""
        return {
            "folder": str(self.folder),
            "sha256": self.sha256,
            "model": self.model_name,
            "n_genes": len(self.genes),
            "n_latent": self.init_kwargs.get("n_latent"),
            **self.versions,
        }


def read_saved_model(folder: str | Path) -> SavedModel:
    """Read the folder ``SCVI.save`` / ``DRVI.save`` wrote, without running code from it.

    Raises
    ------
    ConfigError
        The folder or its ``model.pt`` is missing.
    WeightsError
        ``model.pt`` is unreadable, not a saved scvi-tools model, or holds more than data.
    """
    folder = Path(folder).expanduser()
    path = folder / MODEL_FILE
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: not a folder; give the folder a scvi-tools model was saved to "
            f"(model.save(DIR)), or one `histoxmodal pretrain-genes` wrote"
        )
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise ConfigError(
            f"{folder}: no {MODEL_FILE} (it holds {found or 'nothing'}); a scvi-tools model "
            f"folder is written by model.save(DIR)"
        )
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    try:
        # weights_only=False, but every global goes through RestrictedUnpickler (data only):
        # torch's weights_only reader cannot rebuild the registry's defaultdicts
        raw = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle
        )
    except RefusedGlobal as exc:
        raise WeightsError(
            f"{path}: not loaded: {exc}; histoxmodal reads only data from it"
        ) from exc
    except Exception as exc:  # truncated or not a torch file
        raise WeightsError(
            f"{path}: cannot be read as a saved scvi-tools model ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(raw, dict) or not {"model_state_dict", "attr_dict"} <= set(raw):
        raise WeightsError(
            f"{path}: not a saved scvi-tools model (expected model_state_dict and attr_dict)"
        )
    attr = raw["attr_dict"]
    registry = dict(attr.get("registry_") or {})
    init = attr.get("init_params_") or {}
    kwargs = dict(init.get("non_kwargs") or {})
    for extra in (init.get("kwargs") or {}).values():  # the model's **kwargs, by their name
        kwargs.update(extra or {})
    genes = [str(g) for g in np.asarray(raw.get("var_names", []), dtype=object)]
    state = {k: v for k, v in raw["model_state_dict"].items() if isinstance(v, torch.Tensor)}
    return SavedModel(
        folder=folder.resolve(),
        model_name=str(registry.get("model_name", "")),
        genes=genes,
        init_kwargs=kwargs,
        registry=registry,
        state_dict=state,
        sha256=h.hexdigest(),
    )


def saved_model_genes(folder: str | Path) -> list[str]:
    """The genes of a saved model folder, in the model's order: ``genes.txt`` where
    ``histoxmodal pretrain-genes`` wrote one (or beside a checkpoint file given instead of its
    folder: ``gene_nicheformer``), else the ``var_names`` inside ``model.pt``."""
    path = Path(folder).expanduser()
    listed = (path.parent if path.is_file() else path) / keys.RUN_GENES_FILE
    if listed.is_file():
        return listed.read_text(encoding="utf-8").split()
    return read_saved_model(folder).genes


def _empty_adata(saved: SavedModel):
    """An AnnData with the saved genes and one row per category the registry knows, set up
    with the saved arguments: the model class then builds the saved architecture."""
    import anndata as ad
    import pandas as pd

    fields = saved.registry.get("field_registries", {})
    setup = dict(saved.registry.get("setup_args", {}))
    columns: dict[str, list] = {}
    batch = fields.get("batch", {}).get("state_registry", {})
    if setup.get("batch_key"):
        columns[setup["batch_key"]] = list(batch.get("categorical_mapping", []))
    labels = fields.get("labels", {}).get("state_registry", {})
    if setup.get("labels_key"):
        columns[setup["labels_key"]] = list(labels.get("categorical_mapping", []))
    cats = fields.get("extra_categorical_covs", {}).get("state_registry", {})
    for key, values in (cats.get("mappings") or {}).items():
        columns[key] = list(values)
    # three rows per category: scvi-tools warns about categories with fewer cells
    n = 3 * max([1] + [len(v) for v in columns.values()])
    obs = pd.DataFrame(index=[f"row{i}" for i in range(n)])
    for key, values in columns.items():
        obs[key] = pd.Categorical([values[i % len(values)] for i in range(n)], categories=values)
    for key in setup.get("continuous_covariate_keys") or []:
        obs[key] = 0.0
    if setup.get("size_factor_key"):
        obs[setup["size_factor_key"]] = 1.0
    a = ad.AnnData(np.zeros((n, len(saved.genes)), np.float32), obs=obs)
    a.var_names = saved.genes
    if setup.get("layer"):
        a.layers[setup["layer"]] = a.X.copy()
    return a, setup


def build_module(saved: SavedModel, model_cls) -> nn.Module:
    """The saved module, built by ``model_cls`` (e.g. ``scvi.model.SCVI``) and loaded strictly."""
    adata, setup = _empty_adata(saved)
    model_cls.setup_anndata(adata, **setup)
    model = model_cls(adata, **saved.init_kwargs)
    try:
        model.module.load_state_dict(saved.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise WeightsError(
            f"{saved.folder}: its weights do not fit the {saved.model_name} it describes "
            f"({' '.join(first)})"
        ) from exc
    return model.module.eval()


class PretrainedScviTower(nn.Module):
    """The encoder of a saved scvi-tools model as a gene tower.

    The dataset's genes are mapped onto the model's by name: model genes the dataset lacks are
    zero-filled (their count is logged), dataset genes the model lacks are ignored. ``freeze``
    keeps the pretrained encoder fixed (and in eval mode); otherwise its encoder is fine-tuned
    with the rest (its decoder is never trained here).
    """

    normalization = "counts"
    inputs = (keys.BATCH_EXPRESSION, keys.BATCH_GENE_MASK, keys.OBS_BATCH)
    #: ``model_name`` in the saved registry, and the library that defines it
    model_name = ""

    def __init__(
        self,
        weights: str | Path,
        *,
        genes: Sequence[str] | None = None,
        n_genes: int | None = None,
        freeze: bool = False,
        n_batches: int = 0,
    ) -> None:
        super().__init__()
        saved = read_saved_model(weights)
        if saved.model_name != self.model_name:
            raise ConfigError(
                f"{saved.folder}: a saved {saved.model_name or 'unknown'} model, not "
                f"{self.model_name}; use the gene tower made for it "
                f"({'gene_drvi' if saved.model_name == 'DRVI' else 'gene_scvi'})"
            )
        if saved.init_kwargs.get("encode_covariates"):
            raise ConfigError(
                f"{saved.folder}: this {self.model_name} encodes its training batches "
                f"(encode_covariates=True), which new sections are not; pretrain one without "
                f"(histoxmodal pretrain-genes does)"
            )
        self.saved = saved.describe()
        self.weights_sha256 = saved.sha256
        self.module = build_module(saved, self._model_class())
        self.model_genes = list(saved.genes)
        self.genes = list(genes) if genes is not None else list(saved.genes)
        gene_map = map_genes(
            self.model_genes, genes, where=saved.folder.name, n_genes=n_genes, logger=log
        )
        self.register_buffer("source", gene_map.source, persistent=False)
        self.register_buffer("present", gene_map.present, persistent=False)
        self.missing_genes = gene_map.n_missing
        self.saved["missing_genes"] = self.missing_genes
        self.embed_dim = int(saved.init_kwargs.get("n_latent") or self._latent_dim())
        self.freeze = freeze
        for name, p in self.module.named_parameters():
            p.requires_grad = not freeze and name.startswith("z_encoder.")

    def _model_class(self):
        raise NotImplementedError

    def _latent_dim(self) -> int:
        return int(self.module.n_latent)

    def train(self, mode: bool = True) -> PretrainedScviTower:
        super().train(mode)
        if self.freeze:
            self.module.eval()  # a frozen encoder keeps its dropout off
        return self

    def model_counts(self, expression: torch.Tensor, gene_mask: torch.Tensor | None = None):
        """``(B, dataset genes)`` counts -> ``(B, model genes)``, missing genes zero."""
        return to_model_genes(expression, self.source, self.present, gene_mask)

    def forward(
        self,
        expression: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, n_genes)`` raw counts -> ``(B, n_latent)`` posterior means."""
        return self._posterior_mean(self.model_counts(expression.float(), gene_mask))

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ScviModelTower(PretrainedScviTower):
    """A saved ``scvi.model.SCVI`` (``gene_scvi`` with ``weights=DIR``)."""

    model_name = "SCVI"

    def _model_class(self):
        import scvi

        return scvi.model.SCVI

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(len(x), 1, dtype=torch.long, device=x.device)
        return self.module.inference(x, batch_index=zeros)["qz"].loc


class DrviModelTower(PretrainedScviTower):
    """A saved ``drvi.model.DRVI`` (``gene_drvi``; needs the ``drvi`` extra)."""

    model_name = "DRVI"

    def _model_class(self):
        from histoxmodal.deps import require_extra

        require_extra("drvi", "the DRVI gene tower")
        import drvi

        return drvi.model.DRVI

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module.inference(x)
        # DRVI returns the mean itself, keyed as scvi-tools' module keys of its version name it
        for key in ("qzm", "qz_m"):
            if out.get(key) is not None:
                return out[key]
        return out["qz"].loc
