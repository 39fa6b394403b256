"""Nicheformer (Schaar et al. 2024, github.com/theislab/nicheformer, BSD-3-Clause) as a gene
tower: raw counts in, the mean of a transformer layer's gene-token outputs out.

Written here from the published description and checkpoint layout, not from its code; only the
state-dict names and the arithmetic match, so a published checkpoint loads strictly.

Tokens. Counts over the model's genes (the dataset's mapped by name, missing ones zero) are
scaled to 10,000 per cell, divided gene-wise by the technology's mean expression (zeros and
NaNs in that vector count as 1), and the expressed genes ranked by that value, largest first
(ties keep the model's gene order). Gene ``j`` of the model's list is token ``j + 30``; 0-29 are
reserved: 1 pads, 3-4 name the modality, 5-6 the species, 7-18 the technology. The sequence is
``[species, technology, modality]`` (those the checkpoint was trained with), then the ranked
genes, cut or padded to the model's ``context_length`` (1,500 published).

Model. ``embeddings`` (``n_tokens + 5`` rows, row 1 padding) plus ``positional_embedding``
(learned, one row per position; or a fixed sinusoid when ``learnable_pe`` is false), then
``encoder.layers.{i}``: post-norm ``nn.TransformerEncoderLayer`` blocks (ReLU, LayerNorm eps
1e-12, batch first) with padding masked as keys. The embedding is the output of layer ``layer``
(default the last) averaged over every position after the context tokens, padded ones
included, as the published ``get_embeddings`` reads it; ``exclude_padding=True`` averages the
gene tokens only.

Weights folder (``model.gene_weights=DIR``; nothing is downloaded)::

    DIR/
      nicheformer.ckpt        the Lightning checkpoint (any single *.ckpt), read as data
                              only (torch.load(weights_only=True), else the restricted
                              unpickler of scvi_models, for NumPy scalars in the trainer
                              state): its state_dict and hyper_parameters; or
                              model.safetensors + config.json (the
                              hyper-parameters: dim_model, nheads, dim_feedforward, nlayers,
                              context_length, n_tokens, learnable_pe, specie, assay, modality)
      genes.txt               the model's genes, one per line, in token order
      technology_mean.npy     the technology's mean expression per gene, same order
                              (technology_mean=FILE names another one, e.g. xenium_mean.npy)

``weights=`` may also name the ``.ckpt`` / ``.safetensors`` file itself; the other files are
then read beside it. The published pretraining heads (``classifier_head``, ``pooler_head``,
``cls_head``) and Lightning's duplicate template layer (``encoder_layer``) are not used; a
fine-tuned checkpoint's ``backbone.`` prefix is stripped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoxmodal import keys
from histoxmodal.encoders.genemap import map_genes, to_model_genes
from histoxmodal.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

#: token ids below this are reserved; gene ``j`` of the model's list is ``j + AUX_TOKENS``
AUX_TOKENS = 30
PAD_TOKEN = 1
#: the context tokens of the published vocabulary (names compared lower-case)
MODALITY_TOKENS = {"dissociated": 3, "spatial": 4}
SPECIES_TOKENS = {"human": 5, "homo sapiens": 5, "mouse": 6, "mus musculus": 6}
ASSAY_TOKENS = {
    "merfish": 7,
    "cosmx": 8,
    "nanostring digital spatial profiling": 8,
    "xenium": 9,
    "10x 5' v2": 10,
    "10x 3' v3": 11,
    "10x 3' v2": 12,
    "10x 5' v1": 13,
    "10x 3' v1": 14,
    "10x 3' transcription profiling": 15,
    "10x transcription profiling": 15,
    "10x 5' transcription profiling": 16,
    "cite-seq": 17,
    "smart-seq v4": 18,
}
#: the published pretraining configuration (used where a checkpoint does not say)
PUBLISHED = {
    "dim_model": 512,
    "nheads": 16,
    "dim_feedforward": 1024,
    "nlayers": 12,
    "context_length": 1500,
    "learnable_pe": True,
    "specie": True,
    "assay": True,
    "modality": True,
}
GENES_FILE = keys.RUN_GENES_FILE
MEAN_FILE = "technology_mean.npy"
CONFIG_FILE = "config.json"
#: checkpoint keys of the published model that the tower does not use
UNUSED_PREFIXES = ("encoder_layer.", "classifier_head.", "pooler_head.", "cls_head.")
#: prefixes wrappers put before the backbone's keys (the fine-tuning model's ``backbone``)
WRAPPER_PREFIXES = ("backbone.",)


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """Fixed positional codes: even columns ``sin(p / 10000^(i/dim))``, odd ones ``cos``."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : dim // 2]
    return table


