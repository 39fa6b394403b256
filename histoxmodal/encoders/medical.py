"""Towers for the medical modalities: chest radiographs, 12-lead ECGs and report text.

- Radiology: MONAI's DenseNet-121 (the CheXNet architecture) or a timm backbone, one input
  channel, intensities in [0, 1] (``histoxmodal.io.radiology.radiology_to_unit``).
- ECG: MONAI's ResNet with ``spatial_dims=1`` over ``(leads, time)``, the 1-D ResNet-18 that
  Symile's ECG tower uses; missing leads arrive as zero rows with their mask.
- Reports: a bag of hashed word n-grams (unigrams and bigrams) through an ``EmbeddingBag``, or a
  small transformer over hashed word tokens. Both are trained from scratch with a tokeniser
  written here (lower-cased words, hashed into a fixed vocabulary), so nothing is downloaded.

Each registers a full-size entry and a tiny ``test_*`` variant; each states its input.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import nn

from histoxmodal import keys
from histoxmodal.encoders.registry import ENCODERS
from histoxmodal.errors import ConfigError


class BatchInputs:
    """What a tower consumes from a training batch: ``inputs`` names the batch keys
    (:mod:`histoxmodal.keys`) in the order of ``forward``'s arguments, so a training module feeds
    any tower with ``tower.forward_batch(batch, device)`` and a new modality needs no special
    case. Towers whose raw input needs preparing (tokenizing text) override
    :meth:`forward_batch`."""

    inputs: tuple[str, ...] = ()

    def forward_batch(self, batch, device) -> torch.Tensor:
        """``(B, out_dim)`` features of the batch's :attr:`inputs`."""
        return self(*(batch[k].to(device) for k in self.inputs))


