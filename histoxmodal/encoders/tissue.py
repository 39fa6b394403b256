"""Deep tissue segmenters (torch), registered into ``tiling.tissue.TISSUE_SEGMENTERS``.

A GrandQC/HEST-style UNet: RGB at a stated µm/px in, per-pixel tissue probability out. Weights
come only from local files (``.safetensors`` or a weights-only ``torch.load``), through
:func:`histoxmodal.encoders.weights.load_weights`. Select one with
``detect_tissue(slide, method="deep:unet", weights="tissue_unet.safetensors")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoxmodal.errors import ConfigError
from histoxmodal.tiling.tissue import TISSUE_SEGMENTERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TissueUNet(nn.Module):
    """A plain UNet: ``depth`` down/up stages from ``base`` channels, ``n_classes`` logits.

    Input ``(batch, 3, h, w)`` normalised RGB with ``h`` and ``w`` multiples of ``2**depth``;
    output ``(batch, n_classes, h, w)``.
    """

    def __init__(self, base: int = 32, depth: int = 4, n_classes: int = 2) -> None:
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(3, chans[0])])
        self.down.extend(_block(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(_block(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], n_classes, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNetTissueSegmenter:
    """A :class:`~histoxmodal.tiling.tissue.TissueSegmenter` around a :class:`TissueUNet`.

    Parameters
    ----------
    model
        The network, in eval mode on ``device``.
    mpp
        µm/px of the images it was trained on.
    tissue_class
        Output channel of tissue (softmax over channels; sigmoid when there is one channel).
    """

    def __init__(
        self,
        model: TissueUNet,
        *,
        name: str,
        mpp: float,
        tissue_class: int = 1,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        weights: str | None = None,
        sha256: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.name, self.mpp, self.tissue_class = name, float(mpp), tissue_class
        self.mean, self.std, self.device = mean, std, device
        self.weights, self.sha256 = weights, sha256

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        m = 2**self.model.depth
        ph, pw = -h % m, -w % m
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).float() / 255.0
        x = (x - torch.tensor(self.mean, device=self.device)) / torch.tensor(
            self.std, device=self.device
        )
        x = x.permute(2, 0, 1)[None]
        x = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        logits = self.model(x)[0, :, :h, :w]
        if logits.shape[0] == 1:
            prob = torch.sigmoid(logits[0])
        else:
            prob = torch.softmax(logits, dim=0)[self.tissue_class]
        return prob.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": type(self.model).__name__,
            "mpp": self.mpp,
            "tissue_class": self.tissue_class,
            "weights": self.weights,
            "weights_sha256": self.sha256,
        }


def _build(
    name: str,
    *,
    weights: str | Path | None,
    require_weights: bool,
    mpp: float,
    device: str = "cpu",
    tissue_class: int = 1,
    **arch: Any,
) -> UNetTissueSegmenter:
    from histoxmodal.encoders.weights import load_weights

    model = TissueUNet(**arch)
    sha = None
    if weights is not None:
        sha = load_weights(model, weights)
    elif require_weights:
        raise ConfigError(
            f"tissue segmenter {name!r} needs weights=: a local .safetensors or state-dict file "
            f"(never downloaded); or method='background-hysteresis' for the classic detector"
        )
    return UNetTissueSegmenter(
        model,
        name=name,
        mpp=mpp,
        tissue_class=tissue_class,
        weights=None if weights is None else str(weights),
        sha256=sha,
        device=device,
    )


@TISSUE_SEGMENTERS.register("unet", architecture="TissueUNet(base=32, depth=4)", weights="local")
def unet(
    *, weights: str | Path | None = None, mpp: float = 10.0, device: str = "cpu", **arch: Any
) -> UNetTissueSegmenter:
    """A GrandQC/HEST-style tissue UNet from local weights (about 10 µm/px input)."""
    return _build("unet", weights=weights, require_weights=True, mpp=mpp, device=device, **arch)


@TISSUE_SEGMENTERS.register("test_unet_tiny", architecture="TissueUNet(base=4, depth=2)")
def test_unet_tiny(
    *, weights: str | Path | None = None, mpp: float = 16.0, device: str = "cpu"
) -> UNetTissueSegmenter:
    """A tiny UNet for tests (random weights unless ``weights=``)."""
    return _build(
        "test_unet_tiny",
        weights=weights,
        require_weights=False,
        mpp=mpp,
        device=device,
        base=4,
        depth=2,
    )
