"""Typed training configuration: frozen dataclasses, built from dicts with unknown keys rejected
(and the close matches suggested)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from histoxmodal.errors import ConfigError


class ValidatedConfig:
    """Base of the config dataclasses: ``__post_init__`` converts every field to its annotation
    (only where nothing is lost, :func:`coerce_value`), builds nested sections given as dicts
    and runs :meth:`validate`, so a config built in Python (``TrainConfig(genes=0)``) is refused
    with the same message as the same value in YAML or ``--set``."""

    #: prefix of this section's keys in messages (``"optim."``); empty at the top level
    key_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, tp in field_types(type(self)).items():
            key = f"{self.key_prefix}{name}"
            value = getattr(self, name)
            if isinstance(tp, type) and issubclass(tp, ValidatedConfig):
                if isinstance(value, dict):
                    value = build_dataclass(tp, value, f"{key}.")
                elif not isinstance(value, tp):
                    raise _bad(key, value, "a mapping (key: value, ...)")
            else:
                value = coerce_value(value, tp, key)
            object.__setattr__(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Ranges and registered names, once the types are right (override per section)."""


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """``{field: resolved annotation}`` of a dataclass (cached: annotations are strings)."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


@dataclass(frozen=True)
class ModelConfig(ValidatedConfig):
    """Towers and heads: registered encoder names (``list_encoders()``) and their options.

    With ``image_mode: frozen`` and ``cache_image_features`` the image tower runs once per patch
    and per flip/rotation (``cache_views``, up to 8) before training; epochs then train the heads
    and the gene tower only (colour augmentation does not apply to cached features).
    """

    key_prefix: ClassVar[str] = "model."

    image_encoder: str = "test_image_resnet"
    image_weights: str | None = None
    #: train a foundation tower (one registered with published weights) from random weights on
    #: purpose; without it such a tower needs image_weights
    random_weights: bool = False
    image_mode: Literal["finetune", "frozen", "lora"] = "finetune"
    image_kwargs: dict[str, Any] = field(default_factory=dict)
    cache_image_features: bool = True
    cache_views: int = 8
    gene_encoder: str = "gene_mlp"
    #: a saved gene model folder for a pretrained gene tower (``gene_drvi``, ``gene_scvi``:
    #: written by ``histoxmodal pretrain-genes`` or the library's ``model.save(DIR)``;
    #: ``gene_nicheformer``: the checkpoint, ``genes.txt``, ``technology_mean.npy``); with
    #: ``genes: null`` the run's panel is the model's genes that the dataset measures
    gene_weights: str | None = None
    gene_kwargs: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 128
    head: Literal["linear", "mlp"] = "mlp"
    #: train this many image + gene tower pairs, member i with seed ``optim.seed + i``, each a
    #: run of its own under ``members/<i>``; the run embeds with all of them, its embedding the
    #: members' concatenated (scaled by 1/sqrt(n), so its inner products are the mean of the
    #: members') (:class:`~histoxmodal.training.ensemble.EnsembleModule`)
    ensemble: int = 1

    def validate(self) -> None:
        check_encoder(self.image_encoder, "model.image_encoder", allow_timm=True)
        check_encoder(self.gene_encoder, "model.gene_encoder")
        if self.ensemble < 1:
            raise ConfigError(
                f"model.ensemble={self.ensemble!r}: expected an integer >= 1 (1 = one model)"
            )
        if self.embed_dim < 1:
            raise ConfigError(f"model.embed_dim={self.embed_dim!r}: expected an integer >= 1")
        if not 1 <= self.cache_views <= 8:
            raise ConfigError(
                f"model.cache_views={self.cache_views!r}: expected an integer in 1..8"
            )


@dataclass(frozen=True)
class LossConfig(ValidatedConfig):
    """A registered loss (``list_losses()``) and its options, and direct expression regression.

    Attributes
    ----------
    name
        The contrastive loss, or ``none`` for direct regression alone (the image tower trained
        to predict expression, the baseline HESCAPE compares contrastive pretraining against;
        needs ``expression_weight > 0``).
    expression_weight
        Weight of a mean-squared-error term: a linear head on the image tower's features
        predicts the spot's normalized expression (measured genes only). ``0`` = off; with a
        contrastive loss the two are trained together.
    """

    key_prefix: ClassVar[str] = "loss."

    name: str = "clip"
    kwargs: dict[str, Any] = field(default_factory=dict)
    expression_weight: float = 0.0

    def validate(self) -> None:
        _check_range("loss.expression_weight", self.expression_weight, low=0)
        if self.name != "none":
            check_loss(self.name)
        elif self.expression_weight <= 0:
            raise ConfigError(
                "loss.name='none' trains nothing: set loss.expression_weight > 0 "
                "(direct expression regression) or name a contrastive loss"
            )


@dataclass(frozen=True)
class CorrectionConfig(ValidatedConfig):
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

    key_prefix: ClassVar[str] = "correction."

    batch_key: Literal["batch", "sample", "patient"] = "batch"
    batch_conditioned_genes: bool = False
    cross_batch: Literal["keep", "mask", "downweight"] = "keep"
    same_batch: Literal["keep", "mask", "downweight"] = "keep"
    sampler: Literal["random", "by_batch", "balanced"] = "random"
    adversarial_weight: float = 0.0

    def validate(self) -> None:
        _check_range("correction.adversarial_weight", self.adversarial_weight, low=0)


@dataclass(frozen=True)
class HeadConfig(ValidatedConfig):
    """The expression head fitted at the end of training on the run's training spots, for every
    gene of the run's panel, and saved with the run (``RUN/heads/expression_<name>``), so
    ``histoxmodal predict`` maps new slides without the training data.

    Attributes
    ----------
    expression
        ``ridge`` (default), ``mlp``, ``retrieval`` or ``null`` (none; fit one later with
        ``histoxmodal fit-head``).
    context_um
        Neighbour context (0 = off): the ``ridge`` or ``mlp`` head reads each spot's image
        embedding beside the mean embedding of the other spots within this many µm in the same
        section or slide (:func:`histoxmodal.data.neighbours.radius_context`); images only, so a
        new slide gets it too. Recorded with the saved head. The ``retrieval`` head matches
        images against gene embeddings and ignores it.
    centre
        Centre each section's (or slide's) embeddings on their own mean before a head reads
        them (:func:`histoxmodal.data.neighbours.centre_by_group`): what differs between
        sections as a whole (stain, scanner, patient, sequencing depth) stops moving the
        prediction. Image embeddings for ``ridge``/``mlp``; image queries and gene embeddings
        for ``retrieval``, and for the cross-modal retrieval metrics of ``evaluate`` and
        ``bench her2st``. Needs only the query section's images; recorded with the saved
        head.
    smooth_um
        Retrieval only (0 = off): both modalities' embeddings averaged half-and-half with their
        mean over the spots within this many µm in the same section, against the noise of
        shallow spots (B4's ~650 counts per spot); the ``retrieval`` head and the retrieval
        metrics read it, the ``ridge``/``mlp`` heads do not.
    retrieval_score
        How the cross-modal retrieval metrics of ``evaluate`` and ``bench her2st`` score a
        query against each item (:mod:`histoxmodal.evaluation.retrieval`): ``ip`` (the inner
        product as read), ``cosine`` (of the rows made unit length again after centring and
        smoothing), or ``csls`` (cosine with hubs discounted, over ``csls_k`` neighbours).
        HESCAPE's in-batch recall always reads the inner product, as HESCAPE does. The
        ``retrieval`` head matches by cosine whatever this says.
    csls_k
        Neighbours each query and item averages over for ``csls``.
    """

    key_prefix: ClassVar[str] = "head."

    expression: Literal["ridge", "mlp", "retrieval"] | None = "ridge"
    context_um: float = 0.0
    centre: bool = False
    smooth_um: float = 0.0
    retrieval_score: Literal["ip", "cosine", "csls"] = "ip"
    csls_k: int = 10

    def validate(self) -> None:
        _check_range("head.context_um", self.context_um, low=0)
        _check_range("head.smooth_um", self.smooth_um, low=0)
        _check_range("head.csls_k", self.csls_k, low=1)


@dataclass(frozen=True)
class StainConfig(ValidatedConfig):
    """Stain normalisation of every patch the image tower reads (:mod:`histoxmodal.data.stain`).

    The normaliser is fitted once, when the run is created, on ``target``, and saved with the
    run (``RUN/stain.json``, recorded in ``run.json``); training, evaluation, ``predict`` and
    ``features --run`` then normalise patches to it. A patch that cannot be normalised
    (background, pen, too little tissue) keeps its raw colours.

    Attributes
    ----------
    method
        ``macenko``, ``reinhard`` or ``null`` (off).
    target
        A reference H&E image (its tissue tiles are pooled), a folder of tile images, or a
        stain JSON saved before (``StainNormalizer.save``; its method must match).
    min_tissue
        Patches with a smaller fraction of stained pixels keep their raw colours.
    """

    key_prefix: ClassVar[str] = "stain."

    method: Literal["macenko", "reinhard"] | None = None
    target: str | None = None
    min_tissue: float = 0.1

    def validate(self) -> None:
        _check_range("stain.min_tissue", self.min_tissue, low=0, high=1)
        if self.method and not self.target:
            raise ConfigError(
                f"stain.method={self.method!r} needs stain.target: a reference H&E image, a "
                "folder of tiles or a stain JSON"
            )
        if self.target and not self.method:
            raise ConfigError(
                f"stain.target={self.target!r} without stain.method: set stain.method to "
                "macenko or reinhard"
            )


@dataclass(frozen=True)
class OptimConfig(ValidatedConfig):
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

    key_prefix: ClassVar[str] = "optim."

    def validate(self) -> None:
        check_optim(self)


@dataclass(frozen=True)
class TrainConfig(ValidatedConfig):
    """Everything a training run needs; saved beside every checkpoint."""

    kind: Literal["spatial"] = "spatial"
    data: str | None = None
    #: the panel: the N most variable genes of the training spots; ``None``: every gene, or
    #: with ``model.gene_weights`` the saved gene model's genes
    genes: int | None = 256
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: dict[str, Any] = field(default_factory=lambda: {"flips": True, "rot90": True})
    head: HeadConfig = field(default_factory=HeadConfig)
    stain: StainConfig = field(default_factory=StainConfig)

    def validate(self) -> None:
        if self.genes is not None and self.genes < 1:
            raise ConfigError(f"genes={self.genes!r}: expected an integer >= 1 or null (all genes)")
        _check_augment(self.augment)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: heads that predict expression from image embeddings (registered head names)
EXPRESSION_HEADS = ("ridge", "mlp", "retrieval")

#: the precision strings Lightning's ``Trainer(precision=...)`` accepts, and ``auto``
PRECISIONS = (
    "auto",
    "32-true",
    "32",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "64",
    "transformer-engine",
)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is tuple or tp is tuple:
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: expected {expected}")


def _choice(value: Any, choices: tuple, key: str, *, nullable: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (a ``Literal``), else the error with close matches."""
    if value in choices:
        return value
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    null = " or null" if nullable else ""
    raise ConfigError(
        f"{key}={value!r}: expected one of {', '.join(repr(c) for c in choices)}{null}{hint}"
    )


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (a dataclass field's annotation), converted only where nothing
    is lost (``2.0`` -> ``2``, ``3`` -> ``3.0``, ``"3e-4"`` -> ``0.0003``: YAML 1.1 reads ``3e-4``
    as a string); anything else raises :class:`ConfigError` naming ``key``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (only, *more) = [a for a in args if a is not type(None)]
        if not more and typing.get_origin(only) is Literal:
            return _choice(value, typing.get_args(only), key, nullable=True)
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, key)
            except ConfigError:
                continue
        raise _bad(key, value, _type_name(tp))
    if origin is Literal:
        return _choice(value, typing.get_args(tp), key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(key, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise _bad(key, value, "an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, value, "a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # e.g. precision: 32
        raise _bad(key, value, "a string")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, "a mapping (key: value, ...)")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {
            coerce_value(k, kt, f"{key}.{k}"): coerce_value(v, vt, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise _bad(key, value, "a list")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args:
            if len(value) != len(args):
                raise _bad(key, value, f"a list of {len(args)} values")
            return tuple(
                coerce_value(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        return tuple(value)
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise _bad(key, value, "a list")
        (at,) = typing.get_args(tp) or (Any,)
        return [coerce_value(v, at, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def build_dataclass(
    cls: type, data: dict[str, Any], where: str = "", sections: dict[str, type] | None = None
):
    """Build a frozen config dataclass from a nested dict: unknown keys are rejected (with the
    close matches), each value is checked against its field's annotation (:func:`coerce_value`)
    and the dataclass sections (``sections``, default those of a :class:`TrainConfig` when
    ``cls`` is one) are built recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where.rstrip('.') or 'the config'}={data!r}: expected a mapping (key: value, ...)"
        )
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = field_types(cls)
    if sections is None:  # the fields that are config sections themselves
        sections = {
            k: t for k, t in hints.items() if isinstance(t, type) and issubclass(t, ValidatedConfig)
        }
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown key {where}{key!r}{hint} (known: {', '.join(names)})")
        sub = sections.get(key)
        if sub:
            kwargs[key] = build_dataclass(sub, value, f"{where}{key}.")
        else:
            kwargs[key] = coerce_value(value, hints[key], f"{where}{key}")
    return cls(**kwargs)


def _check_range(key: str, value: float, *, low: float, strict: bool = False, high=None) -> None:
    ok = value > low if strict else value >= low
    ok = ok and math.isfinite(value) and (high is None or value < high)
    if not ok:
        rng = f"> {low}" if strict else f">= {low}"
        if high is not None:
            rng = f"in [{low}, {high})"
        raise ConfigError(f"{key}={value!r}: expected a number {rng}")


def check_optim(o: OptimConfig, where: str = "optim.") -> None:
    """Refuse loop sizes and rates that cannot train (the types are checked already)."""
    _check_range(f"{where}lr", o.lr, low=0, strict=True)
    _check_range(f"{where}weight_decay", o.weight_decay, low=0)
    _check_range(f"{where}warmup_fraction", o.warmup_fraction, low=0, high=1)
    for name in ("batch_size", "max_epochs", "accumulate"):
        if getattr(o, name) < 1:
            raise ConfigError(f"{where}{name}={getattr(o, name)!r}: expected an integer >= 1")
    if o.num_workers < 0:
        raise ConfigError(f"{where}num_workers={o.num_workers!r}: expected an integer >= 0")
    if not 0 <= o.seed < 2**32:
        raise ConfigError(f"{where}seed={o.seed!r}: expected an integer in [0, 2**32)")
    if o.precision not in PRECISIONS:
        close = difflib.get_close_matches(o.precision, PRECISIONS, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(
            f"{where}precision={o.precision!r}: not a Lightning precision{hint} "
            f"(expected one of {', '.join(PRECISIONS)})"
        )


def _one_of(key: str, value: str, names: list[str] | tuple[str, ...], what: str) -> None:
    if value in names:
        return
    close = difflib.get_close_matches(value, names, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"{key}={value!r}: unknown {what}{hint} (known: {', '.join(names)})")


def check_loss(name: str, key: str = "loss.name") -> None:
    """Refuse a loss name that is not registered (``list_losses()``)."""
    from histoxmodal.losses import list_losses

    _one_of(key, name, list_losses(), "loss")


def check_encoder(name: str, key: str, *, allow_timm: bool = False) -> None:
    """Refuse an encoder name that is not registered (``list_encoders()``); image towers also
    take ``timm:<architecture>``."""
    from histoxmodal.encoders import list_encoders

    if allow_timm and name.startswith("timm:"):
        if not name[5:]:
            raise ConfigError(f"{key}={name!r}: expected timm:<architecture>, e.g. timm:resnet18")
        return
    names = list_encoders()
    extra = " or timm:<architecture>" if allow_timm else ""
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{key}={name!r}: unknown encoder{hint} (known: {', '.join(names)}{extra})"
        )


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict (parsed YAML) into a :class:`TrainConfig`: every key known, every
    value of its field's type and in range, every registered name (encoders, loss) known."""
    # every check runs in the dataclasses' __post_init__ (ValidatedConfig), so TrainConfig(...)
    # built in Python is refused the same way
    if isinstance(data, dict) and data.get("kind", "spatial") != "spatial":
        raise ConfigError(f"kind={data['kind']!r}: a TrainConfig is kind 'spatial' (image + genes)")
    return build_dataclass(TrainConfig, data, "")


def _check_augment(augment: dict[str, Any]) -> None:
    from histoxmodal.data.transforms import Augment

    try:
        build_dataclass(Augment, augment, "augment.", sections={})
    except ConfigError as exc:
        if str(exc).startswith(("augment.", "unknown key")):
            raise
        raise ConfigError(f"augment.{exc}") from exc  # Augment's own range checks


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
