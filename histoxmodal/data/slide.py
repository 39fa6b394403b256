"""Patches of a whole slide around given centres, as a torch dataset: what a trained run's image
tower sees on a new slide, cut exactly as ``histoxmodal build`` cuts spot patches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from histoxmodal import keys
from histoxmodal.tiling.spots import patch_windows

if TYPE_CHECKING:
    from histoxmodal.data.stain import StainNormalizer
    from histoxmodal.io.slide import SlideReader


class SlidePatches(Dataset):
    """Square patches of ``patch_um`` µm centred on ``centres``, resampled to ``patch_px``.

    Each item is ``{"image": (3, patch_px, patch_px) uint8 tensor}``: the same windows
    (:func:`~histoxmodal.tiling.spots.patch_windows`) and the same resampling
    (``read_region_at_mpp``) as the spot patches of a paired dataset, so a run sees the same
    pixels on the slide as it saw in training. Pixels are read when an item is asked for, so
    memory does not grow with the slide.

    Parameters
    ----------
    slide
        An open slide with a known pixel size.
    centres
        ``(n, 2)`` level-0 ``(x, y)``.
    patch_um, patch_px
        Field of view and output size.
    stain
        A fitted :class:`~histoxmodal.data.stain.StainNormalizer` applied to each patch (a
        run's ``stain.json``), or ``None``.
    """

    def __init__(
        self,
        slide: SlideReader,
        centres: np.ndarray,
        *,
        patch_um: float,
        patch_px: int,
        stain: StainNormalizer | None = None,
    ) -> None:
        self.slide = slide
        self.stain = stain
        self.corners, self.side = patch_windows(centres, slide.require_mpp(), patch_um)
        self.patch_px = int(patch_px)
        self.target_mpp = patch_um / patch_px

    def __len__(self) -> int:
        return len(self.corners)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, y = (int(v) for v in self.corners[i])
        img = self.slide.read_region_at_mpp((x, y), self.patch_px, self.target_mpp)
        if self.stain is not None:
            img = self.stain.apply(img)
        return {keys.BATCH_IMAGE: torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))}
