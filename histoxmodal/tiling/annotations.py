"""Annotations drawn in QuPath (or any GeoJSON editor) as the region to tile.

``histoxmodal tile`` exports the detected tissue as ``tissue.geojson`` (a FeatureCollection of
Polygons in level-0 pixels, what QuPath's *File > Import objects* reads); an annotation edited or
drawn there and exported again (*File > Export objects as GeoJSON*) comes back through
:func:`read_geojson_polygons` and restricts tiling: a grid tile is kept when its centre lies
inside an annotation (:func:`points_in_polygons`).

Accepted: a FeatureCollection, a list of Features (QuPath's "export as array"), one Feature or
one bare geometry; Polygon and MultiPolygon geometries (holes respected); coordinates ``(x, y)``
in level-0 pixels. Other geometry types (points, lines) are skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from histoxmodal.errors import DataError
from histoxmodal.tiling.tissue import TissueMask

log = logging.getLogger(__name__)


def _bad(path: Path, what: str) -> DataError:
    return DataError(
        f"--geojson-in {path}: {what}; expected GeoJSON Polygon/MultiPolygon features in "
        f"level-0 pixels (a FeatureCollection or a list of features, as QuPath exports)"
    )


def _ring(path: Path, ring, where: str) -> np.ndarray:
    try:
        pts = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad(path, f"{where}: coordinates are not numbers") from None
    if pts.ndim != 2 or pts.shape[1] < 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise _bad(path, f"{where}: a ring needs at least 3 finite (x, y) points")
    if len(pts) > 3 and np.array_equal(pts[0, :2], pts[-1, :2]):
        pts = pts[:-1]  # GeoJSON closes rings by repeating the first point
    return pts[:, :2]


def _polygon(path: Path, rings, where: str) -> dict[str, object]:
    if not isinstance(rings, list) or not rings:
        raise _bad(path, f"{where}: a Polygon's coordinates must be a list of rings")
    parsed = [_ring(path, r, f"{where}, ring {i}") for i, r in enumerate(rings)]
    return {"exterior": parsed[0], "holes": parsed[1:]}


def read_geojson_polygons(path: str | Path) -> list[dict[str, object]]:
    """The Polygon and MultiPolygon annotations of a GeoJSON file.

    Parameters
    ----------
    path
        A ``.geojson``/``.json`` file (see the module docstring for the accepted forms).

    Returns
    -------
    list of dict
        ``{"exterior": (n, 2) array, "holes": [(m, 2) arrays]}`` per polygon, level-0
        ``(x, y)``, the layout of :attr:`TissueMask.polygons`.

    Raises
    ------
    FileNotFoundError
        No such file.
    DataError
        Not JSON, not GeoJSON, or no polygon in it; the message names the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--geojson-in {path}: no such file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        items = doc.get("features")
    elif isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict):
        items = [doc]
    else:
        items = None
    if not isinstance(items, list):
        raise _bad(path, "neither a FeatureCollection, a list of features nor a geometry")
    polygons: list[dict[str, object]] = []
    skipped: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(path, f"feature {i} is not an object")
        geom = item.get("geometry") if item.get("type") == "Feature" else item
        if not isinstance(geom, dict) or "type" not in geom:
            raise _bad(path, f"feature {i} has no geometry")
        kind, coords = geom["type"], geom.get("coordinates")
        if kind == "Polygon":
            polygons.append(_polygon(path, coords, f"feature {i}"))
        elif kind == "MultiPolygon":
            if not isinstance(coords, list):
                raise _bad(path, f"feature {i}: a MultiPolygon's coordinates must be a list")
            polygons += [_polygon(path, p, f"feature {i}, part {j}") for j, p in enumerate(coords)]
        else:
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
    if not polygons:
        raise _bad(path, "no Polygon or MultiPolygon feature in it")
    if skipped:
        log.warning(
            "%s: skipped %s (only Polygon and MultiPolygon annotations restrict tiling)",
            path,
            ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())),
        )
    return polygons


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (recorded so a changed annotation file is noticed)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _in_ring(xy: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd ray casting: whether each point of ``xy`` lies inside ``ring``."""
    x, y = xy[:, 0:1], xy[:, 1:2]
    x0, y0 = ring[:, 0][None], ring[:, 1][None]
    x1, y1 = np.roll(ring[:, 0], -1)[None], np.roll(ring[:, 1], -1)[None]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xi)).sum(axis=1) % 2 == 1


def points_in_polygons(
    xy: np.ndarray, polygons: list[dict[str, object]], *, chunk: int = 4096
) -> np.ndarray:
    """Whether each point lies inside any polygon (inside its exterior, outside its holes).

    Parameters
    ----------
    xy
        ``(n, 2)`` level-0 ``(x, y)``.
    polygons
        As returned by :func:`read_geojson_polygons`.

    Returns
    -------
    np.ndarray
        ``(n,)`` bool.
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    inside = np.zeros(len(xy), bool)
    for s in range(0, len(xy), chunk):
        p = xy[s : s + chunk]
        hit = np.zeros(len(p), bool)
        for poly in polygons:
            ext = np.asarray(poly["exterior"], np.float64)
            lo, hi = ext.min(0), ext.max(0)
            box = (p[:, 0] >= lo[0]) & (p[:, 0] <= hi[0]) & (p[:, 1] >= lo[1]) & (p[:, 1] <= hi[1])
            if not box.any():
                continue
            q = p[box]
            ok = _in_ring(q, ext)
            for hole in poly["holes"]:  # type: ignore[union-attr]
                ok &= ~_in_ring(q, np.asarray(hole, np.float64))
            hit[np.flatnonzero(box)[ok]] = True
        inside[s : s + chunk] = hit
    return inside


def annotation_mask(
    polygons: list[dict[str, object]],
    dimensions: tuple[int, int],
    *,
    max_side: int = 2048,
    source: str | Path | None = None,
) -> TissueMask:
    """The annotations rasterised as a :class:`TissueMask` over a slide of level-0
    ``dimensions`` (``(width, height)``), at most ``max_side`` pixels on its longer side; its
    ``polygons`` are the annotations themselves, so ``tissue.geojson`` gives them back.

    Raises
    ------
    DataError
        No annotation overlaps the slide (coordinates of another slide, or not level-0 pixels).
    """
    import cv2

    W, H = dimensions
    ds = max(1.0, max(W, H) / max_side)
    w, h = max(1, round(W / ds)), max(1, round(H / ds))
    scale = np.array([w / W, h / H])
    mask = np.zeros((h, w), np.uint8)
    for poly in polygons:
        cv2.fillPoly(mask, [np.round(np.asarray(poly["exterior"]) * scale).astype(np.int32)], 1)
        for hole in poly["holes"]:  # type: ignore[union-attr]
            cv2.fillPoly(mask, [np.round(np.asarray(hole) * scale).astype(np.int32)], 0)
    if not mask.any():
        pts = np.concatenate([np.asarray(p["exterior"]) for p in polygons])
        lo, hi = pts.min(0), pts.max(0)
        raise DataError(
            f"--geojson-in {source}: the annotations (x {lo[0]:.0f}..{hi[0]:.0f}, y "
            f"{lo[1]:.0f}..{hi[1]:.0f}) do not overlap the slide ({W} x {H} px at level 0); "
            f"are they this slide's, in level-0 pixels?"
        )
    provenance = {
        "method": "geojson",
        "file": str(Path(source).resolve()) if source else None,
        "sha256": file_digest(source) if source else None,
        "n_polygons": len(polygons),
        "downsample": [W / w, H / h],
    }
    return TissueMask(mask.astype(bool), (W / w, H / h), list(polygons), None, float("nan"),
                      provenance)  # fmt: skip
