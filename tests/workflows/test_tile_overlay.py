"""The tile overlay (tinted mask, tile outlines, legend, scale bar, caption) and tiling inside
QuPath annotations (``--geojson-in``), the round trip with the exported ``tissue.geojson``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from histoxmodal.tiling.spec import TileSpec
from histoxmodal.workflows.tile import OVERLAY_MAX_SIDE, tile_slide


def test_overlay_keeps_the_morphology_and_has_legend_scale_and_caption(cmu_svs, tmp_path):
    import cv2

    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.outputs import TILE_RGB, caption_height

    r = tile_slide(cmu_svs, tmp_path, TileSpec())
    assert r.status == "ok"
    folder = tmp_path / r.name
    overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB"))
    with open_slide(cmu_svs) as s:
        thumb = s.get_thumbnail(max_size=min(OVERLAY_MAX_SIDE, max(s.dimensions)))
    h, w = thumb.shape[:2]
    assert max(h, w) == OVERLAY_MAX_SIDE and overlay.shape == (h + caption_height(w), w, 3)
    # the tissue's pixels keep the H&E's variation under the tint: not one flat colour, and
    # they follow the thumbnail (the tint is an affine blend, outlines aside)
    manifest = json.loads((folder / "manifest.json").read_text())
    mask = np.zeros((h, w), bool)
    from histoxmodal.tiling.annotations import read_geojson_polygons

    for poly in read_geojson_polygons(folder / "tissue.geojson"):
        scale = np.array([w / s.dimensions[0], h / s.dimensions[1]])
        cv2.fillPoly(mask.view(np.uint8), [np.round(poly["exterior"] * scale).astype(np.int32)], 1)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    inner[:, : w // 10] = False  # away from the legend and the scale bar corners
    top = overlay[:h]
    assert inner.sum() > 0.2 * h * w
    assert top[inner].std(axis=0).min() > 15  # H&E contrast survives
    grey_o, grey_t = top[inner].mean(1), thumb[inner].astype(float).mean(1)
    assert np.corrcoef(grey_o, grey_t)[0, 1] > 0.8
    # kept tiles outlined in their colour, caption with the count, mpp and tile size
    assert (np.abs(top.astype(int) - TILE_RGB).sum(-1) < 30).sum() > 100
    band = overlay[h:]
    assert band.min() < 100 and (band == 255).mean() > 0.5  # text on a white band
    assert manifest["n_tiles"] == r.n_tiles > 0


def _centres_in(coords, size, polygon):
    from matplotlib.path import Path as MplPath

    return MplPath(polygon).contains_points(coords + size / 2.0)


def test_geojson_round_trip_tiles_exactly_inside_one_polygon(small_slide, tmp_path):
    spec = TileSpec(tile_px=64, target_mpp=1.0)
    first = tile_slide(small_slide.path, tmp_path / "a", spec)
    gj = json.loads((tmp_path / "a" / first.name / "tissue.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) >= 1
    # keep one region, drawn as QuPath exports it: a list of features, a triangle-ish edit
    feature = max(gj["features"], key=lambda f: len(f["geometry"]["coordinates"][0]))
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    lo, hi = ring.min(0), ring.max(0)
    poly = [[lo[0], lo[1]], [hi[0], lo[1]], [(lo[0] + hi[0]) / 2, hi[1]], [lo[0], lo[1]]]
    feature["geometry"]["coordinates"] = [poly]
    edited = tmp_path / "edited.geojson"
    edited.write_text(json.dumps([feature]))
    r = tile_slide(small_slide.path, tmp_path / "b", spec, geojson_in=edited)
    assert r.status == "ok"
    with h5py.File(tmp_path / "b" / r.name / "coords.h5") as f:
        got = f["coords"][:]
        size = int(f["coords"].attrs["patch_size_level0"])
    from histoxmodal.tiling.grid import grid_coords

    grid = grid_coords((3072, 2048), size, size)
    expected = grid[_centres_in(grid, size, np.asarray(poly)[:-1])]
    assert len(expected) > 5 and np.array_equal(got, expected)
    m = json.loads((tmp_path / "b" / r.name / "manifest.json").read_text())
    assert m["tissue"]["method"] == "geojson" and m["tissue_regions"] == 1
    assert m["params"]["geojson_in"]["path"] == str(edited.resolve())
    # the exported tissue.geojson is the annotation: tiling again with it gives the same tiles
    again = tile_slide(
        small_slide.path,
        tmp_path / "c",
        spec,
        geojson_in=tmp_path / "b" / r.name / "tissue.geojson",
    )
    with h5py.File(tmp_path / "c" / again.name / "coords.h5") as f:
        assert np.array_equal(f["coords"][:], expected)


def test_multipolygon_with_a_hole_in_a_feature_collection(small_slide, tmp_path):
    outer = [[200, 200], [1800, 200], [1800, 1600], [200, 1600], [200, 200]]
    hole = [[600, 600], [1400, 600], [1400, 1200], [600, 1200], [600, 600]]
    other = [[2200, 300], [2900, 300], [2900, 900], [2200, 300]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "MultiPolygon",
                                             "coordinates": [[outer, hole], [other]]}},
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
        ],
    }  # fmt: skip
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(doc))
    spec = TileSpec(tile_px=64, target_mpp=1.0)
    r = tile_slide(small_slide.path, tmp_path / "out", spec, geojson_in=path)
    with h5py.File(tmp_path / "out" / r.name / "coords.h5") as f:
        got, size = f["coords"][:], int(f["coords"].attrs["patch_size_level0"])
    from histoxmodal.tiling.grid import grid_coords

    grid = grid_coords((3072, 2048), size, size)
    inside = (_centres_in(grid, size, outer) & ~_centres_in(grid, size, hole)) | _centres_in(
        grid, size, other
    )
    assert np.array_equal(got, grid[inside]) and inside.sum() > 20


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}', "no geometry"),
        ('[{"type": "Polygon", "coordinates": [[[0, 0], [1, "a"], [2, 2]]]}]', "not numbers"),
        ('{"type": "Point", "coordinates": [1, 2]}', "no Polygon or MultiPolygon"),
    ],
)
def test_malformed_geojson_is_one_line_naming_the_file(small_slide, tmp_path, capsys, text, what):
    from histoxmodal.cli.main import main

    bad = tmp_path / "bad.geojson"
    bad.write_text(text)
    rc = main(
        ["tile", str(small_slide.path), "--out", str(tmp_path / "o"), "--geojson-in", str(bad)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err  # bad data
    assert str(bad) in err and what in err and "Traceback" not in err
    assert not (tmp_path / "o" / "small").exists()


def test_annotations_outside_the_slide_fail_that_slide(small_slide, tmp_path):
    path = tmp_path / "far.geojson"
    far = [[90000, 90000], [91000, 90000], [91000, 91000], [90000, 90000]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [far]}))
    r = tile_slide(small_slide.path, tmp_path / "o", TileSpec(), geojson_in=path)
    assert r.status == "failed" and "do not overlap the slide (3072 x 2048" in r.reason


def test_overlay_reuses_the_detection_thumbnail_when_large_enough(monkeypatch):
    """Tiling reads the slide's thumbnail once: the overlay is drawn on the detection's own
    image when that reaches 3/4 of the overlay's size, and reads a new one only otherwise."""
    from histoxmodal.io.slide_readers import ArraySlide
    from histoxmodal.tiling.outputs import overlay_thumbnail
    from histoxmodal.tiling.tissue import TissueMask

    slide = ArraySlide(np.zeros((6000, 8000, 3), np.uint8), mpp=0.5)
    reads = []
    monkeypatch.setattr(
        slide, "get_thumbnail", lambda max_size: reads.append(max_size) or np.zeros((3, 4, 3))
    )
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)
    got = overlay_thumbnail(slide, TissueMask(big[..., 0] > 0, (4.0, 4.0), thumbnail=big), 1536)
    assert got.shape == (1152, 1536, 3) and reads == []
    # area averaging of the detection image: the mean colour is kept
    np.testing.assert_allclose(got.mean((0, 1)), big.mean((0, 1)), atol=0.5)
    near = big[:1125, :1500]  # 1,500 px of 1,536: used as it is
    assert overlay_thumbnail(slide, TissueMask(near[..., 0] > 0, (5.3, 5.3), thumbnail=near),
                             1536) is near  # fmt: skip
    small = big[:750, :1000]  # a third too small: the slide is read again
    got = overlay_thumbnail(slide, TissueMask(small[..., 0] > 0, (8.0, 8.0), thumbnail=small), 1536)
    assert reads == [1536] and got.shape == (3, 4, 3)
