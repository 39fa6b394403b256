"""``histoxmodal features``: tile features of whole slides with an image encoder.

Inputs are slide files (tissue is detected and the slide tiled on the fly at the encoder's own
µm/px and input size, read from its preprocessing config) or the output of ``histoxmodal tile``
(one slide's folder, or the ``--out`` folder holding many: ``tiles.h5`` pixels when it was tiled
with ``--save-tiles``, else the pixels are read again from the slide its manifest names).

For each slide ``OUT/<slide>.h5`` holds, in the layout TRIDENT writes and CLAM/TRIDENT MIL code
reads:

- ``features``: ``(n_tiles, dim)`` float32;
- ``coords``: ``(n_tiles, 2)`` int64 level-0 top-left ``(x, y)``, with the attributes of
  ``coords.h5`` (``patch_size``, ``patch_level``, ``patch_size_level0``, mpp, ...);
- ``tissue_fraction``: ``(n_tiles,)`` float32;
- file attributes naming the encoder, its architecture, the weights' SHA-256, the tiles' µm/px,
  their size in pixels and µm, and the histoxmodal version.

``format="anndata"`` writes ``OUT/<slide>.h5ad`` instead: ``X`` the features, ``obsm['spatial']``
the tile centres in level-0 pixels, ``obs`` the corners and tissue fraction, ``uns['features']``
the same attributes.

Batch-job rules as ``histoxmodal tile``: ``OUT/<slide>.json`` records each slide (``status``
``ok`` / ``empty`` / ``failed`` with the reason), the input's identity (path, size and
modification time) and the extractor's (encoder, weights checksum); a rerun skips a slide done
with the same input and extractor, refuses to mix in another encoder's or another file's features
under an old name (``overwrite=True`` replaces them), and retries failed slides. Outputs are
written to hidden partial files and renamed into place; a slide that fails is recorded and the
others go on; one process at a time works on a slide (``OUT/.locks``); ``shard=(K, N)`` takes
slides ``K, K+N, ...`` of the sorted list, as ``tile`` does.

Speed: tiles are decoded and resized by threads (:func:`~histoxmodal.tiling.extract.iter_tiles`)
and batched by a producer thread while the encoder runs, in the package's one embedding loop
(:func:`~histoxmodal.training.embedding.embed_batches`: chosen device, pinned memory and
non-blocking copies, autocast mixed precision on a GPU, inference mode).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, HistoxmodalError
from histoxmodal.fileutil import write_json_atomic
from histoxmodal.version import __version__
from histoxmodal.workflows.tile import (
    LOCK_DIR,
    STATUS_EMPTY,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SKIPPED,
    SlideResult,
    check_out_dir,
    find_slides,
    output_name,
    parse_shard,
    safe_name,
    slide_identity,
)

log = logging.getLogger(__name__)

#: output formats: file suffix of each
FORMATS = {"h5": ".h5", "anndata": ".h5ad"}
#: suffix of the per-slide record beside the features file
RECORD_SUFFIX = ".json"
#: batches the producer thread may hold ready ahead of the encoder
PREFETCH_BATCHES = 4
#: a tile folder's µm/px may differ this much (relative) from the encoder's without a warning
MPP_TOLERANCE = 0.05


# ------------------------------------------------------------------------------- extractor


@dataclass
class Extractor:
    """An image tower ready for feature extraction, with what identifies it and the tiles it
    expects (see :func:`load_extractor`).

    Attributes
    ----------
    module
        :class:`~histoxmodal.training.embedding.ImageFeatures`: uint8 tiles in, features out.
    identity
        JSON-able: ``encoder``, ``architecture``, ``weights_sha256`` (``None``: random weights,
        seeded), ``run`` and ``projection``, ``dim``.
    tile_px, target_mpp
        The tiles cut from a slide: side in pixels and µm per pixel.
    """

    module: Any
    identity: dict[str, Any]
    tile_px: int
    target_mpp: float

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])


def load_extractor(
    encoder: str | None = None,
    *,
    weights: str | Path | None = None,
    run: str | Path | None = None,
    projection: bool = False,
    seed: int = 0,
    random_weights: bool = False,
) -> Extractor:
    """Build the image tower of ``encoder`` (from local ``weights``) or of a trained ``run``.

    Parameters
    ----------
    encoder
        A registered image encoder (``histoxmodal models``) or ``"timm:<architecture>"``.
    weights
        Local checkpoint of ``encoder``. A foundation model (registered with published
        weights, ``describe_encoder(name)["needs_weights"]``) requires it, unless
        ``random_weights``.
    random_weights
        Run without weights on purpose (tests, speed benchmarks): random, initialised with
        ``seed`` so every process of a sharded job gets the same tower; files and summaries
        record ``weights: random``.
    run
        A spatial training run folder: its image tower, at the field of view it trained on.
    projection
        With ``run``: output the projected (L2-normalized) embedding instead of tower features.

    Raises
    ------
    ConfigError
        Neither or both of ``encoder`` and ``run``; an unknown or non-image encoder; weights that
        do not fit; ``projection`` without ``run``; a cohort run.
    FileNotFoundError
        Missing weights or run files.
    """
    import torch

    from histoxmodal.training.embedding import ImageFeatures

    if (encoder is None) == (run is None):
        raise ConfigError(
            "give --encoder NAME (optionally with --weights PATH) or --run RUN, not "
            + ("both" if encoder is not None else "neither")
        )
    if projection and run is None:
        raise ConfigError("--projection needs --run RUN (a trained run has a projection head)")
    if run is not None:
        if weights is not None:
            raise ConfigError("--weights goes with --encoder; a --run carries its own weights")
        return _run_extractor(run, projection)
    from histoxmodal.encoders import create_encoder, describe_encoder

    name = str(encoder)
    if not name.startswith("timm:"):
        try:
            meta = describe_encoder(name)
        except KeyError as exc:
            raise ConfigError(f"--encoder {exc.args[0]}; `histoxmodal models` lists them") from exc
        if meta.get("modality") != "image":
            raise ConfigError(
                f"--encoder {name}: a {meta.get('modality')} encoder; features need an image "
                "encoder (`histoxmodal models` lists them)"
            )
        if meta.get("needs_weights") and weights is None and not random_weights:
            raise ConfigError(
                f"--encoder {name} is a pretrained foundation model: without its weights it "
                f"would run with random ones and its features mean nothing. Pass --weights PATH "
                f"(a local copy of {meta.get('weights')}), or --random-weights to run it "
                "untrained on purpose (tests, speed benchmarks)"
            )
    if weights is not None and random_weights:
        raise ConfigError("--weights and --random-weights exclude each other; give one")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = create_encoder(name, weights=weights, mode="frozen")
    pre = tower.preprocess
    ident = {
        "encoder": name,
        "architecture": tower.arch.timm_name,
        "weights_sha256": tower.weights_sha256,
        "weights": str(Path(weights).expanduser().resolve()) if weights is not None else "random",
        "seed": None if weights is not None else seed,
        "run": None,
        "projection": False,
        "input_size": pre.input_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "dim": int(tower.embed_dim),
    }
    return Extractor(ImageFeatures(tower), ident, int(pre.input_size), float(pre.mpp))


def _run_extractor(run_dir: str | Path, projection: bool) -> Extractor:
    from histoxmodal.data.store import file_sha256
    from histoxmodal.training.embedding import ImageFeatures
    from histoxmodal.workflows.run import Run

    run = Run.load(run_dir)
    if run.kind != "spatial" or not hasattr(run.module, "image"):
        raise ConfigError(
            f"--run {run.path}: a {run.kind} run; features need a spatial run's image tower"
        )
    module = run.module
    tower = module.image
    head = module.image_head if projection else None
    dim = int(run.config.model.embed_dim) if projection else int(tower.embed_dim)
    pre = tower.preprocess
    if run.patch:
        tile_px = int(run.patch["patch_px"])
        target_mpp = float(run.patch["patch_um"]) / tile_px
    else:
        tile_px, target_mpp = int(pre.input_size), float(pre.mpp)
    ident = {
        "encoder": f"run:{tower.name}",
        "architecture": tower.arch.timm_name,
        "weights_sha256": file_sha256(run.path / keys.RUN_WEIGHTS_FILE),
        "weights": str((run.path / keys.RUN_WEIGHTS_FILE).resolve()),
        "seed": None,
        "run": str(run.path.resolve()),
        "projection": bool(projection),
        "input_size": pre.input_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "dim": dim,
    }
    return Extractor(ImageFeatures(tower, head=head, out_dim=dim), ident, tile_px, target_mpp)


# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class FeatureInput:
    """One slide to extract: a slide file (``kind="slide"``) or one slide's ``histoxmodal tile``
    folder (``kind="tiles"``), and its output name."""

    kind: str
    path: Path
    name: str


def _is_tile_folder(p: Path) -> bool:
    return (p / keys.TILE_MANIFEST_FILE).is_file()


def find_inputs(inputs: Iterable[str | Path]) -> tuple[list[FeatureInput], list[SlideResult]]:
    """Expand slide files, folders of slides, tile folders and tile output folders.

    Returns
    -------
    items
        Sorted by output name.
    missing
        A failed :class:`~histoxmodal.workflows.tile.SlideResult` for each path that does not
        exist.

    Raises
    ------
    ConfigError
        Two inputs would write to the same output name.
    """
    items: list[FeatureInput] = []
    missing: list[SlideResult] = []
    slide_args: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir() and _is_tile_folder(p):
            items.append(FeatureInput("tiles", Path(os.path.abspath(p)), safe_name(p.name)))
        elif p.is_dir() and any(
            _is_tile_folder(q) for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")
        ):
            for q in sorted(p.iterdir()):
                if q.is_dir() and not q.name.startswith(".") and _is_tile_folder(q):
                    items.append(FeatureInput("tiles", Path(os.path.abspath(q)), safe_name(q.name)))
        else:
            slide_args.append(p)
    if slide_args:
        slides, missing = find_slides(slide_args)
        items += [FeatureInput("slide", p, output_name(p)) for p in slides]
    items.sort(key=lambda i: (i.name, str(i.path)))
    seen: dict[str, FeatureInput] = {}
    for i in items:
        other = seen.setdefault(i.name, i)
        if other is not i:
            raise ConfigError(
                f"{other.path} and {i.path} would both write features named {i.name!r}; "
                "rename one or extract them into different --out folders"
            )
    return items, missing


def _input_identity(item: FeatureInput) -> dict[str, Any]:
    if item.kind == "slide":
        return {"kind": "slide", **slide_identity(item.path)}
    ident: dict[str, Any] = {"kind": "tiles", "path": str(item.path)}
    for fname in (keys.TILE_MANIFEST_FILE, keys.TILE_COORDS_FILE, keys.TILE_STORE_FILE):
        f = item.path / fname
        if f.exists():
            st = f.stat()
            ident[fname] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return ident


# ------------------------------------------------------------------------------- batching


def _prefetch(it: Iterable[Any], depth: int = PREFETCH_BATCHES) -> Iterator[Any]:
    """Iterate ``it`` in a background thread, up to ``depth`` items ahead, so decoding overlaps
    the consumer; an exception in the thread is raised here, and closing the generator stops
    the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in it:
                if not put((None, x)):
                    return
        except BaseException as exc:  # handed to the consumer
            put((exc, None))
            return
        put((None, done))

    t = threading.Thread(target=work, daemon=True, name="histoxmodal-features-prefetch")
    t.start()
    try:
        while True:
            exc, x = q.get()
            if exc is not None:
                raise exc
            if x is done:
                return
            yield x
    finally:
        stop.set()
        t.join(timeout=10)


