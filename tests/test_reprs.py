"""Notebook-friendly objects: one-line reprs with the key facts, HTML with a PNG thumbnail
(issue 13). Real sample data: the CMU-1-Small-Region slide and a her2st H&E image."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    p.close()
    return p


def _decode_png(src: str):
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    raw = base64.b64decode(src[len(prefix) :], validate=True)
    assert raw.startswith(PNG_MAGIC)
    im = Image.open(io.BytesIO(raw))
    im.load()
    assert im.format == "PNG" and max(im.size) <= 256
    return im


@pytest.fixture(scope="module")
def cmu(cmu_svs: Path):
    pytest.importorskip("openslide")
    from histoxmodal.io.slide import open_slide

    with open_slide(cmu_svs) as s:
        yield s


def test_slide_repr_and_html(cmu) -> None:
    text = repr(cmu)
    assert text == (
        "OpenSlideReader('CMU-1-Small-Region.svs', 2220×2967 px, 1 level, 0.499 µm/px "
        "(metadata), vendor='aperio')"
    )
    assert len(text) < 200
    page = _parse(cmu._repr_html_())
    assert "table" in page.tags and len(page.imgs) == 1
    im = _decode_png(page.imgs[0])
    assert im.size == (round(2220 * 256 / 2967), 256)
    joined = " ".join(page.text)
    assert "2220 × 2967 px" in joined and "1.11 × 1.48 mm" in joined


def test_her2st_image_repr_and_html(data_dir: Path) -> None:
    from histoxmodal.io.slide import open_slide

    with open_slide(data_dir / "her2st" / "images" / "B4.jpg") as s:
        assert repr(s) == (
            "PillowReader('B4.jpg', 9272×9923 px, 4 levels, ? µm/px (unknown), vendor='jpeg')"
        )
        page = _parse(s._repr_html_())
        assert _decode_png(page.imgs[0]).size[1] == 256
    with open_slide(data_dir / "her2st" / "images" / "C2.jpg", mpp=1.0) as s:
        text = repr(s)
        assert ", 1 µm/px (user), vendor='jpeg')" in text and len(text) < 200


def test_tissue_mask_repr(cmu) -> None:
    from histoxmodal.tiling.tissue import detect_tissue

    mask = detect_tissue(cmu)
    h, w = mask.mask.shape
    pct = 100 * mask.mask.mean()
    mpp = mask.provenance["mask_mpp"]
    text = repr(mask)
    assert text == (
        f"TissueMask({w}×{h} px at {mpp:.4g} µm/px, tissue {pct:.1f} %, 1 region, "
        f"method='background-hysteresis')"
    )
    assert text == (
        "TissueMask(766×1024 px at 1.446 µm/px, tissue 39.6 %, 1 region, "
        "method='background-hysteresis')"
    )
    assert len(text) < 200 and "array" not in text


def test_tissue_mask_repr_without_provenance() -> None:
    from histoxmodal.tiling.tissue import TissueMask

    m = TissueMask(np.ones((4, 8), bool), (2.0, 2.0))
    assert repr(m) == "TissueMask(8×4 px at /2, tissue 100.0 %, 0 regions)"


@pytest.fixture(scope="module")
def cmu_tiles(cmu_svs: Path, tmp_path_factory):
    pytest.importorskip("openslide")
    from histoxmodal.tiling import TileSpec
    from histoxmodal.workflows.tile import tile_slide

    out = tmp_path_factory.mktemp("tiles")
    r = tile_slide(cmu_svs, out, TileSpec())
    return Path(r.out_dir)


def test_tile_set_repr_and_html(cmu_tiles: Path) -> None:
    from histoxmodal.tiling.outputs import load_tiles

    with load_tiles(cmu_tiles) as ts:
        text = repr(ts)
        assert text == (
            "TileSet(49 tiles of 224 px at 0.499 µm/px, slide='CMU-1-Small-Region', "
            "tissue 0.65 mm²)"
        )
        assert len(text) < 200
        page = _parse(ts._repr_html_())
        assert "table" in page.tags and len(page.imgs) == 1
        _decode_png(page.imgs[0])  # overlay.png, shrunk
        joined = " ".join(page.text)
        assert "112 µm (224 level-0 px)" in joined and "not stored" in joined
        ts.folder = None  # no overlay: the slide's thumbnail with the tiles drawn
        outlined = _decode_png(_parse(ts._repr_html_()).imgs[0])
        rgb = np.asarray(outlined.convert("RGB"))
        assert ((rgb == (31, 119, 180)).all(-1)).sum() > 100


def test_reprs_never_raise() -> None:
    from histoxmodal.io.slide_readers import ArraySlide
    from histoxmodal.tiling.outputs import TileSet

    s = ArraySlide(np.full((40, 60, 3), 200, np.uint8), mpp=0.5, name="x.png")
    assert repr(s) == "ArraySlide('x.png', 60×40 px, 1 level, 0.5 µm/px (user), vendor='array')"
    s.level_dimensions = ()  # broken: dimensions raise
    assert repr(s).startswith("ArraySlide('x.png', 0×0 px")
    html = s._repr_html_()
    assert html.startswith("<pre>") and "ArraySlide(" in html
    ts = TileSet(np.zeros((2, 2), np.int64), np.ones(2), {}, {})
    assert repr(ts) == "TileSet(2 tiles of ? px at ? µm/px, slide='?')"
    _parse(ts._repr_html_())
    broken = TileSet(None, None, None, None)  # type: ignore[arg-type]
    assert repr(broken).startswith("<TileSet object at 0x")
    assert broken._repr_html_().startswith("<pre>&lt;TileSet object at")


def test_run_repr(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lightning")
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.run import Run

    tiny = {
        "genes": 12,
        "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
        "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
    }
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=24, n_genes=30)
    run = Run.create(tmp_path / "r", config_from_dict(tiny), data=data)
    run.write_identity()
    for name in ("expression_ridge", "expression_mlp"):
        (tmp_path / "r" / "heads" / name).mkdir(parents=True)
    text = repr(run)
    where = str(tmp_path / "r") if len(str(tmp_path / "r")) <= 48 else f"…/{tmp_path.name}/r"
    assert text == (
        f"Run({where!r}, spatial, 12 genes, image='test_uni', loss='clip', fold='random', "
        "heads=['expression_mlp', 'expression_ridge'], unfinished)"
    )
    assert len(text) < 200 and "array" not in text


def test_mil_run_repr(tmp_path: Path) -> None:
    from histoxmodal.workflows.mil import MILRun

    info = {
        "target": "her2",
        "classes": ["neg", "pos"],
        "model": "abmil",
        "protocol": {"encoder": {"encoder": "test_uni", "dim": 8}},
        "slides": [f"s{i}" for i in range(12)],
    }
    r = MILRun(Path("runs/mil"), info, head=None)
    text = repr(r)
    assert text == (
        "MILRun('runs/mil', target='her2', classes=['neg', 'pos'], model='abmil', "
        "encoder='test_uni', 12 slides)"
    )
    assert len(text) < 200
    assert repr(MILRun(Path("m"), None, None)).startswith("<MILRun object at 0x")  # type: ignore[arg-type]
