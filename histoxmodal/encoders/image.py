"""Image towers: any timm architecture, and the public pathology foundation models' architectures
with their preprocessing, loaded from local weights only.

Each entry states its input size, mean/std and the µm per pixel it was trained at
(:class:`Preprocess`), so tiling and transforms read them from the encoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histoxmodal import keys
from histoxmodal.encoders.registry import ENCODERS
from histoxmodal.encoders.weights import StateDict, load_weights
from histoxmodal.errors import ConfigError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclass(frozen=True)
class Preprocess:
    """What an image tower expects: square input size, mean/std on [0, 1] RGB, µm per pixel."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]
    mpp: float = 0.5

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
            raise ConfigError(
                f"input_size={size!r}: the image tower's square input must be an integer number "
                "of pixels in [8, 4096] (e.g. 224)"
            )
        if not (isinstance(self.mpp, (int, float)) and 0 < self.mpp < 100):
            raise ConfigError(f"mpp={self.mpp!r}: µm per pixel must be a number in (0, 100)")


@dataclass(frozen=True)
class ImageArch:
    """A timm architecture with its arguments, pooling, preprocessing and checkpoint remapping."""

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess = Preprocess()
    pool: str = "model"  # "model": timm's own pooling; "cls+mean": Virchow's concatenation
    remap: Callable[[StateDict], StateDict] | None = None
    source: str = ""


def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


# --------------------------------------------------------------------------- key remapping
def _qkv(state: StateDict, prefix: str, out: StateDict, dst: str) -> None:
    for kind in ("weight", "bias"):
        parts = [state.get(f"{prefix}.{n}.{kind}") for n in ("query", "key", "value")]
        if all(p is not None for p in parts):
            out[f"{dst}.qkv.{kind}"] = torch.cat(parts, dim=0)


def hf_vit_to_timm(state: StateDict) -> StateDict:
    """Hugging Face ``ViTModel`` names (Phikon) -> timm ``VisionTransformer`` names."""
    return _hf_to_timm(
        state,
        {
            "layernorm_before": "norm1",
            "layernorm_after": "norm2",
            "attention.output.dense": "attn.proj",
            "intermediate.dense": "mlp.fc1",
            "output.dense": "mlp.fc2",
        },
        prefix="vit.",
    )


def hf_dinov2_to_timm(state: StateDict) -> StateDict:
    """Hugging Face ``Dinov2Model`` names (Phikon-v2) -> timm ``VisionTransformer`` names."""
    return _hf_to_timm(
        state,
        {
            "norm1": "norm1",
            "norm2": "norm2",
            "attention.output.dense": "attn.proj",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
            "layer_scale1.lambda1": "ls1.gamma",
            "layer_scale2.lambda1": "ls2.gamma",
        },
        prefix="dinov2.",
    )


def _hf_to_timm(state: StateDict, names: dict[str, str], prefix: str) -> StateDict:
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    out: StateDict = {}
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    for k, v in state.items():
        if k in top:
            out[top[k]] = v
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", k)
        if not m:
            continue  # pooler, mask token: not part of the trunk
        i, name, kind = m.groups()
        if name.startswith("attention.attention."):
            continue  # q, k, v fused below
        key = f"{name}.{kind}" if kind == "lambda1" else name
        if key in names:
            dst = names[key]
            out[f"blocks.{i}.{dst}" if kind == "lambda1" else f"blocks.{i}.{dst}.{kind}"] = v
    n_layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    for i in sorted(n_layers):
        _qkv(state, f"encoder.layer.{i}.attention.attention", out, f"blocks.{i}.attn")
    return out


def conch_trunk(state: StateDict) -> StateDict:
    """CONCH's vision trunk: keys under ``visual.trunk.`` (the rest is text and poolers)."""
    p = "visual.trunk."
    if not any(k.startswith(p) for k in state):
        return state
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


