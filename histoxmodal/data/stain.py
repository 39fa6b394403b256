"""Stain normalisation of H&E tiles to one target's colours, with torchstain's NumPy backend.

:class:`StainNormalizer` wraps torchstain's Macenko (Macenko et al., ISBI 2009: the target's
haematoxylin and eosin optical-density vectors and 99th-percentile concentrations) and Reinhard
(Reinhard et al. 2001: the target's per-channel mean and standard deviation in LAB) normalisers.
It is fitted once, on a reference image or a set of tiles, saved as a small JSON (so it can live
in a run folder and its provenance) and applied tile by tile.

A tile that cannot be normalised (background, glass, a pen mark, too few tissue pixels, or
torchstain failing on it, e.g. a singular stain matrix) is returned unchanged and counted
(:attr:`StainNormalizer.n_fallback`, by reason in :attr:`StainNormalizer.fallback_reasons`), so
a summary can report how many tiles kept their raw colours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoxmodal.errors import ConfigError, DataError
from histoxmodal.fileutil import write_json_atomic

log = logging.getLogger(__name__)

#: version of the stain JSON written by :meth:`StainNormalizer.save`
STAIN_FORMAT = 1
#: the methods :class:`StainNormalizer` knows
STAIN_METHODS = ("macenko", "reinhard")
#: image files :func:`fit_stain_target` reads in a folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# torchstain's Macenko defaults: transmitted light, the angle percentile, the OD threshold
_IO, _ALPHA, _BETA = 240, 1.0, 0.15


def tissue_fraction(tile: np.ndarray, *, io: float = _IO, beta: float = _BETA) -> float:
    """Fraction of the pixels of a ``(H, W, 3)`` uint8 tile that Macenko's method reads as
    stained: optical density ``-ln((v + 1) / io)`` at least ``beta`` in every channel (the
    pixels torchstain keeps; glass and faint background are below)."""
    od = -np.log((tile.reshape(-1, 3).astype(np.float32) + 1.0) / io)
    return float(np.mean(np.all(od >= beta, axis=1))) if od.size else 0.0


class StainNormalizer:
    """Normalise H&E tiles to a target's stain (torchstain, NumPy backend).

    Parameters
    ----------
    method
        ``macenko`` (stain vectors and concentrations in optical density) or ``reinhard``
        (LAB means and standard deviations).
    min_tissue
        A tile with a smaller fraction of stained pixels (:func:`tissue_fraction`) is returned
        unchanged and counted: glass, background, tile edges.
    max_angle
        Macenko only: a tile whose own haematoxylin or eosin vector lies more than this many
        degrees from the target's is not H&E (pen ink, marker, debris, a single colour) and is
        returned unchanged and counted.
    min_std
        Reinhard only: a tile whose lightness (L, 0-100) varies less than this (a single
        colour: glass, a pen stroke), or with a LAB channel that does not vary at all, is
        returned unchanged and counted (its standardisation would divide by ~0).

    Examples
    --------
    >>> norm = StainNormalizer("macenko").fit(reference_tiles)  # doctest: +SKIP
    >>> norm.save("stain.json"); out = norm.apply(tile)  # doctest: +SKIP
    """

    def __init__(
        self,
        method: Literal["macenko", "reinhard"] = "macenko",
        *,
        min_tissue: float = 0.1,
        max_angle: float = 30.0,
        min_std: float = 1.0,
    ) -> None:
        if method not in STAIN_METHODS:
            raise ConfigError(
                f"stain method {method!r}: expected one of {', '.join(STAIN_METHODS)}"
            )
        if not 0.0 <= min_tissue <= 1.0:
            raise ConfigError(f"stain min_tissue={min_tissue!r}: expected a fraction in [0, 1]")
        self.method = method
        self.min_tissue = float(min_tissue)
        self.max_angle = float(max_angle)
        self.min_std = float(min_std)
        self.target: dict[str, list] | None = None
        self.fitted_on: dict[str, Any] = {}
        self._impl = None
        self._lock = threading.Lock()
        self.n_applied = 0
        self.fallback_reasons: Counter[str] = Counter()

    # ------------------------------------------------------------------------------ fitting

    def fit(self, tiles: np.ndarray | Sequence[np.ndarray], **fitted_on: Any) -> StainNormalizer:
        """Fit the target on one ``(H, W, 3)`` uint8 image or a set of tiles (a sequence or an
        ``(n, H, W, 3)`` array, pooled as one image). Tiles below ``min_tissue`` are left out;
        ``fitted_on`` is recorded in the JSON (e.g. ``source="C2.jpg"``)."""
        if len(tiles) == 0:
            raise DataError("stain target: no tiles to fit on")
        arrs = [np.asarray(tiles)] if np.asarray(tiles[0]).ndim == 2 else list(tiles)
        for a in arrs:
            if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
                raise DataError(
                    f"stain target: expected (H, W, 3) uint8 RGB tiles, got {a.shape} {a.dtype}"
                )
        keep = [a for a in arrs if tissue_fraction(a) >= self.min_tissue]
        if not keep:
            raise DataError(
                f"stain target: none of the {len(arrs)} tiles has {self.min_tissue:.0%} stained "
                f"pixels (glass or background?); give a reference with tissue"
            )
        pixels = np.concatenate([a.reshape(1, -1, 3) for a in keep], axis=1)
        impl = self._new_impl()
        try:
            impl.fit(pixels)
        except (np.linalg.LinAlgError, ValueError, IndexError) as exc:
            raise DataError(f"stain target: torchstain cannot fit it ({exc})") from exc
        if self.method == "macenko":
            target = {
                "stain_matrix": impl.HERef.tolist(),
                "max_concentrations": impl.maxCRef.tolist(),
            }
        else:
            target = {
                "means": [float(v) for v in impl.target_means],
                "stds": [float(v) for v in impl.target_stds],
            }
        if not np.isfinite(np.concatenate([np.ravel(v) for v in target.values()])).all():
            raise DataError("stain target: the fitted stain is not finite; choose another image")
        self.target = target
        self.fitted_on = {"n_tiles": len(keep), "n_pixels": int(pixels.shape[1]), **fitted_on}
        self._impl = None
        return self

    def _new_impl(self):
        from histoxmodal.deps import require_extra

        try:
            from torchstain.numpy.normalizers import (
                NumpyMacenkoNormalizer,
                NumpyReinhardNormalizer,
            )
        except ImportError:
            require_extra("spatial", "stain normalisation (torchstain)")
            raise
        return NumpyMacenkoNormalizer() if self.method == "macenko" else NumpyReinhardNormalizer()

    def _fitted_impl(self):
        if self.target is None:
            raise ConfigError(
                "StainNormalizer: not fitted; call fit(tiles) or StainNormalizer.load(json)"
            )
        if self._impl is None:
            impl = self._new_impl()
            if self.method == "macenko":
                impl.HERef = np.asarray(self.target["stain_matrix"], np.float64)
                impl.maxCRef = np.asarray(self.target["max_concentrations"], np.float64)
            else:  # torchstain keeps its LAB statistics as float32
                impl.target_means = np.asarray(self.target["means"], np.float32)
                impl.target_stds = np.asarray(self.target["stds"], np.float32)
            self._impl = impl
        return self._impl

    # ----------------------------------------------------------------------------- applying

    @property
    def n_fallback(self) -> int:
        """Tiles returned unchanged since creation (or :meth:`reset_counts`)."""
        return sum(self.fallback_reasons.values())

    def reset_counts(self) -> None:
        with self._lock:
            self.n_applied = 0
            self.fallback_reasons.clear()

    def counts(self) -> dict[str, Any]:
        """``{"method", "applied", "fallback", "fallback_reasons"}`` for summaries."""
        return {
            "method": self.method,
            "applied": self.n_applied,
            "fallback": self.n_fallback,
            "fallback_reasons": dict(self.fallback_reasons),
        }

    def _count(self, reason: str | None) -> None:
        with self._lock:
            if reason is None:
                self.n_applied += 1
            else:
                self.fallback_reasons[reason] += 1

    def apply(self, tile: np.ndarray) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 ``tile`` in the target's stain; the tile itself (counted in
        :attr:`n_fallback`) when it cannot be normalised."""
        impl = self._fitted_impl()
        tile = np.ascontiguousarray(tile)
        if tile.ndim != 3 or tile.shape[-1] != 3 or tile.dtype != np.uint8:
            raise DataError(
                f"stain: expected an (H, W, 3) uint8 tile, got {tile.shape} {tile.dtype}"
            )
        reason = self._degenerate(tile)
        out = None
        if reason is None:
            try:
                with np.errstate(all="ignore"):
                    if self.method == "macenko":
                        out = impl.normalize(tile, stains=False)[0]
                    else:
                        out = impl.normalize(tile)
            except (np.linalg.LinAlgError, ValueError, IndexError, FloatingPointError):
                reason = "torchstain_error"
        self._count(reason)
        return tile if out is None else np.ascontiguousarray(out)

    def apply_many(self, tiles: np.ndarray) -> np.ndarray:
        """:meth:`apply` on each tile of ``(n, H, W, 3)``; returns a new array."""
        tiles = np.asarray(tiles)
        return np.stack([self.apply(t) for t in tiles]) if len(tiles) else tiles.copy()

    def _degenerate(self, tile: np.ndarray) -> str | None:
        """Why ``tile`` must keep its colours (``None``: it can be normalised)."""
        if tissue_fraction(tile) < self.min_tissue:
            return "background"
        try:
            with np.errstate(all="ignore"):
                if self.method == "macenko":
                    own = self._new_impl()
                    own.fit(tile)  # the tile's own stain vectors, as normalize finds them
                    he = np.asarray(own.HERef, np.float64)
                    ref = np.asarray(self.target["stain_matrix"], np.float64)
                    if not np.isfinite(he).all() or not np.isfinite(own.maxCRef).all():
                        return "torchstain_error"
                    if np.any(np.asarray(own.maxCRef) <= 0):
                        return "single_colour"
                    cos = np.sum(he * ref, 0) / (
                        np.linalg.norm(he, axis=0) * np.linalg.norm(ref, axis=0)
                    )
                    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
                    if not np.isfinite(angle).all() or angle.max() > self.max_angle:
                        return "not_he"
                else:
                    from torchstain.numpy.utils.rgb2lab import rgb2lab

                    lab = rgb2lab(tile.astype(np.float32) / 255)
                    std = lab.reshape(-1, 3).std(0) * np.array([1 / 2.55, 1, 1])
                    # flat lightness: glass, a pen stroke; a flat channel: division by ~0
                    if not np.isfinite(std).all() or std[0] < self.min_std or std.min() < 1e-3:
                        return "single_colour"
        except (np.linalg.LinAlgError, ValueError, IndexError, FloatingPointError):
            return "torchstain_error"
        return None

    # ---------------------------------------------------------------------------- the JSON

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able state: method, thresholds and the fitted target."""
        self._fitted_impl()
        return {
            "format": STAIN_FORMAT,
            "method": self.method,
            "min_tissue": self.min_tissue,
            "max_angle": self.max_angle,
            "min_std": self.min_std,
            "target": self.target,
            "fitted_on": self.fitted_on,
        }

    @property
    def digest(self) -> str:
        """SHA-256 of :meth:`to_dict` without ``fitted_on``: what the normaliser does."""
        d = self.to_dict()
        d.pop("fitted_on")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "stain") -> StainNormalizer:
        """Inverse of :meth:`to_dict` (exact: the floats survive JSON unchanged)."""
        try:
            norm = cls(
                d["method"],
                min_tissue=float(d.get("min_tissue", 0.1)),
                max_angle=float(d.get("max_angle", 30.0)),
                min_std=float(d.get("min_std", 1.0)),
            )
            target = d["target"]
            need = (
                ("stain_matrix", (3, 2), "max_concentrations", (2,))
                if norm.method == "macenko"
                else ("means", (3,), "stds", (3,))
            )
            for name, shape in zip(need[::2], need[1::2], strict=True):
                if np.shape(target[name]) != shape:
                    raise DataError(f"{where}: target.{name} has shape {np.shape(target[name])}")
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{where}: not a stain normaliser JSON (missing or bad {exc}); write one with "
                f"StainNormalizer.fit(...).save(path)"
            ) from exc
        norm.target = {k: target[k] for k in need[::2]}
        norm.fitted_on = dict(d.get("fitted_on") or {})
        return norm

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically; returns ``path``."""
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> StainNormalizer:
        """A normaliser saved with :meth:`save`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the stain JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise DataError(f"{path}: expected a JSON object (a stain normaliser)")
        return cls.from_dict(d, where=str(path))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: no lock, no torchstain
        state = dict(self.__dict__)
        state["_lock"], state["_impl"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        fitted = "fitted" if self.target is not None else "not fitted"
        return (
            f"StainNormalizer({self.method!r}, {fitted}, applied={self.n_applied}, "
            f"fallback={self.n_fallback})"
        )


def reference_tiles(
    image: np.ndarray, *, tile_px: int = 256, max_tiles: int = 64, min_tissue: float = 0.5
) -> list[np.ndarray]:
    """Tissue tiles of a large reference image: a grid of ``tile_px`` tiles, those with at
    least ``min_tissue`` stained pixels, at most ``max_tiles`` spread evenly over them (a
    whole section's glass would otherwise weigh on Reinhard's statistics)."""
    h, w = image.shape[:2]
    if h <= tile_px or w <= tile_px:
        return [image]
    tiles = [
        image[y : y + tile_px, x : x + tile_px]
        for y in range(0, h - tile_px + 1, tile_px)
        for x in range(0, w - tile_px + 1, tile_px)
    ]
    keep = [t for t in tiles if tissue_fraction(t) >= min_tissue]
    if len(keep) > max_tiles:
        keep = [keep[i] for i in np.linspace(0, len(keep) - 1, max_tiles).round().astype(int)]
    return keep or [image]


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a reference section is ~100 Mpx (her2st: 92 Mpx)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the stain reference image ({exc})") from exc


def fit_stain_target(
    target: str | Path | Sequence[str | Path],
    method: Literal["macenko", "reinhard"] = "macenko",
    *,
    min_tissue: float = 0.1,
    tile_px: int = 256,
    max_tiles: int = 64,
) -> StainNormalizer:
    """A :class:`StainNormalizer` from ``target``: a saved stain JSON (its own method must be
    ``method``), a reference image (cut into its tissue tiles, :func:`reference_tiles`), a
    folder of tile images, or a list of image files (pooled).

    Raises
    ------
    FileNotFoundError
        ``target`` does not exist.
    ConfigError
        A stain JSON of another method, or a folder without images.
    DataError
        An unreadable image, or no tissue in it.
    """
    paths = [Path(target)] if isinstance(target, str | Path) else [Path(p) for p in target]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(
                f"stain target {p} not found: give a reference H&E image, a folder of tiles or "
                f"a stain JSON"
            )
    if len(paths) == 1 and paths[0].suffix.lower() == ".json":
        norm = StainNormalizer.load(paths[0])
        if norm.method != method:
            raise ConfigError(
                f"stain target {paths[0]} is a {norm.method} normaliser, not {method}; set the "
                f"method to {norm.method} or fit a {method} one"
            )
        return norm
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ConfigError(
                f"stain target {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it"
            )
    tiles: list[np.ndarray] = []
    for p in paths:
        tiles += reference_tiles(_read_image(p), tile_px=tile_px, max_tiles=max_tiles)
    source = [str(p.resolve()) for p in paths]
    return StainNormalizer(method, min_tissue=min_tissue).fit(tiles, source=source)