class NicheformerNet(nn.Module):
    """The backbone, with the published checkpoint's module names."""

    def __init__(
        self,
        *,
        n_tokens: int,
        dim_model: int,
        nheads: int,
        dim_feedforward: int,
        nlayers: int,
        context_length: int,
        learnable_pe: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.embeddings = nn.Embedding(n_tokens + 5, dim_model, padding_idx=PAD_TOKEN)
        if learnable_pe:
            self.positional_embedding = nn.Embedding(context_length, dim_model)
        else:
            self.positional_embedding = None
            self.register_buffer(
                "sinusoid", sinusoid_table(context_length, dim_model), persistent=False
            )
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            d_model=dim_model,
            nhead=nheads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
            layer_norm_eps=1e-12,
        )
        self.encoder = nn.TransformerEncoder(block, nlayers, enable_nested_tensor=False)

    def forward(
        self, tokens: torch.Tensor, *, layer: int = -1, skip: int = 0, exclude_padding=False
    ) -> torch.Tensor:
        """``(B, L)`` token ids -> ``(B, dim_model)``: layer ``layer``'s output averaged over
        the positions after the first ``skip``."""
        padding = tokens == PAD_TOKEN
        h = self.embeddings(tokens)
        if self.positional_embedding is not None:
            pos = torch.arange(tokens.shape[1], device=tokens.device)
            h = self.dropout(h + self.positional_embedding(pos))
        else:
            h = h + self.sinusoid[: tokens.shape[1]]
        n = len(self.encoder.layers)
        last = layer % n
        for block in self.encoder.layers[: last + 1]:
            h = block(h, src_key_padding_mask=padding, is_causal=False)
        h = h[:, skip:]
        if not exclude_padding:
            return h.mean(dim=1)
        keep = (~padding[:, skip:]).to(h.dtype).unsqueeze(-1)
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def _context_token(value: str | int, table: dict[str, int], what: str) -> int:
    if isinstance(value, int):
        return value
    key = str(value).strip().lower()
    if key not in table:
        raise ConfigError(
            f"unknown Nicheformer {what} {value!r}; known: {', '.join(sorted(table))} "
            f"(or give the token id as an integer)"
        )
    return table[key]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("model.safetensors",):
        if (path / name).is_file():
            return path / name
    ckpts = sorted(path.glob("*.ckpt"))
    if len(ckpts) == 1:
        return ckpts[0]
    found = sorted(p.name for p in path.iterdir())[:8]
    raise ConfigError(
        f"{path}: expected one Nicheformer checkpoint (*.ckpt, or model.safetensors with "
        f"config.json), found {found or 'nothing'}"
        + (" (several .ckpt: name the file itself)" if ckpts else "")
    )


def _load_lightning(f: Path) -> Any:
    """A Lightning checkpoint, read as data only: ``torch.load(weights_only=True)``, else (a
    trainer state with NumPy scalars, such as a scheduler's last learning rate) through the
    package's restricted unpickler, which also resolves containers and NumPy data only."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, NumPy scalars, truncated files, ...
        first = exc
    from histoxmodal.encoders.scvi_models import RefusedGlobal, restricted_pickle

    try:
        return torch.load(
            f, map_location="cpu", weights_only=False, pickle_module=restricted_pickle
        )
    except RefusedGlobal as exc:
        why = str(exc)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
    raise WeightsError(
        f"{f}: cannot be read as a weights-only checkpoint ({type(first).__name__}: {first}; "
        f"{why}); re-save it as {{'state_dict': ..., 'hyper_parameters': dict(...)}} or as "
        f"model.safetensors with {CONFIG_FILE}"
    ) from first


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The backbone's state dict, the hyper-parameters and the file they came from.

    Raises
    ------
    ConfigError
        The path does not exist or holds no checkpoint.
    WeightsError
        The file cannot be read as weights only, or holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(
            f"Nicheformer weights not found: {p} (weights are read from local files only: "
            f"a folder with the .ckpt, {GENES_FILE} and {MEAN_FILE}, or the .ckpt itself)"
        )
    f = _weights_file(p)
    hparams: dict[str, Any] = {}
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(f))
        except Exception as exc:
            raise WeightsError(f"{f}: not a safetensors file ({exc})") from exc
        cfg = f.parent / CONFIG_FILE
        if cfg.is_file():
            hparams = dict(json.loads(cfg.read_text(encoding="utf-8")))
    else:
        obj = _load_lightning(f)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            hparams = dict(obj.get("hyper_parameters") or {})
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{f}: holds no state dict (a mapping of names to tensors)")
        state = obj
    out = {}
    for k, v in state.items():
        for prefix in WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
                break
        if not k.startswith(UNUSED_PREFIXES):
            out[k] = v
    return out, hparams, f


def _hparams(hp: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The architecture: the checkpoint's hyper-parameters, else the shapes, else published."""
    out = {k: hp.get(k, v) for k, v in PUBLISHED.items()}
    emb = state.get("embeddings.weight")
    if emb is not None:
        out["n_tokens"] = int(hp.get("n_tokens", emb.shape[0] - 5))
        out["dim_model"] = int(hp.get("dim_model", emb.shape[1]))
    elif "n_tokens" in hp:
        out["n_tokens"] = int(hp["n_tokens"])
    pe = state.get("positional_embedding.weight")
    if "learnable_pe" not in hp:
        out["learnable_pe"] = pe is not None
    if pe is not None and "context_length" not in hp:
        out["context_length"] = int(pe.shape[0])
    if "nlayers" not in hp:
        n = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
        if n:
            out["nlayers"] = max(n) + 1
    lin = state.get("encoder.layers.0.linear1.weight")
    if lin is not None and "dim_feedforward" not in hp:
        out["dim_feedforward"] = int(lin.shape[0])
    return out


