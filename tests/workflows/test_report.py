"""The one report writer: grouped tables beside chance and baseline, inline images, warnings,
provenance; the page parses and every image decodes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")


def parse_report(page: str):
    """Tags (checked balanced), text, and the inline images of an HTML page."""
    from html.parser import HTMLParser

    void = {"meta", "img", "br", "hr", "link", "input"}

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.text, self.images, self.tags = [], [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            elif tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
            self.stack.pop()

        def handle_data(self, data):
            self.text.append(data)

    p = P()
    p.feed(page)
    p.close()
    assert p.stack == [], p.stack
    return p.tags, " ".join(p.text), p.images


def decode_images(srcs):
    import base64
    import io

    from PIL import Image

    sizes = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        im.load()
        sizes.append(im.size)
    return sizes


def test_warnings_for_collapsed_embeddings_and_chance_retrieval(caplog):
    from histoxmodal.workflows.report import embedding_warnings, first_component_fraction

    rng = np.random.default_rng(0)
    healthy = rng.standard_normal((50, 8))
    collapsed = np.outer(rng.standard_normal(50), np.ones(8)) + 0.1 * healthy
    assert first_component_fraction(collapsed) > 0.99 > 0.3 > first_component_fraction(healthy)
    metrics = {"retrieval.full.i2g.recall@10": 0.2, "retrieval.full.g2i.recall@10": 0.9}
    with caplog.at_level("WARNING"):
        w = embedding_warnings({"image": healthy, "gene": collapsed}, metrics, 50)
    assert len(w) == 2 and "gene embeddings have collapsed" in w[0] and "99.3 %" in w[0]
    assert "image → gene retrieval is at chance" in w[1] and "10/50" in w[1]
    assert [rec.getMessage() for rec in caplog.records] == w
    assert embedding_warnings({"image": healthy}, {"retrieval.full.i2g.recall@10": 0.6}, 50) == []


def test_cohort_report_pivots_losses_beside_chance(tmp_path):
    from histoxmodal.workflows.report import write_cohort_report

    def result(loss, acc, rec):
        return {
            "metrics": {
                f"zero_shot.{loss}.report.accuracy@k10": acc,
                f"zero_shot.{loss}.report.accuracy@k10_chance": 0.1,
                f"retrieval.{loss}.cxr_to_ecg.recall@5": rec,
                f"retrieval.{loss}.cxr_to_ecg.recall@5_chance": 5 / 24,
            },
            "protocol": {
                "run": str(tmp_path / f"run_{loss}"), "dataset": str(tmp_path / "cohort"),
                "split_sha256": "ab" * 32, "n_test": 24, "k": 10, "chance": 0.1, "seed": 0,
                "config": {"loss": {"name": loss}},
            },
        }  # fmt: skip

    write_cohort_report(
        tmp_path / "r.html", [result("symile", 0.4583, 0.5), result("clip_pairwise", 0.125, 0.25)]
    )
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    tags, text, images = parse_report(page)
    assert images == [] and tags.count("table") == 3  # zero-shot, retrieval, provenance
    assert "<th>symile</th><th>clip_pairwise</th><th>chance</th>" in page
    assert "report given the others, accuracy among 10" in text
    assert '<td class="num">0.4583</td><td class="num">0.1250</td><td class="num">0.1000</td>' in (
        page
    )
    assert f'<td class="num">{5 / 24:.4f}</td>' in page and "ab" * 32 in text
    # clip_pairwise at 0.125 among 10 on 24 patients is within chance: warned
    assert "clip_pairwise: zero-shot accuracy is at chance" in text
    assert "symile: zero-shot" not in text


def test_html_is_escaped(tmp_path):
    from histoxmodal.workflows.report import Report, Row, Table, write_report

    write_report(
        tmp_path / "r.html",
        Report(
            "<script>x</script>", "a & b",
            tables=[Table("T", "e", ["value"], [Row("<b>", [float("nan")])])],
        ),
    )  # fmt: skip
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    assert '<td class="num">n/a</td>' in page
    parse_report(page)


def test_embedding_pca_names_missing_labels_and_counts_each(tmp_path):
    import numpy as np

    from histoxmodal.workflows.report import embedding_figure

    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    labels = np.array(["tumour"] * 10 + ["stroma"] * 12 + [np.nan] * 8, dtype=object)
    fig = embedding_figure(za, zb, {"cluster": labels})
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["stroma (12)", "tumour (10)", "no cluster (8)"]
    assert not any("nan" in t for t in legend)
    fig.savefig(tmp_path / "pca.png")  # the constrained layout renders


def test_expression_map_says_when_its_colour_range_is_clipped():
    import numpy as np

    from histoxmodal.workflows.report import MAP_CMAP, expression_map_figure

    thumb = np.full((200, 200, 3), 230, np.uint8)
    xs, ys = np.meshgrid(np.arange(50, 150, 10) + 5.0, np.arange(50, 150, 10) + 5.0)
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    # percentiles by default: the colour bar says so when values fall outside its range
    values = np.r_[np.zeros(len(xy) - 1), 100.0]
    fig = expression_map_figure(thumb, xy, values, 10, title="g", um_per_px=None)
    assert "clipped to 1st-99th percentile" in fig.axes[1].get_ylabel()
    assert fig.axes[0].collections[0].get_cmap().name == MAP_CMAP
    # given limits that hold every value: no clipping note
    fig = expression_map_figure(thumb, xy, values, 10, title="g", um_per_px=None, vmin=0, vmax=100)
    assert "clipped" not in fig.axes[1].get_ylabel()


def test_measured_and_predicted_maps_are_the_same_size_under_the_title(data_dir):
    """Each gene's two maps are drawn at one size (the colour bar has its own column), and the
    first row starts right under the figure's title: no empty band."""
    import io

    import numpy as np
    from PIL import Image

    from histoxmodal.workflows.report import expression_maps_figure

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(data_dir / "her2st/images/C5.jpg") as im:
        thumb = np.asarray(im.reduce(8).convert("RGB"))
    h, w = thumb.shape[:2]
    xs, ys = np.meshgrid(np.arange(60, w - 60, 25.0), np.arange(60, h - 60, 25.0))
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    rng = np.random.default_rng(0)
    measured = rng.random((len(xy), 3)) * 3
    predicted = measured + rng.normal(0, 1, measured.shape)
    genes = ["ERBB2", "GAPDH", "KRT19"]
    fig = expression_maps_figure(
        thumb, xy, measured, predicted, genes, 25.0, um_per_px=5.5, section="C5"
    )
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png", dpi=90, bbox_inches="tight")  # as the report does
    fig.canvas.draw()
    maps = [a for a in fig.axes if a.get_images()]
    assert len(maps) == 6
    for i in range(3):
        m, p = (a.get_position(original=False) for a in maps[2 * i : 2 * i + 2])
        assert (m.width, m.height) == pytest.approx((p.width, p.height), abs=1e-6)
        assert m.y0 == pytest.approx(p.y0, abs=1e-6)
        # the map fills its row: the image's aspect, not a box letterboxed inside the cell
        cell = maps[2 * i].get_subplotspec().get_position(fig)
        assert p.height > 0.9 * cell.height
    # the first row's titles sit just under the figure's title (was 80 px of white at 90 dpi)
    renderer = fig.canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    map_title_top = maps[0].title.get_window_extent(renderer).y1
    assert 0 <= title_bottom - map_title_top < 0.15 * fig.dpi
    assert fig.get_figheight() * fig.dpi > 3 * maps[0].get_window_extent(renderer).height