class ConvStem(nn.Module):
    """CTransPath's convolutional stem (Wang et al. 2022) behind timm's patch-embed interface:
    two 3x3 stride-2 convolutions with batch norm and ReLU, then a 1x1 projection (patch 4)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer=None,
        output_fmt: str = "NHWC",
        strict_img_size: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if patch_size != 4:
            raise ConfigError(f"ConvStem downsamples by 4; patch_size={patch_size}")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size = size, (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        layers: list[nn.Module] = []
        cin, cout = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin, cout = cout, cout * 2
        layers.append(nn.Conv2d(cin, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        x = x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x.flatten(2).transpose(1, 2)
        return self.norm(x)


def old_swin_to_timm(state: StateDict) -> StateDict:
    """Swin checkpoints from timm < 0.9 (CTransPath's ``{"model": ...}``) -> current timm:
    downsampling moves from the end of a stage to the start of the next, non-persistent buffers
    and the classifier are dropped."""
    old = "layers.0.downsample.reduction.weight" in state
    out: StateDict = {}
    for k, v in state.items():
        if "relative_position_index" in k or "attn_mask" in k or k.startswith("head."):
            continue
        if old:
            k = re.sub(
                r"layers\.(\d+)\.downsample",
                lambda m: f"layers.{int(m.group(1)) + 1}.downsample",
                k,
            )
        out[k] = v
    return out


# --------------------------------------------------------------------------- the tower
class ImageEncoder(nn.Module):
    """A timm trunk returning one feature vector per image.

    Attributes
    ----------
    embed_dim
        Size of the output features.
    preprocess
        Input size, mean/std and µm per pixel the weights expect.
    weights_sha256
        Checksum of the loaded checkpoint (``None`` for random initialisation).
    """

    inputs = (keys.BATCH_IMAGE,)

    def __init__(
        self,
        arch: ImageArch,
        *,
        weights: str | Path | None = None,
        mode: str = "finetune",
        name: str = "",
        lora_rank: int = 8,
        lora_targets: tuple[str, ...] = ("qkv", "proj"),
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(arch.kwargs)
        kwargs.setdefault("num_classes", 0)
        self.name = name or arch.timm_name
        self.trunk = timm.create_model(arch.timm_name, pretrained=False, **kwargs)
        self.arch = arch
        self.preprocess = arch.preprocess
        self.pool = arch.pool
        width = self.trunk.num_features
        self.embed_dim = 2 * width if arch.pool == "cls+mean" else width
        self.weights_sha256 = None
        if weights is not None:
            self.weights_sha256 = load_weights(self.trunk, weights, remap=arch.remap)
        self.lora_rank, self.lora_targets = lora_rank, tuple(lora_targets)
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        """``"frozen"`` (no gradients, eval mode), ``"finetune"`` (all weights train) or
        ``"lora"`` (low-rank adapters on ``lora_targets`` layers train, the rest is frozen;
        via peft)."""
        if mode not in ("frozen", "finetune", "lora"):
            raise ConfigError(f"mode={mode!r}: expected 'frozen', 'finetune' or 'lora'")
        self.mode = mode
        for p in self.trunk.parameters():
            p.requires_grad = mode == "finetune"
        if mode == "frozen":
            self.trunk.eval()
        if mode == "lora":
            self._add_lora()

    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as exc:
            raise ConfigError("mode='lora' needs peft: pip install peft") from exc
        names = {
            n.rsplit(".", 1)[-1]
            for n, m in self.trunk.named_modules()
            if isinstance(m, nn.Linear | nn.Conv2d)
        }
        targets = [t for t in self.lora_targets if t in names]
        if not targets:
            raise ConfigError(
                f"lora_targets={self.lora_targets} match no Linear/Conv2d layer of "
                f"{self.name}; layer names include {sorted(names)[:8]}"
            )
        cfg = LoraConfig(
            r=self.lora_rank,
            lora_alpha=2 * self.lora_rank,
            lora_dropout=0.0,
            target_modules=targets,
        )
        self.trunk = inject_adapter_in_model(cfg, self.trunk)
        for n, p in self.trunk.named_parameters():
            p.requires_grad = "lora_" in n

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if getattr(self, "mode", "finetune") == "frozen":
            self.trunk.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalized float -> ``(B, embed_dim)``."""
        if self.pool == "cls+mean":
            tokens = self.trunk.forward_features(images)
            start = 1 + getattr(self.trunk, "num_reg_tokens", 0)
            return torch.cat([tokens[:, 0], tokens[:, start:].mean(dim=1)], dim=-1)
        return self.trunk(images)


def _register(
    name: str, arch: ImageArch, summary: str, *, dim: int, licence: str = "", weights: str = ""
) -> None:
    """Register an image tower: ``dim`` is its output size, ``licence`` the weights' licence and
    ``weights`` where to get them (shown by ``histoxmodal models``)."""

    def factory(
        *,
        weights: str | Path | None = None,
        mode: str = "finetune",
        lora_rank: int = 8,
        lora_targets: tuple[str, ...] = ("qkv", "proj"),
        **overrides: Any,
    ) -> ImageEncoder:
        a = arch
        if overrides:
            a = ImageArch(
                arch.timm_name,
                {**arch.kwargs, **overrides},
                arch.preprocess,
                arch.pool,
                arch.remap,
                arch.source,
            )
        return ImageEncoder(
            a,
            weights=weights,
            mode=mode,
            name=name,
            lora_rank=lora_rank,
            lora_targets=lora_targets,
        )

    factory.__name__ = name
    factory.__doc__ = summary
    ENCODERS.register(
        name,
        modality="image",
        arch=arch.timm_name,
        source=arch.source,
        input_size=arch.preprocess.input_size,
        mpp=arch.preprocess.mpp,
        dim=dim,
        licence=licence,
        weights=weights or arch.source or "random initialisation (no published weights)",
        # a model whose value lies in its published weights: running it without them is a
        # mistake unless asked for explicitly (random_weights)
        needs_weights=bool(weights or arch.source) and not name.startswith("test_"),
    )(factory)


def _foundation_models() -> None:
    vit_ls = {"init_values": 1e-5, "dynamic_img_size": True}
    _register(
        "uni",
        ImageArch(
            "vit_large_patch16_224",
            {"img_size": 224, **vit_ls},
            source="MahmoodLab/UNI (pytorch_model.bin)",
        ),
        "UNI (ViT-L/16, 1024-d), Chen et al. 2024; 0.5 µm/px, ImageNet mean/std.",
        dim=1024,
        licence="CC-BY-NC-ND-4.0",
        weights="https://huggingface.co/MahmoodLab/UNI (gated; pytorch_model.bin)",
    )
    _register(
        "uni2_h",
        ImageArch(
            "vit_giant_patch14_224",
            {
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                "reg_tokens": 8,
                **vit_ls,
                **_swiglu(),
            },
            source="MahmoodLab/UNI2-h (pytorch_model.bin)",
        ),
        "UNI2-h (ViT-H/14 with SwiGLU and 8 register tokens, 1536-d).",
        dim=1536,
        licence="CC-BY-NC-ND-4.0",
        weights="https://huggingface.co/MahmoodLab/UNI2-h (gated; pytorch_model.bin)",
    )
    _register(
        "conch",
        ImageArch(
            "vit_base_patch16_224",
            {"img_size": 448, "global_pool": "token"},
            Preprocess(448, *OPENAI_CLIP, 0.5),
            remap=conch_trunk,
            source="MahmoodLab/CONCH (pytorch_model.bin; the visual.trunk.* keys)",
        ),
        "CONCH vision trunk (ViT-B/16 at 448 px, 768-d), Lu et al. 2024; CLIP mean/std.",
        dim=768,
        licence="CC-BY-NC-ND-4.0",
        weights="https://huggingface.co/MahmoodLab/CONCH (gated; pytorch_model.bin)",
    )
    _register(
        "virchow2",
        ImageArch(
            "vit_huge_patch14_224",
            {
                "img_size": 224,
                "mlp_ratio": 5.3375,
                "reg_tokens": 4,
                "global_pool": "",
                **vit_ls,
                **_swiglu(),
            },
            pool="cls+mean",
            source="paige-ai/Virchow2 (model.safetensors)",
        ),
        "Virchow2 (ViT-H/14, SwiGLU, 4 register tokens); class token + mean patch token, 2560-d.",
        dim=2560,
        licence="CC-BY-NC-ND-4.0",
        weights="https://huggingface.co/paige-ai/Virchow2 (gated; model.safetensors)",
    )
    _register(
        "h_optimus_0",
        ImageArch(
            "vit_giant_patch14_reg4_dinov2",
            {
                "img_size": 224,
                "init_values": 1e-5,
                "dynamic_img_size": False,
                "global_pool": "token",
            },
            Preprocess(224, *H_OPTIMUS, 0.5),
            source="bioptimus/H-optimus-0 (model.safetensors)",
        ),
        "H-optimus-0 (ViT-g/14 with 4 registers, 1536-d); its own mean/std.",
        dim=1536,
        licence="Apache-2.0",
        weights="https://huggingface.co/bioptimus/H-optimus-0 (gated; model.safetensors)",
    )
    _register(
        "gigapath",
        ImageArch(
            "vit_giant_patch14_dinov2",
            {
                "img_size": 224,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
            },
            source="prov-gigapath/prov-gigapath (pytorch_model.bin, tile encoder)",
        ),
        "Prov-GigaPath tile encoder (ViT-g/16, 1536-d), Xu et al. 2024.",
        dim=1536,
        licence="Apache-2.0",
        weights="https://huggingface.co/prov-gigapath/prov-gigapath (gated; pytorch_model.bin)",
    )
    _register(
        "phikon",
        ImageArch(
            "vit_base_patch16_224",
            {"img_size": 224},
            remap=hf_vit_to_timm,
            source="owkin/phikon (Hugging Face ViTModel; keys remapped)",
        ),
        "Phikon (ViT-B/16, iBOT on TCGA, 768-d); Hugging Face ViT keys remapped to timm.",
        dim=768,
        licence="Owkin non-commercial",
        weights="https://huggingface.co/owkin/phikon (model.safetensors)",
    )
    _register(
        "phikon_v2",
        ImageArch(
            "vit_large_patch16_224",
            {"img_size": 224, "init_values": 1e-5},
            remap=hf_dinov2_to_timm,
            source="owkin/phikon-v2 (Hugging Face Dinov2Model; keys remapped)",
        ),
        "Phikon-v2 (ViT-L/16, DINOv2, 1024-d); Hugging Face Dinov2 keys remapped to timm.",
        dim=1024,
        licence="Owkin non-commercial",
        weights="https://huggingface.co/owkin/phikon-v2 (model.safetensors)",
    )
    _register(
        "ctranspath",
        ImageArch(
            "swin_tiny_patch4_window7_224",
            {"img_size": 224, "embed_layer": ConvStem},
            remap=old_swin_to_timm,
            source="CTransPath (ctranspath.pth, {'model': ...}, timm 0.5 names)",
        ),
        "CTransPath (Swin-T with a convolutional stem, 768-d), Wang et al. 2022.",
        dim=768,
        licence="GPL-3.0",
        weights="https://github.com/Xiyue-Wang/TransPath (ctranspath.pth, Google Drive link)",
    )
    # tiny variants of each family, same code paths, for tests on CPU
    tiny = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    small = Preprocess(32, *IMAGENET, 0.5)
    _register(
        "test_uni",
        ImageArch("vit_large_patch16_224", {**tiny, **vit_ls}, small),
        "Tiny UNI-family ViT with layer scale (tests).",
        dim=32,
    )
    _register(
        "test_virchow2",
        ImageArch(
            "vit_huge_patch14_224",
            {
                **tiny,
                "mlp_ratio": 5.3375,
                "reg_tokens": 4,
                "global_pool": "",
                **vit_ls,
                **_swiglu(),
            },
            small,
            pool="cls+mean",
        ),
        "Tiny Virchow2-family ViT (SwiGLU, registers; tests).",
        dim=64,
    )
    _register(
        "test_phikon",
        ImageArch("vit_base_patch16_224", dict(tiny), small, remap=hf_vit_to_timm),
        "Tiny Phikon-family ViT loading Hugging Face ViT keys (tests).",
        dim=32,
    )
    _register(
        "test_phikon_v2",
        ImageArch(
            "vit_large_patch16_224", {**tiny, "init_values": 1e-5}, small, remap=hf_dinov2_to_timm
        ),
        "Tiny Phikon-v2-family ViT loading Hugging Face Dinov2 keys (tests).",
        dim=32,
    )
    _register(
        "test_conch",
        ImageArch(
            "vit_base_patch16_224", {**tiny, "global_pool": "token"}, small, remap=conch_trunk
        ),
        "Tiny CONCH-family trunk loading visual.trunk.* keys (tests).",
        dim=32,
    )
    _register(
        "test_ctranspath",
        ImageArch(
            "swin_tiny_patch4_window7_224",
            {
                "img_size": 32,
                "embed_dim": 32,
                "depths": (1, 1),
                "num_heads": (1, 2),
                "window_size": 4,
                "embed_layer": ConvStem,
            },
            small,
            remap=old_swin_to_timm,
        ),
        "Tiny CTransPath-family Swin with the convolutional stem (tests).",
        dim=64,
    )
    _register(
        "test_image_resnet",
        ImageArch("resnet18", {}, small),
        "ResNet-18 from scratch: the small image tower of CPU examples and tests.",
        dim=512,
    )


def timm_encoder(
    arch: str,
    *,
    weights: str | Path | None = None,
    mode: str = "finetune",
    input_size: int = 224,
    mpp: float = 0.5,
    **kwargs: Any,
) -> ImageEncoder:
    """Any timm architecture by name (``create_encoder("timm:convnext_tiny")``)."""
    import timm

    if arch not in timm.list_models():
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise ConfigError(f"unknown timm architecture {arch!r}; close: {close}")
    return ImageEncoder(
        ImageArch(arch, kwargs, Preprocess(input_size, *IMAGENET, mpp)),
        weights=weights,
        mode=mode,
        name=f"timm:{arch}",
    )


_foundation_models()
