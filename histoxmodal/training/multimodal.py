"""Contrastive training over a patient's radiograph, ECG and report (Symile or pairwise CLIP).

The same machinery as the spatial side: registered towers and losses, typed config, Lightning,
AdamW with warm-up and cosine decay, a run folder with the resolved config, CSV/TensorBoard logs,
checkpoints (``--resume``) and ``model.safetensors``. A modality missing from a row is replaced
by a learned "missing" embedding for the loss (Symile's treatment of missing data); pairwise
CLIP additionally leaves such rows out of the pairs they are missing from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal._fileutil import write_json_atomic
from histoxmodal.encoders import ProjectionHead, create_encoder
from histoxmodal.errors import ConfigError
from histoxmodal.losses import create_loss
from histoxmodal.training.config import LossConfig, OptimConfig, _build
from histoxmodal.training.fit import RUN_CONFIG, RUN_WEIGHTS
from histoxmodal.training.module import adamw_warmup_cosine

_DEFAULT_MODALITIES = {
    "cxr": {"encoder": "cxr_densenet121"},
    "ecg": {"encoder": "ecg_resnet18_1d"},
    "report": {"encoder": "report_bow"},
}


@dataclass(frozen=True)
class MultimodalConfig:
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

    data: str | None = None
    modalities: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(_DEFAULT_MODALITIES))
    embed_dim: int = 128
    head: str = "linear"
    loss: LossConfig = field(default_factory=lambda: LossConfig(name="symile"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def multimodal_config_from_dict(data: dict[str, Any]) -> MultimodalConfig:
    """Validate a nested dict (parsed YAML with a ``modalities:`` section)."""
    from histoxmodal.data.cohort import MODALITIES

    names = {f.name for f in dataclasses.fields(MultimodalConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in (data or {}).items():
        if key not in names:
            import difflib

            close = difflib.get_close_matches(key, names, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint} (known: {', '.join(sorted(names))})")
        if key == "loss":
            kwargs[key] = _build(LossConfig, value, "loss.")
        elif key == "optim":
            kwargs[key] = _build(OptimConfig, value, "optim.")
        else:
            kwargs[key] = value
    cfg = MultimodalConfig(**kwargs)
    if len(cfg.modalities) < 2:
        raise ConfigError("modalities: at least two are needed for contrastive training")
    for name, spec in cfg.modalities.items():
        if name not in MODALITIES:
            raise ConfigError(f"modalities.{name}: the cohort store holds {', '.join(MODALITIES)}")
        if not isinstance(spec, dict) or "encoder" not in spec:
            raise ConfigError(f"modalities.{name}: give {{encoder: NAME, kwargs: {{...}}}}")
        extra = set(spec) - {"encoder", "kwargs"}
        if extra:
            raise ConfigError(f"modalities.{name}: unknown keys {sorted(extra)}")
    if cfg.loss.name not in ("symile", "clip_pairwise"):
        raise ConfigError(f"loss.name={cfg.loss.name!r}: symile or clip_pairwise for a cohort")
    return cfg


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
        self.heads = nn.ModuleDict(
            {
                m: ProjectionHead(t.embed_dim, config.embed_dim, kind=config.head)
                for m, t in self.towers.items()
            }
        )
        self.missing = nn.Parameter(torch.randn(len(self.names), config.embed_dim) * 0.1)
        self.loss = create_loss(config.loss.name, **config.loss.kwargs)

    def embed_modality(self, name: str, batch: dict[str, Any]) -> torch.Tensor:
        """L2-normalised ``(B, embed_dim)`` embeddings of one modality (missing rows included:
        the tower sees zeros for them)."""
        tower = self.towers[name]
        if name == "cxr":
            x = tower(batch["cxr"].to(self.device))
        elif name == "ecg":
            x = tower(batch["ecg"].to(self.device), batch["ecg_lead_mask"].to(self.device))
        else:
            x = tower(tower.tokenize(batch["report"]).to(self.device))
        return self.heads[name](x)

    def embed(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every modality's embeddings (missing rows replaced by the learned vector) and the
        ``(B, n_modalities)`` presence mask, in ``self.names`` order."""
        present = batch["present"][:, self.columns].to(self.device)
        zs = []
        for k, name in enumerate(self.names):
            z = self.embed_modality(name, batch)
            miss = F.normalize(self.missing[k], dim=0).expand_as(z)
            zs.append(torch.where(present[:, k : k + 1], z, miss))
        return zs, present

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        zs, present = self.embed(batch)
        return self.loss(*zs, present=present)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, batch_size=len(batch["present"]), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("val/loss", loss, batch_size=len(batch["present"]), sync_dist=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.config.optim)