def _as_batches(arrays: Iterable[np.ndarray], batch_size: int, pin: bool) -> Iterator[dict]:
    """uint8 ``(b, H, W, 3)`` arrays of any length -> ``{"image": (batch_size, 3, H, W)}``."""
    import torch

    def make(a: np.ndarray) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
        return {keys.BATCH_IMAGE: x.pin_memory() if pin else x}

    held: list[np.ndarray] = []
    n = 0
    for a in arrays:
        held.append(a)
        n += len(a)
        while n >= batch_size:
            cat = np.concatenate(held) if len(held) > 1 else held[0]
            yield make(cat[:batch_size])
            rest = cat[batch_size:]
            held, n = ([rest] if len(rest) else []), len(rest)
    if n:
        yield make(np.concatenate(held) if len(held) > 1 else held[0])


def _store_chunks(tiles, n: int, chunk: int) -> Iterator[np.ndarray]:
    for i in range(0, n, chunk):
        yield np.asarray(tiles[i : i + chunk])


# ------------------------------------------------------------------------------- one slide


@dataclass
class _Tiles:
    coords: np.ndarray
    fraction: np.ndarray
    coords_attrs: dict[str, Any]
    effective_mpp: float
    level0_mpp: float
    mpp_source: str
    tile_px: int
    tile_px_level0: int
    slide: str
    arrays: Iterable[np.ndarray] = field(default_factory=list)