class NicheformerGeneTower(nn.Module):
    """Nicheformer as a gene tower (``gene_nicheformer``).

    Parameters
    ----------
    weights
        A local folder or checkpoint (see the module docstring); required unless
        ``random_weights``.
    genes, n_genes
        The dataset's gene names (mapped onto the model's by name) or, without names, its
        column count (then the data must be in the model's gene order).
    freeze
        Keep the pretrained backbone fixed (and in eval mode); otherwise it is fine-tuned.
    modality, species, assay
        The context tokens (names of the published vocabulary, or token ids).
    layer
        Which transformer layer is read out (negative: from the last).
    exclude_padding
        Average the gene tokens only (the published readout averages padding too).
    technology_mean
        The mean-expression file, a name in the weights folder or a path.
    random_weights
        Build the architecture with random weights on purpose (tests, speed runs): the
        dataset's genes become the vocabulary and the technology mean is 1.
    """

    normalization = "counts"
    inputs = (keys.BATCH_EXPRESSION, keys.BATCH_GENE_MASK)

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        genes: Sequence[str] | None = None,
        n_genes: int | None = None,
        freeze: bool = True,
        modality: str | int = "spatial",
        species: str | int = "human",
        assay: str | int = "xenium",
        layer: int = -1,
        exclude_padding: bool = False,
        technology_mean: str | Path | None = None,
        random_weights: bool = False,
        n_batches: int = 0,  # accepted for the config's batch-conditioned flag; not used
        **architecture: Any,
    ) -> None:
        super().__init__()
        if weights is None and not random_weights:
            raise ConfigError(
                "gene_nicheformer is a pretrained model and no weights were given: set "
                "model.gene_weights=DIR (a folder with the Nicheformer .ckpt, genes.txt and "
                "technology_mean.npy; nothing is downloaded), or pass random_weights=True to "
                "run it untrained on purpose"
            )
        if weights is not None and random_weights:
            raise ConfigError(
                "gene_nicheformer: weights and random_weights=True exclude each other"
            )
        unknown = set(architecture) - set(PUBLISHED) - {"n_tokens", "dropout"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}")
        if weights is not None:
            if architecture:
                raise ConfigError(
                    f"gene_nicheformer: the architecture comes from the checkpoint; drop "
                    f"{sorted(architecture)}"
                )
            state, hp, wfile = read_checkpoint(weights)
            folder = wfile.parent
            hp = _hparams(hp, state)
            model_genes = self._read_genes(folder, hp)
            mean = self._read_mean(folder, technology_mean, len(model_genes))
            self.weights_sha256 = _sha256(wfile)
            self.saved = {"file": str(wfile.resolve()), "sha256": self.weights_sha256}
        else:
            if genes is None:
                raise ConfigError("gene_nicheformer with random weights needs genes=...")
            model_genes = [str(g) for g in genes]
            hp = {**PUBLISHED, **architecture}
            hp.setdefault("n_tokens", len(model_genes) + AUX_TOKENS)
            mean = np.ones(len(model_genes), np.float32)
            state, wfile = None, None
            self.weights_sha256, self.saved = None, {"file": None}
        self.hparams = hp
        self.net = NicheformerNet(
            n_tokens=int(hp["n_tokens"]),
            dim_model=int(hp["dim_model"]),
            nheads=int(hp["nheads"]),
            dim_feedforward=int(hp["dim_feedforward"]),
            nlayers=int(hp["nlayers"]),
            context_length=int(hp["context_length"]),
            learnable_pe=bool(hp["learnable_pe"]),
            dropout=float(hp.get("dropout", 0.0) or 0.0),
        )
        if state is not None:
            self._load(state, wfile)
        if len(model_genes) + AUX_TOKENS > int(hp["n_tokens"]):
            raise WeightsError(
                f"{wfile}: {len(model_genes)} genes in {GENES_FILE}, but the model has "
                f"{int(hp['n_tokens']) - AUX_TOKENS} gene tokens; is it its gene list?"
            )
        self.model_genes = model_genes
        self.genes = list(genes) if genes is not None else list(model_genes)
        gene_map = map_genes(
            model_genes, genes, where="gene_nicheformer", n_genes=n_genes, logger=log
        )
        self.register_buffer("source", gene_map.source, persistent=False)
        self.register_buffer("present", gene_map.present, persistent=False)
        self.missing_genes = gene_map.n_missing
        self.saved["missing_genes"] = self.missing_genes
        mean = np.nan_to_num(np.asarray(mean, np.float64))
        mean[mean == 0] = 1.0
        self.register_buffer("technology_mean", torch.tensor(mean, dtype=torch.float32))
        context = []
        if hp["specie"]:
            context.append(_context_token(species, SPECIES_TOKENS, "species"))
        if hp["assay"]:
            context.append(_context_token(assay, ASSAY_TOKENS, "technology"))
        if hp["modality"]:
            context.append(_context_token(modality, MODALITY_TOKENS, "modality"))
        self.register_buffer("context", torch.tensor(context, dtype=torch.long), persistent=False)
        if not -len(self.net.encoder.layers) <= layer < len(self.net.encoder.layers):
            raise ConfigError(
                f"gene_nicheformer: layer={layer}, but the model has "
                f"{len(self.net.encoder.layers)} layers"
            )
        self.layer, self.exclude_padding = layer, exclude_padding
        self.embed_dim = int(hp["dim_model"])
        self.freeze = freeze
        for p in self.net.parameters():
            p.requires_grad = not freeze

    @staticmethod
    def _read_genes(folder: Path, hp: dict[str, Any]) -> list[str]:
        path = folder / GENES_FILE
        if not path.is_file():
            raise ConfigError(
                f"{folder}: no {GENES_FILE} (the model's genes, one per line, in token order: "
                f"gene j is token j + {AUX_TOKENS})"
            )
        return path.read_text(encoding="utf-8").split()

    @staticmethod
    def _read_mean(folder: Path, name: str | Path | None, n: int) -> np.ndarray:
        path = Path(name).expanduser() if name is not None else folder / MEAN_FILE
        if not path.is_absolute() and not path.exists():
            path = folder / path
        if not path.is_file():
            raise ConfigError(
                f"{path}: no technology mean (a .npy of {n} per-gene means, the model's gene "
                f"order; technology_mean=FILE names another)"
            )
        mean = np.load(path, allow_pickle=False).reshape(-1)
        if len(mean) != n:
            raise ConfigError(f"{path}: {len(mean)} values, but {GENES_FILE} lists {n} genes")
        return mean

    def _load(self, state: dict[str, torch.Tensor], path: Path) -> None:
        from histoxmodal.encoders.weights import load_strict

        load_strict(
            self.net, state, path, what="the Nicheformer architecture",
            hint=f"Is it a Nicheformer checkpoint (with its hyper_parameters, or {CONFIG_FILE})?",
        )  # fmt: skip

    def train(self, mode: bool = True) -> NicheformerGeneTower:
        super().train(mode)
        if self.freeze:
            self.net.eval()  # a frozen backbone keeps its dropout off
        return self

    def tokens(self, counts: torch.Tensor) -> torch.Tensor:
        """``(B, model genes)`` counts -> ``(B, context_length)`` token ids."""
        x = torch.nan_to_num(counts.float())
        total = x.sum(dim=1, keepdim=True)
        x = x * (10000.0 / (total + (total == 0).to(x.dtype))) / self.technology_mean
        n_genes = self.net.context_length - len(self.context)
        values, order = torch.sort(x, dim=1, descending=True, stable=True)
        values, order = values[:, :n_genes], order[:, :n_genes]
        ranked = torch.where(values != 0, order + AUX_TOKENS, torch.full_like(order, PAD_TOKEN))
        if ranked.shape[1] < n_genes:  # fewer model genes than the context holds
            pad = ranked.new_full((len(x), n_genes - ranked.shape[1]), PAD_TOKEN)
            ranked = torch.cat([ranked, pad], dim=1)
        return torch.cat([self.context.expand(len(x), -1), ranked], dim=1)

    def forward(
        self,
        expression: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, n_genes)`` raw counts -> ``(B, dim_model)``."""
        counts = to_model_genes(expression.float(), self.source, self.present, gene_mask)
        return self.net(
            self.tokens(counts),
            layer=self.layer,
            skip=len(self.context),
            exclude_padding=self.exclude_padding,
        )