class RadiologyEncoder(BatchInputs, nn.Module):
    """A 2-D image tower over single-channel radiographs ``(B, 1, H, W)`` in [0, 1].

    Parameters
    ----------
    arch
        ``"densenet121"`` (MONAI), ``"densenet"`` (MONAI DenseNet with ``init_features``,
        ``growth_rate``, ``block_config``), or ``"timm:<name>"`` (any timm model, one channel).
    out_dim
        Embedding size.
    input_size
        Side the images are resized to.
    """

    inputs = (keys.BATCH_CXR,)

    def __init__(
        self,
        arch: str = "densenet121",
        *,
        out_dim: int = 512,
        input_size: int = 224,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
    ) -> None:
        super().__init__()
        self.arch, self.embed_dim, self.input_size = arch, out_dim, input_size
        if arch == "densenet121":
            from monai.networks.nets import DenseNet121

            self.net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=out_dim)
        elif arch == "densenet":
            from monai.networks.nets import DenseNet

            self.net = DenseNet(
                spatial_dims=2,
                in_channels=1,
                out_channels=out_dim,
                init_features=init_features,
                growth_rate=growth_rate,
                block_config=tuple(block_config),
                bn_size=2,
            )
        elif arch.startswith("timm:"):
            import timm

            self.net = timm.create_model(
                arch[5:], pretrained=False, in_chans=1, num_classes=out_dim
            )
        else:
            raise ConfigError(f"arch={arch!r}: densenet121, densenet or timm:<name>")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` intensities in [0, 1] -> ``(B, out_dim)``."""
        x = image.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        return self.net((x - 0.5) / 0.25)


class ECGEncoder(BatchInputs, nn.Module):
    """A 1-D ResNet (MONAI ``ResNet``, ``spatial_dims=1``) over ``(B, leads, time)`` in mV.

    Parameters
    ----------
    n_leads
        Input leads (12 for the standard order of ``histoxmodal.io.ecg.STANDARD_LEADS``).
    layers, widths
        Residual blocks per stage and stage widths (``(2, 2, 2, 2)``, ``(64, 128, 256, 512)`` is
        ResNet-18).
    fs, length_s
        The sampling rate and record length it expects (records are resampled to them when the
        cohort is built).
    """

    inputs = (keys.BATCH_ECG, keys.BATCH_ECG_LEAD_MASK)

    def __init__(
        self,
        *,
        n_leads: int = 12,
        out_dim: int = 256,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        fs: float = 100.0,
        length_s: float = 10.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        self.n_leads, self.embed_dim, self.fs, self.length_s = n_leads, out_dim, fs, length_s
        self.net = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=1,
            n_input_channels=n_leads,
            conv1_t_size=15,
            conv1_t_stride=2,
            num_classes=out_dim,
        )

    def forward(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, n_leads, T)`` -> ``(B, out_dim)``; masked leads are zeroed."""
        if signal.shape[1] != self.n_leads:
            raise ConfigError(f"ECG tower expects {self.n_leads} leads, got {signal.shape[1]}")
        x = signal.float()
        if lead_mask is not None:
            x = x * lead_mask[:, :, None].to(x.dtype)
        return self.net(x)


_WORD = re.compile(r"[a-z0-9]+")


def _hash(token: str, buckets: int) -> int:
    # crc32 is stable across processes and Python versions (unlike hash())
    return 1 + zlib.crc32(token.encode()) % (buckets - 1)  # 0 is padding


class ReportEncoder(BatchInputs, nn.Module):
    """A text tower over reports, trained from scratch.

    ``kind="bow"``: mean of hashed word-unigram and -bigram embeddings (``EmbeddingBag``), then
    an MLP. ``kind="transformer"``: hashed word tokens with positions through a small
    transformer encoder, mean-pooled. :meth:`tokenize` turns strings into the model's input.
    """

    inputs = (keys.BATCH_REPORT,)

    def __init__(
        self,
        kind: str = "bow",
        *,
        buckets: int = 1 << 18,
        dim: int = 256,
        out_dim: int = 256,
        ngrams: int = 2,
        max_tokens: int = 256,
        depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if kind not in ("bow", "transformer"):
            raise ConfigError(f"kind={kind!r}: bow or transformer")
        self.kind, self.buckets, self.ngrams, self.max_tokens = kind, buckets, ngrams, max_tokens
        self.embed_dim = out_dim
        if kind == "bow":
            self.bag = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
            self.out = nn.Linear(dim, out_dim)
        else:
            self.tok = nn.Embedding(buckets, dim, padding_idx=0)
            self.pos = nn.Embedding(max_tokens, dim)
            layer = nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, 0.1, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> ``(B, L)`` int64 hashed token ids, 0-padded (n-grams for ``bow``)."""
        rows = []
        for text in texts:
            words = _WORD.findall((text or "").lower())
            toks = list(words)
            if self.kind == "bow":
                for n in range(2, self.ngrams + 1):
                    toks += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
            toks = toks[: self.max_tokens if self.kind == "transformer" else 4 * self.max_tokens]
            rows.append([_hash(t, self.buckets) for t in toks] or [0])
        width = max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    def forward_batch(self, batch, device) -> torch.Tensor:
        """Tokenize the batch's report strings, then :meth:`forward`."""
        return self(self.tokenize(batch[self.inputs[0]]).to(device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids from :meth:`tokenize` -> ``(B, out_dim)``."""
        pad = tokens == 0
        if self.kind == "bow":
            # EmbeddingBag's padding_idx keeps padding out of the mean
            return self.out(self.head(self.bag(tokens)))
        n = min(tokens.shape[1], self.max_tokens)
        tokens, pad = tokens[:, :n], pad[:, :n]
        h = self.tok(tokens) + self.pos(torch.arange(n, device=tokens.device))[None]
        h = self.encoder(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.out((h * keep).sum(1) / keep.sum(1).clamp(min=1))


def _reg(name: str, cls: type, modality: str, defaults: dict, summary: str) -> None:
    def factory(**overrides) -> nn.Module:
        return cls(**{**defaults, **overrides})

    factory.__name__ = name
    factory.__doc__ = summary
    ENCODERS.register(name, modality=modality, arch=cls.__name__)(factory)


_reg("cxr_densenet121", RadiologyEncoder, "radiology", {}, "MONAI DenseNet-121, 1 channel, 224 px.")
_reg(
    "cxr_resnet50",
    RadiologyEncoder,
    "radiology",
    {"arch": "timm:resnet50"},
    "timm ResNet-50, 1 channel, 224 px.",
)
_reg(
    "test_cxr",
    RadiologyEncoder,
    "radiology",
    {
        "arch": "densenet",
        "out_dim": 16,
        "input_size": 32,
        "init_features": 8,
        "growth_rate": 8,
        "block_config": (2, 2),
    },
    "Tiny MONAI DenseNet (tests).",
)
_reg("ecg_resnet18_1d", ECGEncoder, "ecg", {}, "MONAI 1-D ResNet-18 over 12 leads, 100 Hz, 10 s.")
_reg(
    "test_ecg",
    ECGEncoder,
    "ecg",
    {"out_dim": 16, "layers": (1, 1, 1, 1), "widths": (8, 16, 16, 16), "length_s": 2.5},
    "Tiny 1-D ResNet (tests).",
)
_reg("report_bow", ReportEncoder, "text", {}, "Hashed word uni+bigram bag, 256-d.")
_reg(
    "report_transformer",
    ReportEncoder,
    "text",
    {"kind": "transformer"},
    "Transformer over hashed words (2 layers, 256-d).",
)
_reg(
    "test_report",
    ReportEncoder,
    "text",
    {"buckets": 4096, "dim": 16, "out_dim": 16},
    "Tiny hashed-n-gram bag (tests).",
)
_reg(
    "test_report_transformer",
    ReportEncoder,
    "text",
    {"kind": "transformer", "buckets": 4096, "dim": 16, "out_dim": 16, "depth": 1, "heads": 2},
    "Tiny report transformer (tests).",
)
