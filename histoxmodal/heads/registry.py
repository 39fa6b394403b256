"""The head registry: ``create_head("ridge", pca=256)``, ``list_heads("*mil")``,
``describe_head("abmil")`` and ``load_head(folder)`` for any saved head.

Each head class registers itself with :func:`register_head` in the module that defines it. No
head module imports torch at import time (the MLP and MIL heads import it inside their methods),
so listing, describing and creating heads stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histoxmodal.errors import ConfigError
from histoxmodal.registry import Registry

HEADS: Registry = Registry("head")

#: the values of the ``task`` metadata
TASKS = ("regression", "classification", "mil")


def register_head(name: str, *, task: str, input: str, target: str, output: str, backend: str):
    """Class decorator: register a :class:`~histoxmodal.heads.base.Head` under ``name``.

    Parameters
    ----------
    task
        ``"regression"``, ``"classification"`` or ``"mil"`` (one label per bag of instances).
    input, target, output
        What ``fit``/``predict`` take and return, with shapes, e.g. ``"image embeddings (n, d)"``.
    backend
        What it computes with (``"numpy"``, ``"torch"``, ``"scikit-learn"``).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {', '.join(TASKS)}")

    def decorator(cls: type) -> type:
        cls.head_name = name
        return HEADS.register(
            name, task=task, input=input, target=target, output=output, backend=backend
        )(cls)

    return decorator


def _load_all() -> None:
    import histoxmodal.heads.expression
    import histoxmodal.heads.mil
    import histoxmodal.heads.probe  # noqa: F401  (each registers on import)


def create_head(name: str, **params: Any):
    """Build an unfitted head by registered name; keyword arguments are its constructor params.

    Unknown names raise :class:`KeyError` with the close matches and the full list; unknown
    params raise :class:`TypeError` listing the head's params.
    """
    _load_all()
    cls = HEADS.get(name)
    known = _init_params(cls)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TypeError(
            f"head {name!r} has no parameter {', '.join(unknown)}; its parameters: "
            f"{', '.join(known)}"
        )
    return cls(**params)


def list_heads(pattern: str = "*") -> list[str]:
    """Registered head names matching a shell pattern, e.g. ``"*mil"``."""
    _load_all()
    return HEADS.list(pattern)


def describe_head(name: str) -> dict[str, Any]:
    """Registration metadata: ``summary``, ``task``, ``input``, ``target``, ``output``,
    ``backend``, the head's ``class`` and its constructor ``params`` with their defaults."""
    _load_all()
    cls = HEADS.get(name)
    return {
        **HEADS.describe(name),
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": _init_params(cls),
    }


def load_head(path: str | Path):
    """Load any head saved with ``head.save(path)``: reads ``head.json`` and dispatches to the
    registered class."""
    from histoxmodal.heads.base import HEAD_FILE, read_head_json

    meta, folder = read_head_json(path)
    _load_all()
    try:
        cls = HEADS.get(str(meta["head"]))
    except KeyError as e:
        raise ConfigError(
            f"{folder / HEAD_FILE} names head {meta['head']!r}, which this histoxmodal does not "
            f"register. {e.args[0]}"
        ) from None
    return cls._from_meta(meta, folder)


def _init_params(cls: Callable) -> dict[str, Any]:
    """Constructor params and their defaults."""
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out