def _h5_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, dict | list) and not (
        isinstance(v, list) and all(isinstance(x, int | float) for x in v)
    ):
        return json.dumps(v)
    return v


def _file_attrs(ex: Extractor, t: _Tiles, name: str, precision: str, device: str) -> dict:
    ident = ex.identity
    return {
        "name": name,
        "slide": t.slide,
        "encoder": ident["encoder"],
        "architecture": ident["architecture"],
        "weights_sha256": ident["weights_sha256"],
        # "random" when the tower ran untrained (random_weights): never an empty field
        "weights": ident.get("weights") or "random",
        "run": ident["run"],
        "projection": ident["projection"],
        "dim": ex.dim,
        "mpp": t.effective_mpp,
        "level0_mpp": t.level0_mpp,
        "mpp_source": t.mpp_source,
        "tile_px": t.tile_px,
        "tile_um": t.tile_px * t.effective_mpp,
        "patch_size_level0": t.tile_px_level0,
        "input_size": ident["input_size"],
        "precision": precision,
        "device": device,
        "histoxmodal_version": __version__,
    }


def _write_h5(path: Path, feats: np.ndarray, t: _Tiles, attrs: dict) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = _h5_value(v)
        f.create_dataset("features", data=np.asarray(feats, np.float32))
        d = f.create_dataset("coords", data=np.asarray(t.coords, np.int64).reshape(-1, 2))
        for k, v in t.coords_attrs.items():
            d.attrs[k] = _h5_value(v)
        f.create_dataset("tissue_fraction", data=np.asarray(t.fraction, np.float32))