def fit_multimodal(
    config: MultimodalConfig,
    out: str | Path,
    *,
    data: str | Path | None = None,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    enable_progress_bar: bool = False,
    resume: bool = False,
) -> MultimodalModule:
    """Train on a cohort store (``histoxmodal build --recipe cohort``); writes the run folder
    and returns the module. Trains on the patient split's train rows, validates on its val
    rows."""
    from torch.utils.data import DataLoader

    from histoxmodal.data.cohort import CohortDataset, collate_cohort, is_cohort
    from histoxmodal.data.splits import load_split
    from histoxmodal.training.fit import train_and_save

    data = Path(data or config.data or "")
    if not is_cohort(data):
        raise ConfigError(
            f"--data {data}: not a cohort dataset (build one with `histoxmodal build --recipe "
            f"cohort --manifest FILE --out DIR`)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise ConfigError(f"--resume: {out} has no checkpoints/last.ckpt to continue from")
    if not resume and last.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume or choose another --out")
    L.seed_everything(config.optim.seed, workers=True)
    fold = load_split(data / "splits" / "patient.json")[0]
    n = len(CohortDataset(data))
    train_ds = CohortDataset(data, fold.train(n), augment=config.augment, seed=config.optim.seed)
    val_ds = CohortDataset(data, fold.val) if len(fold.val) else None
    write_json_atomic(out / RUN_CONFIG, {**config.to_dict(), "data": str(data)})
    module = MultimodalModule(config)
    o = config.optim
    kw = {"num_workers": o.num_workers, "persistent_workers": o.num_workers > 0}
    train_dl = DataLoader(
        train_ds,
        batch_size=o.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_cohort,
        **kw,
    )
    val_dl = (
        DataLoader(val_ds, batch_size=o.batch_size, collate_fn=collate_cohort, **kw)
        if val_ds
        else None
    )
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
    return module.eval()


def load_multimodal_run(run: str | Path) -> MultimodalModule:
    """Rebuild a trained multimodal module from its run folder."""
    from safetensors.torch import load_file

    run = Path(run)
    for f in (RUN_CONFIG, RUN_WEIGHTS):
        if not (run / f).exists():
            raise FileNotFoundError(f"{run / f} not found: is {run} a finished training run?")
    raw = json.loads((run / RUN_CONFIG).read_text())
    module = MultimodalModule(multimodal_config_from_dict(raw))
    module.load_state_dict(load_file(str(run / RUN_WEIGHTS)))
    return module.eval()


@torch.no_grad()
def cohort_embeddings(
    module: MultimodalModule, data: str | Path, rows=None, *, batch_size: int = 128
):
    """``{modality: (n, d)}`` embeddings (missing rows as the learned vector) and the
    ``(n, n_modalities)`` presence mask of ``rows`` of a cohort store."""
    import numpy as np

    from histoxmodal.data.cohort import CohortDataset, collate_cohort

    ds = CohortDataset(data, rows)
    zs: dict[str, list] = {m: [] for m in module.names}
    pres = []
    module.eval()
    for s in range(0, len(ds), batch_size):
        b = collate_cohort([ds[i] for i in range(s, min(len(ds), s + batch_size))])
        z, p = module.embed(b)
        for m, zi in zip(module.names, z, strict=True):
            zs[m].append(zi.cpu().numpy())
        pres.append(p.cpu().numpy())
    return {m: np.concatenate(v) for m, v in zs.items()}, np.concatenate(pres)
