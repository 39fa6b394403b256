"""Contrastive training over a patient's radiograph, ECG and report (Symile or pairwise CLIP).

The same machinery as the spatial side: registered towers and losses, typed config, Lightning,
AdamW with warm-up and cosine decay, a run folder with the resolved config, CSV/TensorBoard logs,
checkpoints (``--resume``) and ``model.safetensors``. A modality missing from a row is replaced
by a learned "missing" embedding for the loss (Symile's treatment of missing data); pairwise
CLIP additionally leaves such rows out of the pairs they are missing from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal import keys
from histoxmodal.encoders import ProjectionHead, create_encoder
from histoxmodal.errors import ConfigError
from histoxmodal.losses import create_loss
from histoxmodal.training.config import (
    LossConfig,
    OptimConfig,
    ValidatedConfig,
    build_dataclass,
    check_encoder,
)
from histoxmodal.training.module import adamw_warmup_cosine

_DEFAULT_MODALITIES = {
    "cxr": {"encoder": "cxr_densenet121"},
    "ecg": {"encoder": "ecg_resnet18_1d"},
    "report": {"encoder": "report_bow"},
}


@dataclass(frozen=True)
class MultimodalConfig(ValidatedConfig):
    """A multimodal (cohort) training run.

    Attributes
    ----------
    modalities
        ``{name: {"encoder": registered name, "kwargs": {...}}}`` for names among ``cxr``,
        ``ecg``, ``report`` (the cohort store's modalities), in the order given.
    embed_dim, head
        Shared embedding size and projection head (``linear`` or ``mlp``).
    loss
        ``symile`` (any number of modalities) or ``clip_pairwise``.
    augment
        Fresh nuisance per read of a training row (see
        :class:`~histoxmodal.data.cohort.CohortDataset`).
    """

    kind: Literal["cohort"] = "cohort"
    data: str | None = None
    modalities: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(_DEFAULT_MODALITIES))
    embed_dim: int = 128
    head: Literal["linear", "mlp"] = "linear"
    loss: LossConfig = field(default_factory=lambda: LossConfig(name="symile"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True

    def validate(self) -> None:
        from histoxmodal.data.cohort import MODALITIES

        if len(self.modalities) < 2:
            raise ConfigError("modalities: at least two are needed for contrastive training")
        for name in self.modalities:
            if name not in MODALITIES:
                raise ConfigError(
                    f"modalities.{name}: the cohort store holds {', '.join(MODALITIES)}"
                )
        for name, spec in self.modalities.items():
            if not isinstance(spec, dict) or "encoder" not in spec:
                raise ConfigError(f"modalities.{name}: give {{encoder: NAME, kwargs: {{...}}}}")
            extra = set(spec) - {"encoder", "kwargs"}
            if extra:
                raise ConfigError(f"modalities.{name}: unknown keys {sorted(extra)}")
            if not isinstance(spec["encoder"], str):
                raise ConfigError(
                    f"modalities.{name}.encoder={spec['encoder']!r}: expected an encoder name"
                )
            check_encoder(spec["encoder"], f"modalities.{name}.encoder")
            if not isinstance(spec.get("kwargs", {}), dict):
                raise ConfigError(
                    f"modalities.{name}.kwargs={spec['kwargs']!r}: expected a mapping (key: value)"
                )
        if self.embed_dim < 1:
            raise ConfigError(f"embed_dim={self.embed_dim!r}: expected an integer >= 1")
        if self.loss.name not in ("symile", "clip_pairwise"):
            raise ConfigError(f"loss.name={self.loss.name!r}: symile or clip_pairwise for a cohort")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def multimodal_config_from_dict(data: dict[str, Any]) -> MultimodalConfig:
    """Validate a nested dict (parsed YAML with a ``modalities:`` section): every key known,
    every value of its field's type and in range, every encoder and the loss registered."""

    if isinstance(data, dict) and data.get("kind", "cohort") != "cohort":
        raise ConfigError(f"kind={data['kind']!r}: a config with modalities: is kind 'cohort'")
    return build_dataclass(MultimodalConfig, data, "")


class MultimodalModule(L.LightningModule):
    """One tower and projection head per modality, a learned embedding for missing ones, and a
    multi-modality loss."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        from histoxmodal.data.cohort import MODALITIES

        self.config = config
        self.names = list(config.modalities)
        self.columns = [MODALITIES.index(m) for m in self.names]
        self.towers = nn.ModuleDict(
            {
                m: create_encoder(spec["encoder"], **spec.get("kwargs", {}))
                for m, spec in config.modalities.items()
            }
        )
        for m, tower in self.towers.items():
            consumed = getattr(tower, "inputs", ())
            if not consumed or consumed[0] != m:
                raise ConfigError(
                    f"modalities.{m}: encoder {config.modalities[m]['encoder']!r} consumes "
                    f"{list(consumed) or 'nothing it declares'}, not the {m!r} modality; pick a "
                    f"{m} encoder (list_encoders())"
                )
        self.heads = nn.ModuleDict(
            {
                m: ProjectionHead(t.embed_dim, config.embed_dim, kind=config.head)
                for m, t in self.towers.items()
            }
        )
        self.missing = nn.Parameter(torch.randn(len(self.names), config.embed_dim) * 0.1)
        self.loss = create_loss(config.loss.name, **config.loss.kwargs)

    def embed_modality(self, name: str, batch: dict[str, Any]) -> torch.Tensor:
        """L2-normalized ``(B, embed_dim)`` embeddings of one modality (missing rows included:
        the tower sees zeros for them); the tower reads the batch keys it declares
        (``tower.inputs``)."""
        return self.heads[name](self.towers[name].forward_batch(batch, self.device))

    def embed(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every modality's embeddings (missing rows replaced by the learned vector) and the
        ``(B, n_modalities)`` presence mask, in ``self.names`` order."""
        present = batch[keys.BATCH_PRESENT][:, self.columns].to(self.device)
        zs = []
        for k, name in enumerate(self.names):
            z = self.embed_modality(name, batch)
            miss = F.normalize(self.missing[k], dim=0).expand_as(z)
            zs.append(torch.where(present[:, k : k + 1], z, miss))
        return zs, present

    def embed_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{modality: (B, d)}`` embeddings and ``present`` ``(B, n_modalities)``."""
        zs, present = self.embed(batch)
        return {**dict(zip(self.names, zs, strict=True)), keys.BATCH_PRESENT: present}

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        zs, present = self.embed(batch)
        return self.loss(*zs, present=present)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, batch_size=len(batch[keys.BATCH_PRESENT]), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("val/loss", loss, batch_size=len(batch[keys.BATCH_PRESENT]), sync_dist=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.config.optim)
