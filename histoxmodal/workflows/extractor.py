"""Image towers ready for feature extraction (``histoxmodal features``), and the encoders the
command lists (``histoxmodal models``).

:func:`load_extractor` builds a registered encoder (from local weights, or random on purpose) or
a trained run's image tower, with what identifies it (architecture, weights checksum) and the
tiles it expects (side in pixels, µm per pixel).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoxmodal import keys
from histoxmodal.errors import ConfigError


@dataclass
class Extractor:
    """An image tower ready for feature extraction, with what identifies it and the tiles it
    expects (see :func:`load_extractor`).

    Attributes
    ----------
    module
        :class:`~histoxmodal.training.embedding.ImageFeatures`: uint8 tiles in, features out.
    identity
        JSON-able: ``encoder``, ``architecture``, ``weights_sha256`` (``None``: random weights,
        seeded), ``run`` and ``projection``, ``dim``.
    tile_px, target_mpp
        The tiles cut from a slide: side in pixels and µm per pixel.
    stain
        A fitted :class:`~histoxmodal.data.stain.StainNormalizer` applied to every tile before
        the tower (a run's own, or ``stain_normalize=``), or ``None``.
    """

    module: Any
    identity: dict[str, Any]
    tile_px: int
    target_mpp: float
    stain: Any = None

    def with_stain(self, stain) -> Extractor:
        """This extractor normalising tiles with ``stain``, recorded in its identity (so
        features of raw tiles are not taken for normalised ones on a rerun)."""
        ident = {**self.identity, "stain": {"method": stain.method, "sha256": stain.digest}}
        return dataclasses.replace(self, identity=ident, stain=stain)

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])


def load_extractor(
    encoder: str | None = None,
    *,
    weights: str | Path | None = None,
    run: str | Path | None = None,
    projection: bool = False,
    seed: int = 0,
    random_weights: bool = False,
) -> Extractor:
    """Build the image tower of ``encoder`` (from local ``weights``) or of a trained ``run``.

    Parameters
    ----------
    encoder
        A registered image encoder (``histoxmodal models``) or ``"timm:<architecture>"``.
    weights
        Local checkpoint of ``encoder``. A foundation model (registered with published
        weights, ``describe_encoder(name)["needs_weights"]``) requires it, unless
        ``random_weights``.
    random_weights
        Run without weights on purpose (tests, speed benchmarks): random, initialised with
        ``seed`` so every process of a sharded job gets the same tower; files and summaries
        record ``weights: random``.
    run
        A spatial training run folder: its image tower, at the field of view it trained on.
    projection
        With ``run``: output the projected (L2-normalized) embedding instead of tower features.

    Raises
    ------
    ConfigError
        Neither or both of ``encoder`` and ``run``; an unknown or non-image encoder; weights that
        do not fit; ``projection`` without ``run``; a cohort run.
    FileNotFoundError
        Missing weights or run files.
    """
    import torch

    from histoxmodal.training.embedding import ImageFeatures

    if (encoder is None) == (run is None):
        raise ConfigError(
            "give --encoder NAME (optionally with --weights PATH) or --run RUN, not "
            + ("both" if encoder is not None else "neither")
        )
    if projection and run is None:
        raise ConfigError("--projection needs --run RUN (a trained run has a projection head)")
    if run is not None:
        if weights is not None:
            raise ConfigError("--weights goes with --encoder; a --run carries its own weights")
        return _run_extractor(run, projection)
    from histoxmodal.encoders import create_encoder, describe_encoder

    name = str(encoder)
    if not name.startswith("timm:"):
        try:
            meta = describe_encoder(name)
        except KeyError as exc:
            raise ConfigError(f"--encoder {exc.args[0]}; `histoxmodal models` lists them") from exc
        if meta.get("modality") != "image":
            raise ConfigError(
                f"--encoder {name}: a {meta.get('modality')} encoder; features need an image "
                "encoder (`histoxmodal models` lists them)"
            )
        if meta.get("needs_weights") and weights is None and not random_weights:
            raise ConfigError(
                f"--encoder {name} is a pretrained foundation model: without its weights it "
                f"would run with random ones and its features mean nothing. Pass --weights PATH "
                f"(a local copy of {meta.get('weights')}), or --random-weights to run it "
                "untrained on purpose (tests, speed benchmarks)"
            )
    if weights is not None and random_weights:
        raise ConfigError("--weights and --random-weights exclude each other; give one")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = create_encoder(name, weights=weights, mode="frozen")
    pre = tower.preprocess
    ident = {
        "encoder": name,
        "architecture": tower.arch.timm_name,
        "weights_sha256": tower.weights_sha256,
        "weights": str(Path(weights).expanduser().resolve()) if weights is not None else "random",
        "seed": None if weights is not None else seed,
        "run": None,
        "projection": False,
        "input_size": pre.input_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "dim": int(tower.embed_dim),
    }
    return Extractor(ImageFeatures(tower), ident, int(pre.input_size), float(pre.mpp))


def _run_extractor(run_dir: str | Path, projection: bool) -> Extractor:
    from histoxmodal.data.store import file_sha256
    from histoxmodal.training.embedding import ImageFeatures
    from histoxmodal.workflows.run import Run

    run = Run.load(run_dir)
    n = int(getattr(getattr(run.config, "model", None), "ensemble", 1))
    if n > 1:
        raise ConfigError(
            f"--run {run.path}: an ensemble of {n} models (model.ensemble); tile features read "
            f"one image tower: pass one member, e.g. --run {run.path / keys.RUN_MEMBERS_DIR / '0'}"
        )
    if not run.run_kind.image_to_expression or not hasattr(run.module, "image"):
        raise ConfigError(
            f"--run {run.path}: a {run.kind} run; features need a spatial run's image tower"
        )
    module = run.module
    tower = module.image
    head = module.image_head if projection else None
    dim = int(run.config.model.embed_dim) if projection else int(tower.embed_dim)
    pre = tower.preprocess
    if run.patch:
        tile_px = int(run.patch["patch_px"])
        target_mpp = float(run.patch["patch_um"]) / tile_px
    else:
        tile_px, target_mpp = int(pre.input_size), float(pre.mpp)
    ident = {
        "encoder": f"run:{tower.name}",
        "architecture": tower.arch.timm_name,
        "weights_sha256": file_sha256(run.path / keys.RUN_WEIGHTS_FILE),
        "weights": str((run.path / keys.RUN_WEIGHTS_FILE).resolve()),
        "seed": None,
        "run": str(run.path.resolve()),
        "projection": bool(projection),
        "input_size": pre.input_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "dim": dim,
    }
    ex = Extractor(ImageFeatures(tower, head=head, out_dim=dim), ident, tile_px, target_mpp)
    stain = run.stain_normalizer()  # the run trained on normalised patches: so are these
    return ex.with_stain(stain) if stain is not None else ex


def list_models(pattern: str = "*", *, include_tests: bool = False) -> list[dict[str, Any]]:
    """The registered image encoders ``features`` can run (``histoxmodal models``).

    Parameters
    ----------
    pattern
        Shell pattern on the name, e.g. ``"uni*"``.
    include_tests
        Also list the tiny ``test_*`` towers (random weights, for tests and examples).

    Returns
    -------
    list[dict]
        One per encoder: ``name``, ``architecture``, ``dim`` (output size), ``mpp`` (µm/px it
        expects), ``input_size`` (px), ``weights`` (where to get them), ``licence``,
        ``summary``.
    """
    from histoxmodal.encoders import describe_encoder, list_encoders

    rows = []
    for name in list_encoders(pattern):
        meta = describe_encoder(name)
        if meta.get("modality") != "image" or (name.startswith("test_") and not include_tests):
            continue
        rows.append(
            {
                "name": name,
                "architecture": meta.get("arch", ""),
                "dim": meta.get("dim"),
                "mpp": meta.get("mpp"),
                "input_size": meta.get("input_size"),
                "weights": meta.get("weights", ""),
                "licence": meta.get("licence", ""),
                "summary": meta.get("summary", ""),
            }
        )
    return rows


def list_gene_models(pattern: str = "*", *, include_tests: bool = False) -> list[dict[str, Any]]:
    """The registered gene towers (``histoxmodal models``): ``name``, ``architecture``,
    ``input`` (what they read, with the normalization), ``dim`` (output size), ``weights``
    (where they come from), ``licence``, ``summary``."""
    from histoxmodal.encoders import describe_encoder, list_encoders

    rows = []
    for name in list_encoders(pattern):
        meta = describe_encoder(name)
        if meta.get("modality") != "gene" or (name.startswith("test_") and not include_tests):
            continue
        rows.append(
            {
                "name": name,
                "architecture": meta.get("arch", ""),
                "input": meta.get("input", meta.get("normalization", "")),
                "normalization": meta.get("normalization", ""),
                "dim": meta.get("dim"),
                "weights": meta.get("weights", ""),
                "licence": meta.get("licence", ""),
                "summary": meta.get("summary", ""),
            }
        )
    return rows