def _write_h5ad(path: Path, feats: np.ndarray, t: _Tiles, attrs: dict, name: str) -> None:
    import anndata as ad
    import pandas as pd

    coords = np.asarray(t.coords, np.int64).reshape(-1, 2)
    obs = pd.DataFrame(
        {"x": coords[:, 0], "y": coords[:, 1], "tissue_fraction": t.fraction},
        index=[f"{name}_{i}" for i in range(len(coords))],
    )
    a = ad.AnnData(X=np.asarray(feats, np.float32), obs=obs)
    a.obsm[keys.OBSM_SPATIAL] = coords.astype(np.float64) + t.tile_px_level0 / 2.0
    a.uns["features"] = {k: ("" if v is None else v) for k, v in attrs.items()}
    a.uns["features"]["coords_attrs"] = json.dumps(t.coords_attrs)
    a.write_h5ad(path)


#: where the weights and run were read from does not change the features: not compared
_LOCATION_KEYS = ("weights", "run")


def _same_extractor(a: dict | None, b: dict) -> bool:
    if not isinstance(a, dict):
        return False
    drop = set(_LOCATION_KEYS)
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def _weights_label(ident: dict) -> str:
    sha = ident.get("weights_sha256")
    return f"sha256 {sha[:12]}" if sha else f"random, seed {ident.get('seed')}"


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _open_tiles(item: FeatureInput, ex: Extractor, stack, *, mpp, min_tissue, tissue, workers):
    """The tiles of one input: geometry, coordinates and an iterator of pixel arrays (the
    slide or tile store stays open in ``stack``)."""
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.extract import iter_tiles
    from histoxmodal.tiling.spec import TileSpec

    chunk = 32
    if item.kind == "slide":
        from histoxmodal.tiling.grid import tile_grid
        from histoxmodal.tiling.outputs import coords_attrs
        from histoxmodal.tiling.tissue import detect_tissue

        s = stack.enter_context(open_slide(item.path, mpp=mpp))
        spec = TileSpec(tile_px=ex.tile_px, target_mpp=ex.target_mpp, min_tissue=min_tissue)
        geom = spec.resolve(s)
        w, h = s.dimensions
        if geom.tile_px_level0 > min(w, h):
            raise ConfigError(
                f"a tile of {ex.identity['encoder']} is {geom.tile_px_level0} px at level 0 "
                f"({spec.tile_um:.0f} µm), larger than the slide ({w} x {h} px)"
            )
        mask = detect_tissue(s, tissue)
        coords, frac = tile_grid(s.dimensions, geom, mask)
        arrays = iter_tiles(s, geom, coords, batch_size=chunk, workers=workers)
        return _Tiles(
            coords, frac, coords_attrs(s, geom, item.name), geom.effective_mpp, geom.mpp,
            s.mpp_info.source, spec.tile_px, geom.tile_px_level0, str(item.path), arrays,
        )  # fmt: skip
    from histoxmodal.workflows.tile import load_tiles

    ts = stack.enter_context(load_tiles(item.path))
    man, attrs = ts.manifest, ts.attrs
    spec = TileSpec(**man["params"]["spec"])
    eff = float(man.get("effective_mpp") or attrs.get("effective_mpp") or spec.target_mpp)
    if abs(eff / ex.target_mpp - 1) > MPP_TOLERANCE:
        log.warning(
            "%s: tiles are %.3g µm/px but %s expects %.3g µm/px; features are extracted from "
            "these tiles as they are (re-tile with --mpp-target %.3g to match)",
            item.path, eff, ex.identity["encoder"], ex.target_mpp, ex.target_mpp,
        )  # fmt: skip
    source = man.get("source") or {}
    slide_path = source.get("path") or man.get("slide") or ""
    t = _Tiles(
        ts.coords, ts.tissue_fraction, attrs, eff, float(man.get("mpp") or attrs["level0_mpp"]),
        str(man.get("mpp_source") or ""), spec.tile_px, int(attrs["patch_size_level0"]),
        str(slide_path),
    )  # fmt: skip
    if ts.tiles is not None:
        t.arrays = _store_chunks(ts.tiles, len(ts), chunk)
        return t
    # no tiles.h5: read the pixels again from the slide the tiles were cut from
    p = Path(slide_path)
    if not p.exists():
        raise FileNotFoundError(
            f"{item.path} has no {keys.TILE_STORE_FILE} and its slide {p} is gone; re-tile with "
            "--save-tiles, or put the slide back"
        )
    now = slide_identity(p)
    if source and (now["size"], now["mtime_ns"]) != (source.get("size"), source.get("mtime_ns")):
        raise ConfigError(
            f"{p} changed since it was tiled into {item.path} (size or modification time "
            "differ); re-tile it (`histoxmodal tile --overwrite`)"
        )
    params = man["params"]
    s = stack.enter_context(open_slide(p, mpp=params.get("mpp"), reader=params.get("reader")))
    geom = spec.resolve(s)
    if geom.tile_px_level0 != t.tile_px_level0:
        raise ConfigError(
            f"{item.path}: tiles of {t.tile_px_level0} px at level 0 in coords.h5, but the slide "
            f"now resolves them to {geom.tile_px_level0} px; re-tile it"
        )
    t.arrays = iter_tiles(s, geom, ts.coords, batch_size=chunk, workers=workers)
    return t


