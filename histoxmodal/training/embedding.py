"""One embedding loop for the whole package: ``embed``, ``evaluate``, the frozen-tower feature
cache and ``histoxmodal features`` all run :func:`embed_batches`.

A module says what a batch embeds to (``embed_batch(batch) -> {name: (B, d) tensor}``); the loop
moves each batch to the chosen device (pinned host memory and non-blocking copies on CUDA), runs
the module under :func:`torch.inference_mode` and, on a GPU, :func:`torch.autocast` mixed
precision, and concatenates the outputs as float32 numpy arrays. :func:`embed_dataset` feeds it
from a ``DataLoader`` (worker processes decode while the model runs); other callers feed it any
iterable of batches (threads reading slide tiles, slices of a patch store).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal import keys
from histoxmodal.errors import ConfigError

#: accepted ``precision`` spellings -> the autocast dtype (``None``: full float32)
_PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "fp32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "fp16": torch.float16,
    "16-mixed": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to embed on: ``"auto"`` (CUDA when one is visible, else CPU), ``"cpu"``,
    ``"cuda"``, ``"cuda:1"``, ...

    Raises
    ------
    ConfigError
        A CUDA device is asked for but none is visible, or the name is not a device.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: no CUDA device is visible (torch.cuda.is_available() is "
                "False); use --device cpu, or auto to take a GPU when there is one"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None``: float32, no autocast).

    ``"auto"`` is bfloat16 on a GPU that supports it, else float16 on CUDA, and float32 on the
    CPU (CPU autocast is slower than float32 on most processors). ``"32"``, ``"bf16"`` and
    ``"16"`` (also Lightning's ``"bf16-mixed"``, ``"16-mixed"``) force one.

    Raises
    ------
    ConfigError
        An unknown spelling.
    """
    p = str(precision).lower()
    if p == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if p not in _PRECISIONS:
        raise ConfigError(
            f"--precision {precision!r}: expected auto, 32, bf16 or 16 "
            "(bf16-mixed and 16-mixed are accepted too)"
        )
    return _PRECISIONS[p]


def precision_name(dtype: torch.dtype | None) -> str:
    """``"32"``, ``"bf16"`` or ``"16"``: how a resolved precision is recorded."""
    return {None: "32", torch.bfloat16: "bf16", torch.float16: "16"}[dtype]


def to_device(obj: Any, device: torch.device, *, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking=non_blocking) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device, non_blocking=non_blocking) for v in obj)
    return obj


def pin(obj: Any) -> Any:
    """``obj`` with every CPU tensor inside copied to pinned (page-locked) memory, so the copy to
    a GPU can overlap computation (``non_blocking``)."""
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory() if obj.device.type == "cpu" else obj
    if isinstance(obj, dict):
        return {k: pin(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(pin(v) for v in obj)
    return obj


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def embed_batches(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    total: int | None = None,
    desc: str = "embed",
    unit: str = "batch",
) -> dict[str, np.ndarray]:
    """Run ``module.embed_batch`` over ``batches`` and concatenate the outputs: the embedding
    loop of the package.

    Parameters
    ----------
    module
        An ``nn.Module`` with ``embed_batch(batch) -> {name: (B, d) tensor}``. It is put in eval
        mode and moved to ``device`` (and stays there).
    batches
        Batches as ``embed_batch`` takes them (dicts of tensors, usually). Tensors are moved to
        the device here, non-blocking on CUDA; a producer that pins them (:func:`pin`) lets the
        copy overlap the previous batch's computation.
    device
        ``"auto"`` (default: CUDA when visible), a device name, or ``None`` for the device the
        module is on now.
    precision
        Autocast precision (:func:`resolve_precision`); ``"auto"``: bf16/fp16 on a GPU, float32
        on the CPU.
    total, desc, unit
        The progress bar's length (in batches), label and unit.

    Returns
    -------
    dict
        ``{name: (n_items, d)}`` numpy arrays, float32 (bool for masks), in batch order; an
        empty dict when ``batches`` is empty.
    """
    from histoxmodal.progress import progress

    dev = _module_device(module) if device is None else resolve_device(device)
    dtype = resolve_precision(precision, dev)
    module.eval()
    module.to(dev)
    non_blocking = dev.type == "cuda"
    autocast = (
        torch.autocast(device_type=dev.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode(), autocast:
        for batch in progress(batches, total=total, desc=desc, unit=unit):
            out = module.embed_batch(to_device(batch, dev, non_blocking=non_blocking))
            for name, z in out.items():
                z = z if z.dtype == torch.bool else z.float()
                parts.setdefault(name, []).append(z.cpu().numpy())
    return {name: np.concatenate(v) for name, v in parts.items()}


def embed_dataset(
    module: nn.Module,
    dataset,
    *,
    batch_size: int = 128,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    desc: str = "embed",
) -> dict[str, np.ndarray]:
    """Embeddings of every item of ``dataset``, in order (:func:`embed_batches` over a
    ``DataLoader``; pinned memory when the device is a GPU).

    Parameters
    ----------
    module
        A trained module with ``embed_batch(batch) -> {name: (B, d) tensor}``
        (:class:`~histoxmodal.training.module.ContrastiveModule`: ``image``, ``gene``;
        :class:`~histoxmodal.training.multimodal.MultimodalModule`: one per modality and
        ``present``; :class:`ImageFeatures`: ``features``).
    dataset
        A map-style torch dataset.
    batch_size, collate_fn, num_workers
        The ``DataLoader``'s.
    device, precision
        See :func:`embed_batches`.

    Returns
    -------
    dict
        ``{name: (len(dataset), d)}`` numpy arrays (float32, or bool for masks).
    """
    from torch.utils.data import DataLoader

    dev = _module_device(module) if device is None else resolve_device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    return embed_batches(
        module, loader, device=dev, precision=precision, total=len(loader), desc=desc
    )


class ImageFeatures(nn.Module):
    """An image tower as the embedding loop runs it: uint8 ``(B, 3, H, W)`` images are resized to
    the tower's input size and normalized with its mean/std on the device, then embedded (and
    projected by ``head`` when one is given).

    Parameters
    ----------
    tower
        An image encoder with ``preprocess`` (input size, mean/std) and ``embed_dim``, e.g. from
        :func:`~histoxmodal.encoders.create_encoder` or a trained run's ``module.image``.
    head
        Optional projection applied to the tower's features (a run's ``image_head``).
    out_dim
        Size of the output (default: the tower's ``embed_dim``).

    Attributes
    ----------
    embed_dim
        Size of the output features.
    """

    def __init__(
        self, tower: nn.Module, *, head: nn.Module | None = None, out_dim: int | None = None
    ) -> None:
        super().__init__()
        self.tower, self.head = tower, head
        pre = tower.preprocess
        self.input_size = int(pre.input_size)
        self.embed_dim = int(out_dim or tower.embed_dim)
        self.register_buffer(
            "mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0, persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> ``(B, embed_dim)``."""
        x = images.to(self.mean.device).float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        z = self.tower((x - self.mean) / self.std)
        return self.head(z) if self.head is not None else z

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"features": (B, embed_dim)}`` of ``batch["image"]``."""
        return {"features": self(batch[keys.BATCH_IMAGE])}
