"""Training configs as files: YAML (a path or a bundled example) with ``--set key=value``
overrides, parsed into the validated dataclasses of :mod:`histoxmodal.training.config`.

The dataclasses validate themselves however they are built (``TrainConfig(...)`` in Python,
:func:`~histoxmodal.training.config.parse_config` on a dict); reading files, YAML and
command-line overrides happens here, on the application side, so ``histoxmodal.training``
reads no files (an import-linter contract keeps YAML out of it). ``hx.load_config`` and
``histoxmodal train CONFIG --set ...`` both come through :func:`load_config`.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from histoxmodal.errors import ConfigError
from histoxmodal.training.config import parse_config


def set_value(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply a ``--set a.b=value`` override to a nested dict."""
    *path, last = dotted.split(".")
    node = data
    for i, p in enumerate(path):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"--set {dotted}: {where} is {node!r}, not a section with keys")
    node[last] = value


def bundled_configs() -> dict[str, Path]:
    """Example configs shipped with the package (``histoxmodal/configs/*.yaml``, listed by
    ``histoxmodal train --list``)."""
    # Package data, so a wheel has them; an installed wheel is on disk, so this is a real Path.
    folder = Path(str(resources.files("histoxmodal") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def bundled_config_data(name: str) -> dict[str, Any]:
    """The parsed YAML of the bundled config ``name`` (a fresh dict to merge overrides into):
    the demo and benchmark configs are such files, not dict literals in code."""
    return read_config_data(bundled_configs()[name])


def merge_config_data(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: sections merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config_data(out[key], value)
        else:
            out[key] = value
    return out


def read_config_data(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, with its ``base:`` resolved: ``base: her2st`` (a file beside
    it, else a bundled example) is read first and this file's keys are merged on top, so a
    variant states only what differs. Bases may have bases; a cycle is an error."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_where(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    if "base" not in data:
        return data
    name = data.pop("base")
    beside = path.parent / str(name)
    if beside.is_file():
        base_path = beside
    elif str(name) in bundled_configs():
        base_path = bundled_configs()[str(name)]
    else:
        raise ConfigError(
            f"{path}: base {name!r} is neither a file beside it nor a bundled example "
            f"({', '.join(bundled_configs())})"
        )
    here = path.resolve()
    if base_path.resolve() in (*_seen, here):
        raise ConfigError(f"{path}: base {name!r} leads back to itself")
    return merge_config_data(read_config_data(base_path, (*_seen, here)), data)


def load_config(name_or_path: str, overrides: list[str] | None = None):
    """A YAML file or bundled example, with ``key.sub=value`` overrides (values parsed as YAML).

    Returns a :class:`TrainConfig` (image + gene towers on a paired dataset), or a
    :class:`~histoxmodal.training.multimodal.MultimodalConfig` when the file has a
    ``modalities:`` section (radiograph, ECG, report towers on a cohort).
    """
    import yaml

    p = Path(name_or_path)
    if not p.exists():
        bundled = bundled_configs()
        if name_or_path not in bundled:
            close = difflib.get_close_matches(name_or_path, bundled, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(
                f"config {name_or_path!r} is neither a file nor a bundled "
                f"example.{hint} Examples: {', '.join(bundled)}"
            )
        p = bundled[name_or_path]
    data = read_config_data(p)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.0003")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from exc
        set_value(data, key.strip(), parsed)
    return parse_config(data)


def _yaml_where(exc) -> str:
    """`` at line L, column C: problem`` of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or ""
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}" if problem else where