def extract_slide(
    item: FeatureInput | str | Path,
    out_dir: str | Path,
    extractor: Extractor,
    *,
    format: str = "h5",
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    precision: str = "auto",
    mpp: float | None = None,
    min_tissue: float = 0.5,
    tissue=None,
    overwrite: bool = False,
) -> SlideResult:
    """Extract the features of one slide or tile folder into ``out_dir`` (see the module doc).

    Parameters
    ----------
    item
        A :class:`FeatureInput`, or the path of a slide or of one slide's tile folder.
    out_dir
        Output folder: ``<name>.h5`` (or ``.h5ad``) and ``<name>.json``.
    extractor
        From :func:`load_extractor`.
    format
        ``"h5"`` or ``"anndata"``.
    batch_size
        Tiles per forward pass.
    workers
        Threads decoding and resizing tiles.
    device, precision
        Where and how the encoder runs (:func:`~histoxmodal.training.embedding.embed_batches`).
    mpp
        Level-0 µm/px of a slide, overriding its metadata.
    min_tissue
        Least tissue fraction of a kept tile (slides tiled here).
    tissue
        :class:`~histoxmodal.tiling.tissue.TissueParams` for slides tiled here.
    overwrite
        Replace finished features made from another file or with another extractor.

    Returns
    -------
    SlideResult
        ``status`` ``ok``, ``empty`` (no tile), ``skipped`` (done already), ``busy`` (another
        process holds its lock) or ``failed`` (``reason`` says why; recorded in ``<name>.json``).
    """
    from filelock import FileLock, Timeout

    if not isinstance(item, FeatureInput):
        p = Path(os.path.abspath(Path(item).expanduser()))
        item = (
            FeatureInput("tiles", p, safe_name(p.name))
            if p.is_dir()
            else FeatureInput("slide", p, output_name(p))
        )
    out_dir = Path(out_dir)
    (out_dir / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir / LOCK_DIR / f"{item.name}.features.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return SlideResult.busy(item.path, item.name, lock.lock_file, "features are")
    try:
        return _extract_locked(
            item, out_dir, extractor, fmt=format, batch_size=batch_size, workers=workers,
            device=device, precision=precision, mpp=mpp, min_tissue=min_tissue, tissue=tissue,
            overwrite=overwrite,
        )  # fmt: skip
    finally:
        lock.release()


def _extract_locked(
    item, out_dir, ex, *, fmt, batch_size, workers, device, precision, mpp, min_tissue, tissue,
    overwrite,
) -> SlideResult:  # fmt: skip
    import contextlib

    import torch

    from histoxmodal.tiling.tissue import TissueParams
    from histoxmodal.training.embedding import (
        embed_batches,
        precision_name,
        resolve_device,
        resolve_precision,
    )

    t0 = time.perf_counter()
    final = out_dir / f"{item.name}{FORMATS[fmt]}"
    record_path = out_dir / f"{item.name}{RECORD_SUFFIX}"
    result = SlideResult(str(item.path), item.name, STATUS_FAILED, out_dir=str(final))
    params = {"format": fmt}
    if item.kind == "slide":
        params.update({"tile_px": ex.tile_px, "target_mpp": ex.target_mpp})
        params.update({"mpp": mpp, "min_tissue": min_tissue})
    record: dict[str, Any] = {
        "name": item.name,
        "status": STATUS_FAILED,
        "input": None,
        "extractor": ex.identity,
        "params": params,
        "file": final.name,
        "histoxmodal_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = out_dir / f".{final.name}.partial-{os.getpid()}"
    try:
        record["input"] = ident = _input_identity(item)
        prev = _read_record(record_path)
        if (
            prev is not None
            and not overwrite
            and prev.get("status") in (STATUS_OK, STATUS_EMPTY)
            and (out_dir / str(prev.get("file", ""))).exists()
        ):
            same_input = prev.get("input") == ident
            same_ex = _same_extractor(prev.get("extractor"), ex.identity)
            same_ex = same_ex and prev.get("params") == params
            if same_input and same_ex:
                result.status, result.reason = STATUS_SKIPPED, "already extracted"
                result.n_tiles, result.mpp = prev.get("n_tiles"), prev.get("mpp")
                return result
            what = "another slide, or this file before it changed" if not same_input else (
                f"another encoder or settings ({prev.get('extractor', {}).get('encoder')}, "
                f"weights {_weights_label(prev.get('extractor', {}))})"
            )  # fmt: skip
            result.reason = (
                f"{out_dir / str(prev.get('file'))} holds the features of {what}; pass "
                "--overwrite (overwrite=True) to replace them, or choose another --out"
            )
            return result  # the finished output and its record are left as they are
        dev = resolve_device(device)
        prec = precision_name(resolve_precision(precision, dev))
        with contextlib.ExitStack() as stack:
            t = _open_tiles(
                item, ex, stack, mpp=mpp, min_tissue=min_tissue,
                tissue=tissue or TissueParams(), workers=max(1, workers),
            )  # fmt: skip
            result.mpp, result.mpp_source = t.effective_mpp, t.mpp_source
            n = len(t.coords)
            batches = _prefetch(_as_batches(t.arrays, batch_size, pin=dev.type == "cuda"))
            out = embed_batches(
                ex.module, batches, device=dev, precision=prec,
                total=-(-n // batch_size), desc=item.name,
            )  # fmt: skip
        feats = out.get("features", np.empty((0, ex.dim), np.float32))
        if feats.shape != (n, ex.dim):
            raise RuntimeError(f"{feats.shape[0]} feature rows for {n} tiles")
        attrs = _file_attrs(ex, t, item.name, prec, str(dev))
        if fmt == "h5":
            _write_h5(tmp, feats, t, attrs)
        else:
            _write_h5ad(tmp, feats, t, attrs, item.name)
        os.replace(tmp, final)
        status = STATUS_OK if n else STATUS_EMPTY
        result.status, result.n_tiles = status, n
        if not n:
            result.reason = "no tile reached min_tissue (no tissue detected?)"
        record.update(
            {"status": status, "n_tiles": n, "dim": ex.dim, "mpp": t.effective_mpp,
             "tile_px": t.tile_px, "slide": t.slide, "precision": prec, "device": str(dev),
             "reason": result.reason}
        )  # fmt: skip
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        known = isinstance(exc, HistoxmodalError | OSError | ValueError)
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        result.status, result.reason = STATUS_FAILED, reason
        record.update({"status": STATUS_FAILED, "reason": reason})
        if not known:
            record["traceback"] = traceback.format_exc()
            log.error("%s: unexpected error, traceback in %s", item.path, record_path)
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            result.reason = record["reason"] = f"{reason}; lower --batch-size"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result.seconds = time.perf_counter() - t0
    record["seconds"] = round(result.seconds, 3)
    try:
        write_json_atomic(record_path, record)
    except OSError as exc:
        result.status = STATUS_FAILED
        result.reason = f"could not write {record_path}: {exc}"
    return result


# ------------------------------------------------------------------------------ many slides


def extract_features(
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    encoder: str | None = None,
    weights: str | Path | None = None,
    run: str | Path | None = None,
    projection: bool = False,
    format: str = "h5",
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    precision: str = "auto",
    shard: tuple[int, int] | str | None = None,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    tissue=None,
    overwrite: bool = False,
    on_result: Callable[[SlideResult], None] | None = None,
    random_weights: bool = False,
) -> list[SlideResult]:
    """Tile features of slides or tile folders with an image encoder (``hx.features``).

    Every option is checked, and the encoder built, before any slide is read; then each slide is
    extracted by :func:`extract_slide` (see the module doc for the files).

    Parameters
    ----------
    inputs
        Slide files, folders of slides, one slide's ``histoxmodal tile`` folder, or a tile
        ``--out`` folder (every slide in it).
    out_dir
        Output folder (created).
    encoder, weights, run, projection
        The image tower (:func:`load_extractor`).
    format
        ``"h5"`` (``<slide>.h5``, TRIDENT/CLAM layout) or ``"anndata"`` (``<slide>.h5ad``).
    batch_size
        Tiles per forward pass.
    workers
        Threads decoding and resizing tiles (one more thread batches them).
    device
        ``"auto"`` (a GPU when visible), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision
        ``"auto"`` (bf16/fp16 autocast on a GPU, float32 on the CPU), ``"32"``, ``"bf16"``,
        ``"16"``.
    shard
        ``(K, N)`` or ``"K/N"`` / ``"auto"`` (SLURM arrays): only slides ``K, K+N, ...`` of the
        sorted list, as ``histoxmodal tile --shard``.
    mpp, min_tissue, tissue
        Slide pixel size override, least tissue fraction of a tile, tissue-detection settings
        (for slides tiled here).
    overwrite
        Replace finished features made from another file or with another extractor.
    on_result
        Called with each slide's result as it completes.

    Returns
    -------
    list[SlideResult]
        One per slide of the shard (and per missing input), sorted by name.

    Raises
    ------
    ConfigError
        A bad option, an unknown encoder, weights that do not fit, no inputs, or an output
        folder that cannot be written.
    """
    from histoxmodal.deps import require_extra
    from histoxmodal.progress import progress
    from histoxmodal.training.embedding import resolve_device, resolve_precision

    require_extra("wsi", "features")
    require_extra("torch", "features")
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    for opt, v in (("--batch-size", batch_size), ("--workers", workers)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{opt} {v!r}: must be an integer >= 1")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"--min-tissue {min_tissue}: must be a fraction in [0, 1]")
    resolve_precision(precision, resolve_device(device))
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    items, results = find_inputs(inputs)
    if not items and not results:
        raise ConfigError(
            f"no slides or tile folders found in {', '.join(map(str, inputs))}; give slide "
            "files, folders of slides, or folders written by `histoxmodal tile`"
        )
    extractor = load_extractor(  # before the output folder exists: a refused tower leaves none
        encoder, weights=weights, run=run, projection=projection, random_weights=random_weights
    )
    out = check_out_dir(out_dir)
    if shard is not None:
        k, n = shard
        items = items[k::n]
    for r in results:
        if on_result:
            on_result(r)
    for item in progress(items, total=len(items), desc="slides", unit="slide", log_items=True):
        r = extract_slide(
            item, out, extractor, format=format, batch_size=batch_size, workers=workers,
            device=device, precision=precision, mpp=mpp, min_tissue=min_tissue, tissue=tissue,
            overwrite=overwrite,
        )  # fmt: skip
        results.append(r)
        if on_result:
            on_result(r)
    results.sort(key=lambda r: (r.name, r.slide))
    return results


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read ``<slide>.h5`` written by :func:`extract_features`.

    Returns
    -------
    features
        ``(n_tiles, dim)`` float32.
    coords
        ``(n_tiles, 2)`` int64 level-0 top-left ``(x, y)``.
    attrs
        The file attributes (encoder, weights checksum, mpp, tile size, version, ...).
    """
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
        return f["features"][:], f["coords"][:], attrs


def list_models(pattern: str = "*", *, include_tests: bool = False) -> list[dict[str, Any]]:
    """The registered image encoders ``features`` can run (``histoxmodal models``).

    Parameters
    ----------
    pattern
        Shell pattern on the name, e.g. ``"uni*"``.
    include_tests
        Also list the tiny ``test_*`` towers (random weights, for tests and examples).

    Returns
    -------
    list[dict]
        One per encoder: ``name``, ``architecture``, ``dim`` (output size), ``mpp`` (µm/px it
        expects), ``input_size`` (px), ``weights`` (where to get them), ``licence``,
        ``summary``.
    """
    from histoxmodal.encoders import describe_encoder, list_encoders

    rows = []
    for name in list_encoders(pattern):
        meta = describe_encoder(name)
        if meta.get("modality") != "image" or (name.startswith("test_") and not include_tests):
            continue
        rows.append(
            {
                "name": name,
                "architecture": meta.get("arch", ""),
                "dim": meta.get("dim"),
                "mpp": meta.get("mpp"),
                "input_size": meta.get("input_size"),
                "weights": meta.get("weights", ""),
                "licence": meta.get("licence", ""),
                "summary": meta.get("summary", ""),
            }
        )
    return rows


def list_gene_models(pattern: str = "*", *, include_tests: bool = False) -> list[dict[str, Any]]:
    """The registered gene towers (``histoxmodal models``): ``name``, ``architecture``,
    ``input`` (what they read, with the normalization), ``dim`` (output size), ``weights``
    (where they come from), ``licence``, ``summary``."""
    from histoxmodal.encoders import describe_encoder, list_encoders

    rows = []
    for name in list_encoders(pattern):
        meta = describe_encoder(name)
        if meta.get("modality") != "gene" or (name.startswith("test_") and not include_tests):
            continue
        rows.append(
            {
                "name": name,
                "architecture": meta.get("arch", ""),
                "input": meta.get("input", meta.get("normalization", "")),
                "normalization": meta.get("normalization", ""),
                "dim": meta.get("dim"),
                "weights": meta.get("weights", ""),
                "licence": meta.get("licence", ""),
                "summary": meta.get("summary", ""),
            }
        )
    return rows
