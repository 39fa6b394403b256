"""Histology augmentations on uint8 ``(H, W, 3)`` patches (NumPy, cheap enough for loaders).

- :func:`random_dihedral`: flips and 90° rotations (tissue has no canonical orientation);
- :func:`hed_jitter`: stain variation in haematoxylin-eosin-DAB space (Tellez et al. 2018,
  colour deconvolution by Ruifrok & Johnston 2001);
- brightness / contrast / saturation jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import hed_from_rgb as _sk_hed_from_rgb
from skimage.color import rgb_from_hed as _sk_rgb_from_hed

from histoxmodal.errors import ConfigError

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), scikit-image's own
# matrices so that "HED" means the same here as in skimage.color.rgb2hed.
RGB_FROM_HED = _sk_rgb_from_hed.astype(np.float32)
HED_FROM_RGB = _sk_hed_from_rgb.astype(np.float32)
# optical density of each 8-bit level, so the forward transform is a table look-up
_OD_LUT = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


@dataclass(frozen=True)
class Augment:
    """Which augmentations a :class:`~histoxmodal.data.dataset.PairedDataset` applies.

    Parameters
    ----------
    flips
        Random horizontal and vertical flips.
    rot90
        Random rotation by a multiple of 90°.
    hed_sigma
        Stain jitter strength: each of the H, E, D channels is scaled by U(1-σ, 1+σ) and
        shifted by U(-σ, σ) in optical density (0.05 is a common, mild choice).
    brightness, contrast, saturation
        Jitter amplitudes (factors drawn from U(1-a, 1+a)).
    depth_min
        Sequencing-depth augmentation of the expression (1 = off): each training spot's raw
        counts are binomially thinned to a fraction ``f`` of themselves, ``log f`` drawn
        uniformly in ``[log depth_min, 0]``, before normalization, so the gene tower sees
        shallow spots (another patient or panel at ~1/15 of the depth) while training.
    """

    flips: bool = True
    rot90: bool = True
    hed_sigma: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    depth_min: float = 1.0

    def __post_init__(self) -> None:
        for k in ("hed_sigma", "brightness", "contrast", "saturation"):
            v = getattr(self, k)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{k}={v} must be in [0, 1)")
        if not 0.0 < self.depth_min <= 1.0:
            raise ConfigError(f"depth_min={self.depth_min} must be in (0, 1] (1 = no thinning)")

    def thin(self, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """Raw ``counts`` of one spot binomially thinned (``depth_min``); returns the thinned
        counts and the fraction kept, by which the spot's library size scales."""
        if self.depth_min >= 1.0:
            return counts, 1.0
        f = float(np.exp(rng.uniform(np.log(self.depth_min), 0.0)))
        return rng.binomial(counts.astype(np.int64), f).astype(np.float32), f

    @property
    def colour(self) -> bool:
        return bool(self.hed_sigma or self.brightness or self.contrast or self.saturation)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one ``(H, W, 3)`` uint8 patch; returns a new contiguous uint8 array."""
        if self.flips or self.rot90:
            img = random_dihedral(img, rng, flips=self.flips, rot90=self.rot90)
        else:
            img = np.ascontiguousarray(img)
        if self.hed_sigma:
            img = hed_jitter(img, rng, self.hed_sigma)
        if self.brightness or self.contrast or self.saturation:
            img = colour_jitter(img, rng, self.brightness, self.contrast, self.saturation)
        return img


_ROTATIONS = (None, 0, 1, 2)  # cv2.ROTATE_90_CLOCKWISE, ROTATE_180, ROTATE_90_COUNTERCLOCKWISE


def random_dihedral(
    img: np.ndarray, rng: np.random.Generator, *, flips: bool = True, rot90: bool = True
) -> np.ndarray:
    """One of the 8 flips/rotations of a square patch, as a new contiguous array.

    OpenCV does the pixel shuffles: NumPy's strided copies of rotated views are ~10x slower.
    """
    import cv2

    code = _ROTATIONS[int(rng.integers(4))] if rot90 else None
    out = cv2.rotate(np.asarray(img), code) if code is not None else None
    if flips and rng.random() < 0.5:
        out = cv2.flip(np.asarray(img) if out is None else out, 1)
    return np.ascontiguousarray(img) if out is None else out


def rgb_to_hed(img: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H * W, 3)`` float32 stain densities (H, E, DAB).

    The stain matrix is scikit-image's (:data:`HED_FROM_RGB`); the optical density differs from
    :func:`skimage.color.rgb2hed` in three ways, all so that the round trip through
    :func:`hed_to_rgb` is exact and the forward transform a table look-up:

    - densities are natural-log, ``od = -ln((v + 1) / 256)``; skimage divides by ``ln(1e6)``
      (so its values are these divided by about 13.8) and uses ``v / 255``;
    - the ``+ 1`` keeps black finite (``-ln(1/256)`` = 5.5) where skimage floors at ``1e-6``;
    - negative densities (colours outside the H-E-DAB cone) are kept; skimage clips them to 0,
      which makes its round trip lossy for those colours.

    A scale ``alpha`` of the densities is therefore the same in both, and a shift ``beta`` here
    is ``beta / ln(1e6)`` in skimage's HED space (tests/data/test_transforms.py checks both).
    """
    od = _OD_LUT[img]
    return od.reshape(-1, 3) @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`: ``(H * W, 3)`` densities back to uint8 RGB of ``shape``."""
    od = hed @ RGB_FROM_HED
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(rgb, 0, 255).round().astype(np.uint8).reshape(shape)


def hed_shift(img: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale the H, E and DAB densities of a uint8 RGB patch by ``alpha`` and shift them by
    ``beta`` (each of shape ``(3,)``, densities in natural-log units: see :func:`rgb_to_hed`)."""
    a = np.asarray(alpha, dtype=np.float32)
    b = np.asarray(beta, dtype=np.float32)
    return hed_to_rgb(rgb_to_hed(img) * a + b, img.shape)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Scale the H, E and D densities by U(1-σ, 1+σ) and shift them by U(-σ, σ) (stain
    variation, Tellez et al. 2018): :func:`hed_shift` with random ``alpha`` and ``beta``."""
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3)
    beta = rng.uniform(-sigma, sigma, 3)
    return hed_shift(img, alpha, beta)


def colour_jitter(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
) -> np.ndarray:
    """Brightness, contrast and saturation jitter on a uint8 RGB patch."""
    x = img.astype(np.float32)
    if brightness:
        x *= rng.uniform(1 - brightness, 1 + brightness)
    if contrast:
        m = x.mean()
        x = (x - m) * rng.uniform(1 - contrast, 1 + contrast) + m
    if saturation:
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - grey[..., None]) * rng.uniform(1 - saturation, 1 + saturation) + grey[..., None]
    return np.clip(x, 0, 255).round().astype(np.uint8)
