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

Tiles can be stain-normalised first (``stain_normalize=`` with ``stain_target=``, or a ``run``
trained with a ``stain:`` section, which applies its own ``stain.json``): the normaliser is part
of the extractor's identity, and each slide's record counts the tiles normalised and kept raw
(``stain``; :func:`histoxmodal.workflows.job_control.stain_summary` sums them).

What features computes for one slide is :class:`FeatureJob`; the batch-job rules are
``histoxmodal tile``'s, in :mod:`histoxmodal.workflows.jobs`: ``OUT/<slide>.json`` records each
slide (``status`` ``ok`` / ``empty`` / ``failed`` with the reason), the input's identity (path,
size and modification time) and the extractor's (encoder, weights checksum); a rerun skips a slide
done with the same input and extractor, refuses to mix in another encoder's or another file's
features under an old name (``overwrite=True`` replaces them), and retries failed slides. Outputs
are built in a hidden staging folder and renamed into place; a slide that fails is recorded and
the others go on; one process at a time works on a slide (``OUT/.locks``); ``shard=(K, N)``
takes slides ``K, K+N, ...`` of the sorted list.

The encoder is built by :mod:`~histoxmodal.workflows.extractor`; the tiles are read and batched
by :mod:`~histoxmodal.workflows.feature_tiles`. Speed: tiles are decoded and resized by threads
(:func:`~histoxmodal.tiling.extract.iter_tiles`)
and batched by a producer thread while the encoder runs, in the package's one embedding loop
(:func:`~histoxmodal.training.embedding.embed_batches`: chosen device, pinned memory and
non-blocking copies, autocast mixed precision on a GPU, inference mode).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, HistoxmodalError
from histoxmodal.io.discovery import find_slides, output_name, safe_name, slide_identity
from histoxmodal.keys import STATUS_EMPTY, STATUS_OK
from histoxmodal.workflows.extractor import Extractor, load_extractor
from histoxmodal.workflows.feature_tiles import (
    as_batches,
    file_attrs,
    open_tiles,
    prefetch,
    stain_normalised,
    write_h5,
    write_h5ad,
)
from histoxmodal.workflows.jobs import (
    REFUSE,
    SKIP,
    Done,
    FileOutput,
    JobItem,
    SlideJob,
    SlideResult,
    run_jobs,
    run_one,
)

log = logging.getLogger(__name__)

#: output formats: file suffix of each
FORMATS = {"h5": ".h5", "anndata": ".h5ad"}
#: suffix of the per-slide record beside the features file
RECORD_SUFFIX = ".json"

#: where the weights and run were read from does not change the features: not compared
_LOCATION_KEYS = ("weights", "run")


def same_extractor(a: dict | None, b: dict) -> bool:
    """Whether two extractor identities make the same features (locations aside)."""
    if not isinstance(a, dict):
        return False
    drop = set(_LOCATION_KEYS)
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def _weights_label(ident: dict) -> str:
    sha = ident.get("weights_sha256")
    return f"sha256 {sha[:12]}" if sha else f"random, seed {ident.get('seed')}"


def _is_tile_folder(p: Path) -> bool:
    return (p / keys.TILE_MANIFEST_FILE).is_file()


def find_inputs(inputs: Iterable[str | Path]) -> tuple[list[JobItem], list[Path]]:
    """Expand slide files, folders of slides, tile folders and tile output folders.

    Returns
    -------
    items
        Sorted by output name; ``kind`` is ``slide`` or ``tiles``.
    missing
        The input paths that do not exist.
    """
    items: list[JobItem] = []
    slide_args: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir() and _is_tile_folder(p):
            items.append(JobItem(Path(os.path.abspath(p)), safe_name(p.name), "tiles"))
        elif p.is_dir() and any(
            _is_tile_folder(q) for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")
        ):
            for q in sorted(p.iterdir()):
                if q.is_dir() and not q.name.startswith(".") and _is_tile_folder(q):
                    items.append(JobItem(Path(os.path.abspath(q)), safe_name(q.name), "tiles"))
        else:
            slide_args.append(p)
    missing: list[Path] = []
    if slide_args:
        slides, missing = find_slides(slide_args)
        items += [JobItem(p, output_name(p)) for p in slides]
    items.sort(key=lambda i: (i.name, str(i.path)))
    return items, missing


