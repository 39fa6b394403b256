"""Loading weights from local files only: ``.safetensors``, ``.pth``/``.pt``/``.bin`` (loaded
with ``weights_only=True``), or a Hugging Face snapshot folder (single or sharded).

Never downloads. Records a SHA-256 of what was loaded, remaps keys where a published checkpoint
names them differently from the architecture here, and reports missing, unexpected and
mis-shaped keys in one clear error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from histoxmodal.errors import WeightsError as WeightsError

StateDict = dict[str, torch.Tensor]

_SNAPSHOT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pt",
    "open_clip_pytorch_model.bin",
)
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _load_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, truncated files, ...
        raise WeightsError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint "
            f"({type(exc).__name__}: {exc}); re-save it as a state dict or "
            f"safetensors"
        ) from exc
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def checkpoint_files(path: str | Path) -> list[Path]:
    """The weight files a path stands for: the file itself, or a snapshot folder's shards."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"weights not found: {p} (weights are only read from local "
            f"files; download them once, then pass the path)"
        )
    if p.is_file():
        return [p]
    for name in _INDEX_FILES:
        if (p / name).exists():
            index = json.loads((p / name).read_text())
            return [p / f for f in sorted(set(index["weight_map"].values()))]
    for name in _SNAPSHOT_FILES:
        if (p / name).exists():
            return [p / name]
    found = sorted(q.name for q in p.iterdir() if q.suffix in (".safetensors", ".bin", ".pth"))
    raise WeightsError(
        f"{p}: no weights in this folder (looked for {', '.join(_SNAPSHOT_FILES)} "
        f"and sharded indexes); it holds {found or 'no weight files'}"
    )


def load_state_dict(path: str | Path) -> tuple[StateDict, str]:
    """Read a checkpoint; returns the state dict and the SHA-256 of its file(s)."""
    h = hashlib.sha256()
    state: StateDict = {}
    for f in checkpoint_files(path):
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
        state.update(_load_file(f))
    return state, h.hexdigest()


def strip_prefix(state: StateDict, prefixes: tuple[str, ...]) -> StateDict:
    """Remove the first matching prefix from every key (``module.``, ``visual.trunk.``, ...)."""
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
                break
        out[k] = v
    return out


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    remap: Callable[[StateDict], StateDict] | None = None,
    ignore: tuple[str, ...] = (),
) -> str:
    """Load ``path`` into ``model`` strictly; returns the checkpoint's SHA-256.

    Parameters
    ----------
    remap
        Renames the checkpoint's keys to the model's.
    ignore
        Key prefixes of the checkpoint that are not part of this model (heads, poolers).

    Raises
    ------
    WeightsError
        Listing missing keys, unexpected keys and shape mismatches, with a hint at the
        architecture the checkpoint seems to be for.
    """
    state, digest = load_state_dict(path)
    if remap is not None:
        state = remap(state)
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    load_strict(model, state, path)
    return digest


def load_strict(
    model: nn.Module,
    state: StateDict,
    path: str | Path,
    *,
    what: str = "this architecture",
    hint: str = "Is it the checkpoint of this model (and size)?",
) -> None:
    """``model.load_state_dict(state, strict=True)`` after one check that names, in a single
    :class:`WeightsError`, the shape mismatches, missing and unexpected keys (a few of each),
    ``what`` the model is and the ``hint``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad:
        parts = []
        if bad:
            parts.append(f"{len(bad)} shape mismatches (e.g. {'; '.join(bad[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        raise WeightsError(f"{path} does not fit {what}: {'; '.join(parts)}. {hint}")
    model.load_state_dict(state, strict=True)
