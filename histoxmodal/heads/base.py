"""What every registered head shares: ``save(path)`` and ``load(path)`` to a small folder.

A saved head is a folder::

    head.json            registered name, constructor params, fitted scalars, format version,
                         what the head reads (``inputs``) and what it predicts (``outputs``)
    arrays.safetensors   fitted numpy arrays (means, coefficients, neighbours...), when any
    weights.safetensors  a torch state dict (MLP, MIL), when any

Nothing is pickled and nothing goes through ``torch.load``: the arrays are safetensors and the
network is rebuilt from the params before its state dict is loaded. The folder is built under a
temporary sibling name and renamed into place, so a reader sees the old head or the new one,
never a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from histoxmodal.errors import ConfigError, HeadFolderError, HistoxmodalError
from histoxmodal.fileutil import apply_umask, publish_dir, staging_dir
from histoxmodal.heads.inputs import HeadInputs

FORMAT_VERSION = 1
HEAD_FILE = "head.json"
ARRAYS_FILE = "arrays.safetensors"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class HeadState:
    """The fitted part of a head, split by where it is stored."""

    fitted: dict[str, Any] = field(default_factory=dict)  # JSON: scalars, short lists
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # arrays.safetensors
    weights: dict[str, Any] | None = None  # a torch state dict: weights.safetensors


class Head:
    """Base class of the registered heads: save / load through :class:`HeadState`.

    Subclasses are dataclasses whose init fields are the constructor params; they implement
    ``_state()`` (after fit) and ``_restore(state)`` (rebuild the fitted attributes).
    ``head_name`` is set by :func:`histoxmodal.heads.registry.register_head`.
    """

    head_name: ClassVar[str] = ""
    #: attributes that exist only after ``fit``; their absence means "not fitted"
    _fitted_attrs: ClassVar[tuple[str, ...]] = ()
    #: what the head reads for each spot (centring, neighbour context, smoothing), applied by
    #: ``predict(z, coords_um=..., groups=...)``; saved in ``head.json`` (:meth:`reading`)
    inputs: HeadInputs = HeadInputs()
    #: the names of the predicted columns (genes) and their normalization, when the fitter
    #: recorded them (:meth:`predicting`); saved in ``head.json``
    outputs: tuple[str, ...] = ()
    normalization: str | None = None

    # -- what the head reads and predicts --------------------------------------------------------
    def reading(self, inputs: HeadInputs | None):
        """Set what the head reads for each spot (:class:`HeadInputs`); returns the head.

        ``predict(z, coords_um=..., groups=...)`` then applies it to ``z`` (the embeddings of
        every spot of each section), and :meth:`save` keeps it, so a loaded head reads the same.
        """
        self.inputs = HeadInputs() if inputs is None else inputs
        return self

    def predicting(self, names, normalization: str | None = None):
        """Record the names of the predicted columns (genes) and their normalization; returns
        the head. :meth:`save` keeps them, and ``predict`` checks its output against them."""
        self.outputs = tuple(str(n) for n in names)
        self.normalization = normalization
        return self

    def prepare(self, z, coords_um=None, groups=None) -> np.ndarray:
        """The head's input for every row: :attr:`inputs` applied to ``z`` (all spots of each
        section ``groups``, default one section; centres ``coords_um`` in µm, needed when the
        head reads neighbour context or smoothing)."""
        if not self.inputs:
            return z
        if coords_um is None and (self.inputs.context_um > 0 or self.inputs.smooth_um > 0):
            radius = self.inputs.context_um or self.inputs.smooth_um
            raise ConfigError(
                f"this {self.head_name or type(self).__name__} head reads each spot's neighbours "
                f"within {radius:g} µm ({self.inputs}): pass coords_um=, the spot centres in µm "
                "(and groups=, their sections)"
            )
        n = len(z)
        for name, v in (("coords_um", coords_um), ("groups", groups)):
            if v is not None and len(v) != n:
                raise ConfigError(f"{name} has {len(v)} rows but z has {n}: pass one per spot")
        return self.inputs.apply(z, coords_um, groups)

    def _check_outputs(self, y: np.ndarray) -> np.ndarray:
        if self.outputs and (y.ndim != 2 or y.shape[1] != len(self.outputs)):
            raise HeadFolderError(
                f"the {self.head_name!r} head predicts {y.shape[-1]} values per spot but lists "
                f"{len(self.outputs)} genes in its head.json (a head folder mixed from another "
                "panel?); fit the head again"
            )
        return y

    # -- to implement ---------------------------------------------------------------------------
    def _state(self) -> HeadState:
        raise NotImplementedError

    def _restore(self, state: HeadState) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        """Constructor params (dataclass init fields) as they are now."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def get_params(self) -> dict[str, Any]:
        """The constructor params as they are now (as scikit-learn's ``get_params``)."""
        return self._params()

    @property
    def is_fitted(self) -> bool:
        return all(hasattr(self, a) for a in self._fitted_attrs)

    def _require_fitted(self, action: str) -> None:
        if not self.is_fitted:
            name = type(self).__name__
            raise ConfigError(f"{name}.{action} called before fit; call head.fit(...) first")

    def save(self, path: str | Path, *, provenance: dict[str, Any] | None = None) -> Path:
        """Write the fitted head to the folder ``path`` (replacing a head saved there before).

        ``provenance`` (JSON values) is stored in ``head.json`` as it is, e.g. the checksum of
        the weights whose embeddings the head was fitted on; :func:`read_head_json` returns it.

        Returns the folder. Load it back with ``type(head).load(path)`` or
        :func:`histoxmodal.heads.load_head`.
        """
        self._require_fitted("save")
        path = Path(path)
        _check_save_target(path)
        st = _safetensors()
        state = self._state()
        meta = {
            "format_version": FORMAT_VERSION,
            "head": self.head_name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": _jsonable(self._params(), "params"),
            "fitted": _jsonable(state.fitted, "fitted"),
            "arrays": sorted(state.arrays),
            "weights": sorted(state.weights) if state.weights else [],
            "library": f"histoxmodal {_version()}",
            "inputs": dataclasses.asdict(self.inputs),
        }
        if self.outputs:
            meta["outputs"] = {"names": list(self.outputs), "normalization": self.normalization}
        if provenance:
            meta["provenance"] = _jsonable(dict(provenance), "provenance")
        text = json.dumps(meta, indent=2) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(path)
        try:
            if state.arrays:
                st.save_file(
                    {k: np.ascontiguousarray(v) for k, v in state.arrays.items()},
                    str(tmp / ARRAYS_FILE),
                )
            if state.weights:
                from safetensors.torch import save_file

                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in state.weights.items()},
                    str(tmp / WEIGHTS_FILE),
                )
            (tmp / HEAD_FILE).write_text(text, encoding="utf-8")
            for f in tmp.iterdir():  # safetensors creates files 0600
                apply_umask(f)
            publish_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path):
        """Read a head written by :meth:`save` (the folder, or its ``head.json``).

        ``Head.load`` reads any registered head, as :func:`histoxmodal.heads.load_head`.
        """
        if not cls.head_name:
            from histoxmodal.heads.registry import load_head

            return load_head(path)
        meta, folder = read_head_json(path)
        if meta["head"] != cls.head_name:
            raise ConfigError(
                f"{folder} holds a {meta['head']!r} head, not {cls.head_name!r}: load it with "
                f"histoxmodal.heads.load_head({str(folder)!r})"
            )
        return cls._from_meta(meta, folder)

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], folder: Path):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(params) - names)
        if unknown:
            raise HeadFolderError(
                f"{folder / HEAD_FILE}: params {unknown} are not parameters of {cls.__name__} "
                f"({', '.join(sorted(names))}); was it written by another histoxmodal version?"
            )
        head = cls(**params)
        arrays: dict[str, np.ndarray] = {}
        if meta["arrays"]:
            file = _need(folder / ARRAYS_FILE, folder)
            arrays = _read_safetensors(file, lambda f: _safetensors().load_file(str(f)))
            _check_keys(arrays, meta["arrays"], folder / ARRAYS_FILE)
        weights = None
        if meta["weights"]:
            from safetensors.torch import load_file

            file = _need(folder / WEIGHTS_FILE, folder)
            weights = _read_safetensors(file, lambda f: load_file(str(f), device="cpu"))
            _check_keys(weights, meta["weights"], folder / WEIGHTS_FILE)
        try:
            head._restore(HeadState(fitted=meta["fitted"], arrays=arrays, weights=weights))
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            if isinstance(exc, HistoxmodalError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise HeadFolderError(
                f"{folder}: the saved arrays do not fit the {meta['head']!r} head ({first}); "
                "the folder is corrupt or mixed from two heads: fit it again"
            ) from exc
        _restore_io(head, meta, folder)
        return head


def _restore_io(head: Head, meta: dict[str, Any], folder: Path) -> None:
    """What a saved head reads and predicts, from its ``head.json`` (absent from heads saved
    before histoxmodal kept them there: such a head reads plain embeddings and names no
    outputs; :meth:`histoxmodal.workflows.run.Run.load_head` reads a run's older
    ``targets.json`` instead)."""
    file = folder / HEAD_FILE
    try:
        if meta.get("inputs") is not None:
            head.reading(HeadInputs.from_dict(meta["inputs"]))
        out = meta.get("outputs")
        if out is not None:
            names = out["names"]
            if not (isinstance(names, list) and names and all(isinstance(g, str) for g in names)):
                raise ValueError("outputs.names is not a list of names")
            head.predicting(names, out.get("normalization"))
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadFolderError(
            f"{file}: unreadable inputs/outputs ({exc}); fit the head again"
        ) from exc


def read_head_json(path: str | Path) -> tuple[dict[str, Any], Path]:
    """``(metadata, folder)`` of a saved head; clear errors for what is missing or too new."""
    path = Path(path)
    folder = path.parent if path.name == HEAD_FILE else path
    if not folder.exists():
        raise FileNotFoundError(
            f"{folder} not found: expected a folder written by head.save({str(folder)!r})"
        )
    file = folder / HEAD_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: {folder} is not a saved head; pass the folder given to "
            "head.save(...), the one holding head.json"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HeadFolderError(f"{file} is not valid JSON ({e}); save the head again") from e
    keys = ("format_version", "head", "params", "fitted")
    missing = [k for k in keys if k not in meta] if isinstance(meta, dict) else list(keys)
    if missing:
        raise HeadFolderError(f"{file} lacks {missing}: it was not written by head.save")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise ConfigError(
            f"{file} has head format {meta['format_version']}, newer than this histoxmodal "
            f"reads ({FORMAT_VERSION}); upgrade histoxmodal to load it"
        )
    meta.setdefault("arrays", [])
    meta.setdefault("weights", [])
    return meta, folder


def encode_labels(classes: np.ndarray) -> dict[str, Any]:
    """Class labels as JSON that :func:`decode_labels` turns back into the same array."""
    classes = np.asarray(classes)
    values = classes.tolist()
    if classes.dtype.kind == "O" and not all(
        isinstance(v, (str, int, float, bool)) for v in values
    ):
        raise ConfigError(
            "class labels must be strings, integers, floats or booleans to be saved; got "
            f"{sorted({type(v).__name__ for v in values})}"
        )
    return {"values": values, "dtype": classes.dtype.str}


def decode_labels(obj: dict[str, Any]) -> np.ndarray:
    return np.asarray(obj["values"], dtype=np.dtype(obj["dtype"]))


def _check_save_target(path: Path) -> None:
    """Refuse to replace anything that is not a previously saved head."""
    if path.is_file():
        raise ConfigError(
            f"{path} is a file; a head is saved to a folder, e.g. {path.with_suffix('')}"
        )
    if path.is_dir() and any(path.iterdir()) and not (path / HEAD_FILE).is_file():
        raise ConfigError(
            f"{path} exists and is not a saved head (no {HEAD_FILE}); saving would replace it. "
            f"Pick a new folder, e.g. {path / 'head'}"
        )


def _read_safetensors(file: Path, read: Any) -> dict:
    """``read(file)``, with a truncated or foreign file reported as one clear error."""
    from safetensors import SafetensorError

    try:
        return read(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (" ".join(str(exc).split()) or type(exc).__name__)[:200]
        raise HeadFolderError(
            f"{file}: not a readable safetensors file ({first}); it is truncated or corrupt: "
            "fit the head again"
        ) from exc


def _need(file: Path, folder: Path) -> Path:
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found, but {folder / HEAD_FILE} lists its contents: the folder is "
            "incomplete; save the head again"
        )
    return file


def _check_keys(found: dict, expected: list[str], file: Path) -> None:
    if sorted(found) != sorted(expected):
        raise HeadFolderError(
            f"{file} holds {sorted(found)}, but head.json lists {sorted(expected)}; "
            "save the head again"
        )


def _jsonable(obj: Any, where: str) -> Any:
    """Plain JSON values (numpy scalars to Python, tuples to lists); anything else raises."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, where) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise ConfigError(f"head {where}: {type(obj).__name__} value {obj!r} cannot be saved as JSON")


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError as e:
        from histoxmodal.deps import MissingDependencyError

        raise MissingDependencyError(
            "saving and loading heads needs safetensors: pip install safetensors "
            "(or pip install 'histoxmodal[torch]')"
        ) from e
    return safetensors.numpy


def _version() -> str:
    import histoxmodal

    return getattr(histoxmodal, "__version__", "unknown")