def input_identity(item: JobItem) -> dict[str, Any]:
    """What identifies a features input between runs: a slide's path, size and modification
    time, or a tile folder's path and the size and time of each of its files."""
    if item.kind == "slide":
        return {"kind": "slide", **slide_identity(item.path)}
    ident: dict[str, Any] = {"kind": "tiles", "path": str(item.path)}
    for fname in (keys.TILE_MANIFEST_FILE, keys.TILE_COORDS_FILE, keys.TILE_STORE_FILE):
        f = item.path / fname
        if f.exists():
            st = f.stat()
            ident[fname] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return ident


@dataclass
class FeatureJob(SlideJob):
    """Extracting the features of one slide or tile folder with ``extractor`` (the attributes
    are :func:`extract_slide`'s options); ``load`` builds the extractor in :meth:`prepare`."""

    extractor: Extractor | None = None
    format: str = "h5"
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    mpp: float | None = None
    min_tissue: float = 0.5
    tissue: Any = None
    load: dict[str, Any] = field(default_factory=dict)
    stain_normalize: str | None = None
    stain_target: str | Path | None = None

    noun = "features"
    lock_suffix = ".features"
    identity_key = "input"
    skip_reason = "already extracted"
    known_errors = (HistoxmodalError, OSError, ValueError)

    def __post_init__(self) -> None:
        self.layout = FileOutput(FORMATS[self.format], RECORD_SUFFIX)

    def find(self, inputs: Sequence[str | Path]) -> tuple[list[JobItem], list[Path]]:
        return find_inputs(inputs)

    def nothing_found(self, inputs: Sequence[str | Path]) -> str:
        return (
            f"no slides or tile folders found in {', '.join(map(str, inputs))}; give slide "
            "files, folders of slides, or folders written by `histoxmodal tile`"
        )

    def prepare(self) -> None:
        if self.extractor is None:  # before the output folder exists: a refused tower leaves none
            self.extractor = load_extractor(**self.load)
            if self.stain_normalize is not None:
                from histoxmodal.data.stain import fit_stain_target

                stain = fit_stain_target(self.stain_target, self.stain_normalize)
                self.extractor = self.extractor.with_stain(stain)

    def identity(self, item: JobItem) -> dict[str, Any]:
        return input_identity(item)

    def params(self, item: JobItem) -> dict[str, Any]:
        params: dict[str, Any] = {"format": self.format}
        if item.kind == "slide":
            ex = self.extractor
            params.update({"tile_px": ex.tile_px, "target_mpp": ex.target_mpp})
            params.update({"mpp": self.mpp, "min_tissue": self.min_tissue})
        return params

    def header(self, item: JobItem, identity: dict | None) -> dict[str, Any]:
        final = self.layout.final(Path("."), item.name)
        return {"name": item.name, "input": identity, "extractor": self.extractor.identity,
                "file": final.name}  # fmt: skip

    def compare(self, previous, identity, params, final) -> tuple[str, str]:
        same_input = previous.get("input") == identity
        same_ex = same_extractor(previous.get("extractor"), self.extractor.identity)
        if same_input and same_ex and previous.get("params") == params:
            return SKIP, self.skip_reason
        ex = previous.get("extractor", {})
        what = "another slide, or this file before it changed" if not same_input else (
            f"another encoder or settings ({ex.get('encoder')}, weights {_weights_label(ex)})"
        )  # fmt: skip
        return REFUSE, (
            f"{final.parent / str(previous.get('file'))} holds the features of {what}; pass "
            "--overwrite (overwrite=True) to replace them, or choose another --out"
        )

    def compute(self, item: JobItem, staging: Path, record: dict[str, Any]) -> Done:
        from histoxmodal.tiling.tissue import TissueParams
        from histoxmodal.training.embedding import (
            embed_batches,
            precision_name,
            resolve_device,
            resolve_precision,
        )

        ex = self.extractor
        dev = resolve_device(self.device)
        prec = precision_name(resolve_precision(self.precision, dev))
        with contextlib.ExitStack() as stack:
            t = open_tiles(
                item, ex, stack, mpp=self.mpp, min_tissue=self.min_tissue,
                tissue=self.tissue or TissueParams(), workers=max(1, self.workers),
            )  # fmt: skip
            n = len(t.coords)
            arrays = t.arrays
            if ex.stain is not None:  # one slide at a time: its own counts
                ex.stain.reset_counts()
                arrays = stain_normalised(arrays, ex.stain)
            batches = prefetch(as_batches(arrays, self.batch_size, pin=dev.type == "cuda"))
            out = embed_batches(
                ex.module, batches, device=dev, precision=prec,
                total=-(-n // self.batch_size), desc=item.name,
            )  # fmt: skip
        feats = out.get("features", np.empty((0, ex.dim), np.float32))
        if feats.shape != (n, ex.dim):
            raise RuntimeError(f"{feats.shape[0]} feature rows for {n} tiles")
        attrs = file_attrs(ex, t, item.name, prec, str(dev))
        path = staging / self.layout.final(staging, item.name).name
        if self.format == "h5":
            write_h5(path, feats, t, attrs)
        else:
            write_h5ad(path, feats, t, attrs, item.name)
        reason = "" if n else "no tile reached min_tissue (no tissue detected?)"
        record.update(
            {"n_tiles": n, "dim": ex.dim, "mpp": t.effective_mpp, "tile_px": t.tile_px,
             "slide": t.slide, "precision": prec, "device": str(dev), "reason": reason}
        )  # fmt: skip
        if ex.stain is not None:  # tiles kept raw (background, pen) counted per slide
            record["stain"] = ex.stain.counts()
        status = STATUS_OK if n else STATUS_EMPTY
        return Done(status, n, t.effective_mpp, t.mpp_source, reason)

    def explain(self, exc: Exception, reason: str) -> str:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return f"{reason}; lower --batch-size"
        return reason


def _check_options(format, batch_size, workers, min_tissue, device, precision) -> None:
    from histoxmodal.training.embedding import resolve_device, resolve_precision

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    for opt, v in (("--batch-size", batch_size), ("--workers", workers)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{opt} {v!r}: must be an integer >= 1")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"--min-tissue {min_tissue}: must be a fraction in [0, 1]")
    resolve_precision(precision, resolve_device(device))


def extract_slide(
    item: JobItem | str | Path,
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
        A :class:`~histoxmodal.workflows.jobs.JobItem`, or the path of a slide or of one slide's
        tile folder.
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
    if not isinstance(item, JobItem):
        p = Path(os.path.abspath(Path(item).expanduser()))
        item = JobItem(p, safe_name(p.name), "tiles") if p.is_dir() else JobItem(p, output_name(p))
    job = FeatureJob(extractor, format, batch_size, workers, device, precision, mpp, min_tissue,
                     tissue)  # fmt: skip
    return run_one(job, item, out_dir, overwrite=overwrite)


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
    stain_normalize: str | None = None,
    stain_target: str | Path | None = None,
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
    stain_normalize, stain_target
        Normalise every tile to the stain of ``stain_target`` (a reference image, a folder of
        tiles or a stain JSON) with ``macenko`` or ``reinhard``
        (:func:`~histoxmodal.data.stain.fit_stain_target`); each slide's record counts the
        tiles kept raw. A ``run`` applies its own normaliser, if it trained with one.
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

    require_extra("wsi", "features")
    require_extra("torch", "features")
    _check_options(format, batch_size, workers, min_tissue, device, precision)
    if (stain_normalize is None) != (stain_target is None):
        raise ConfigError(
            "--stain-normalize and --stain-target go together: give the method (macenko or "
            "reinhard) and the reference image, tile folder or stain JSON"
        )
    if stain_normalize is not None and run is not None:
        raise ConfigError(
            "--stain-normalize goes with --encoder; a --run applies the stain normaliser it "
            "trained with (RUN/stain.json), if any"
        )
    load = {"encoder": encoder, "weights": weights, "run": run, "projection": projection,
            "random_weights": random_weights}  # fmt: skip
    job = FeatureJob(None, format, batch_size, workers, device, precision, mpp, min_tissue,
                     tissue, load, stain_normalize, stain_target)  # fmt: skip
    return run_jobs(job, inputs, out_dir, shard=shard, overwrite=overwrite, on_result=on_result)


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
