"""Typed training configuration: frozen dataclasses, built from dicts with unknown keys rejected
(and the close matches suggested)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from histoxmodal.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Towers and heads: registered encoder names (``list_encoders()``) and their options.

    With ``image_mode: frozen`` and ``cache_image_features`` the image tower runs once per patch
    and per flip/rotation (``cache_views``, up to 8) before training; epochs then train the heads
    and the gene tower only (colour augmentation does not apply to cached features).
    """

    image_encoder: str = "test_image_resnet"
    image_weights: str | None = None
    image_mode: str = "finetune"
    image_kwargs: dict[str, Any] = field(default_factory=dict)
    cache_image_features: bool = True
    cache_views: int = 8
    gene_encoder: str = "gene_mlp"
    gene_kwargs: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 128
    head: str = "mlp"


@dataclass(frozen=True)
class LossConfig:
    """A registered loss (``list_losses()``) and its options."""

    name: str = "clip"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CorrectionConfig:
    """Batch-effect correction; each part can be switched on alone or combined.

    Attributes
    ----------
    batch_key
        ``obs`` column that defines batches (``batch``, ``sample`` or ``patient``).
    batch_conditioned_genes
        Condition every layer of the gene tower on the batch: batch-specific normalization by
        default, or one-hot covariates with ``model.gene_kwargs.conditioning=onehot`` (see
        :class:`~histoxmodal.encoders.gene.CovariateMLP` for why that one is not a correction
        on its own).
    cross_batch
        Negatives from other batches: ``keep``, ``mask`` (contrast within each batch only: the
        loss-side correction) or ``downweight``.
    same_batch
        Negatives from the same batch: ``keep``, ``mask`` or ``downweight`` (against false
        negatives from neighbouring spots; it does not reduce a batch effect).
    sampler
        ``random``; ``by_batch`` (each training batch from one batch); ``balanced`` (equal
        numbers per batch).
    adversarial_weight
        Weight of a batch classifier on the embeddings behind gradient reversal (0 = off).
    """

    batch_key: str = "batch"
    batch_conditioned_genes: bool = False
    cross_batch: str = "keep"
    same_batch: str = "keep"
    sampler: str = "random"
    adversarial_weight: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, and the loop's sizes.

    ``precision="auto"`` trains in bf16 mixed precision on GPUs that support it, fp16 mixed on
    other GPUs and fp32 on CPUs; any Lightning precision string is accepted too.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    batch_size: int = 64
    max_epochs: int = 2
    accumulate: int = 1
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 2


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved beside every checkpoint."""

    kind: str = "spatial"
    data: str | None = None
    genes: int | None = 256
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: dict[str, Any] = field(default_factory=lambda: {"flips": True, "rot90": True})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_dataclass(cls: type, data: dict[str, Any], where: str = ""):
    """Build a frozen config dataclass from a nested dict, rejecting unknown keys (with the
    close matches) and building nested sections of a :class:`TrainConfig` recursively."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown key {where}{key!r}{hint} (known: {', '.join(names)})")

        sub = (
            {
                "model": ModelConfig,
                "loss": LossConfig,
                "correction": CorrectionConfig,
                "optim": OptimConfig,
            }.get(key)
            if cls is TrainConfig
            else None
        )
        kwargs[key] = build_dataclass(sub, value, f"{where}{key}.") if sub else value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict (parsed YAML) into a :class:`TrainConfig`."""
    cfg = build_dataclass(TrainConfig, data, "")
    if cfg.kind != "spatial":
        raise ConfigError(f"kind={cfg.kind!r}: a TrainConfig is kind 'spatial' (image + genes)")
    c = cfg.correction
    if c.sampler not in ("random", "by_batch", "balanced"):
        raise ConfigError(f"correction.sampler={c.sampler!r}: random, by_batch or balanced")
    for name in ("cross_batch", "same_batch"):
        if getattr(c, name) not in ("keep", "mask", "downweight"):
            raise ConfigError(f"correction.{name}={getattr(c, name)!r}: keep, mask or downweight")
    if c.batch_key not in ("batch", "sample", "patient"):
        raise ConfigError(f"correction.batch_key={c.batch_key!r}: batch, sample or patient")
    return cfg


def set_value(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply a ``--set a.b=value`` override to a nested dict."""
    *path, last = dotted.split(".")
    node = data
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value


def bundled_configs() -> dict[str, Path]:
    """Example configs shipped with the package (``histoxmodal/configs/*.yaml``, listed by
    ``histoxmodal train --list``)."""
    # Package data, so a wheel has them; an installed wheel is on disk, so this is a real Path.
    folder = Path(str(resources.files("histoxmodal") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_config(name_or_path: str, overrides: list[str] | None = None):
    """A YAML file or bundled example, with ``key.sub=value`` overrides (values parsed as YAML).

    Returns a :class:`TrainConfig` (image + gene towers on a paired dataset), or a
    :class:`~histoxmodal.training.multimodal.MultimodalConfig` when the file has a
    ``modalities:`` section (radiograph, ECG, report towers on a cohort).
    """
    import yaml

    p = Path(name_or_path)
    if not p.exists():
        bundled = bundled_configs()
        if name_or_path not in bundled:
            close = difflib.get_close_matches(name_or_path, bundled, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(
                f"config {name_or_path!r} is neither a file nor a bundled "
                f"example.{hint} Examples: {', '.join(bundled)}"
            )
        p = bundled[name_or_path]
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.0003")
        key, value = item.split("=", 1)
        set_value(data, key.strip(), yaml.safe_load(value))
    return parse_config(data)


#: config kinds: what a run trains on (``kind:`` in YAML, ``run.json``)
CONFIG_KINDS = ("spatial", "cohort")


def parse_config(data: dict[str, Any]):
    """A validated config of the kind ``data["kind"]`` names: ``spatial``
    (:class:`TrainConfig`, the default) or ``cohort``
    (:class:`~histoxmodal.training.multimodal.MultimodalConfig`). A file without ``kind`` but
    with a ``modalities:`` section (written before ``kind`` existed) is a cohort config."""
    kind = (data or {}).get("kind") or ("cohort" if "modalities" in (data or {}) else "spatial")
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"kind={kind!r}: expected one of {', '.join(CONFIG_KINDS)}")
    if kind == "cohort":
        from histoxmodal.training.multimodal import multimodal_config_from_dict

        return multimodal_config_from_dict({**data, "kind": kind})
    return config_from_dict({**data, "kind": kind})
