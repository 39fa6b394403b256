"""Slide readers on real files (OpenSlide fixtures, an Aperio SVS, a her2st JPEG) and
generated TIFFs, checked against pixels read another way."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal import open_slide
from histoxmodal.errors import MppError, SlideOpenError, SlideReadError


def test_aperio_svs_metadata_and_pixels(cmu_svs):
    import openslide

    with open_slide(cmu_svs) as s:
        assert s.name == "openslide" and s.vendor == "aperio"
        assert s.dimensions == (2220, 2967) and s.level_count == 1
        assert s.mpp == pytest.approx(0.499)
        assert s.mpp_info.source == "metadata"
        assert s.mpp_info.detail.startswith("openslide.mpp-x")
        region = s.read_region((1000, 1500), 0, (64, 48))
    ref = openslide.OpenSlide(str(cmu_svs)).read_region((1000, 1500), 0, (64, 48))
    assert region.shape == (48, 64, 3) and region.dtype == np.uint8
    np.testing.assert_array_equal(region, np.asarray(ref.convert("RGB")))


def test_region_outside_slide_is_white(cmu_svs):
    with open_slide(cmu_svs) as s:
        region = s.read_region((2200, 2950), 0, (40, 40))
    assert (region[30:, :] == 255).all() and (region[:, 30:] == 255).all()
    assert (region[:17, :17] != 255).any()


def test_dicom_wsi_two_files_one_slide(data_dir):
    fx = data_dir / "wsi" / "openslide-fixtures"
    a, b = open_slide(fx / "boxes_0.dcm"), open_slide(fx / "boxes_1.dcm")
    assert a.vendor == b.vendor == "dicom"
    assert a.dimensions == b.dimensions == (16, 16)
    assert a.mpp == pytest.approx(0.499)
    np.testing.assert_array_equal(
        a.read_region((0, 0), 0, (16, 16)), b.read_region((0, 0), 0, (16, 16))
    )
    folder = open_slide(fx)  # a folder of .dcm files opens as the DICOM WSI
    assert folder.vendor == "dicom"


def test_implausible_mpp_refused_then_overridden(data_dir):
    boxes = data_dir / "wsi" / "openslide-fixtures" / "boxes.tiff"
    with pytest.raises(MppError) as e:
        open_slide(boxes)
    msg = str(e.value)
    assert "352.8" in msg and "--mpp" in msg and "allow_implausible_mpp" in msg
    s = open_slide(boxes, allow_implausible_mpp=True)
    assert s.mpp == pytest.approx(352.78, rel=1e-3)
    assert s.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
    u = open_slide(boxes, mpp=0.5)
    assert u.mpp == 0.5 and u.mpp_info.source == "user"
    assert u.mpp_info.metadata_mpp == pytest.approx(352.78, rel=1e-3)
    with pytest.raises(MppError, match="implausible"):
        open_slide(boxes, mpp=50.0)
    with pytest.raises(MppError, match="positive"):
        open_slide(boxes, mpp=-1.0)


def test_her2st_jpeg_without_mpp(data_dir):
    from PIL import Image

    path = data_dir / "her2st" / "images" / "B4.jpg"
    s = open_slide(path)
    assert s.name == "pillow" and s.mpp is None and s.mpp_info.source == "unknown"
    assert s.dimensions == (9272, 9923)
    assert s.level_dimensions[3] == (1159, 1241)  # ceil(9272 / 8), ceil(9923 / 8)
    with pytest.raises(MppError) as e:
        s.require_mpp()
    assert "--mpp" in str(e.value) and "B4.jpg" in str(e.value)
    thumb = s.get_thumbnail(max_size=500)
    assert thumb.shape == (500, 467, 3)
    assert not s._levels.get(0) is not None  # the thumbnail never decoded level 0
    region = s.read_region((4000, 5000), 0, (128, 96))
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        ref = np.asarray(im.crop((4000, 5000, 4128, 5096)).convert("RGB"))
    # two libjpeg builds may round the IDCT differently by a level or so
    assert np.abs(region.astype(int) - ref).mean() < 1.0


def test_generated_tiff_openslide_and_tifffile_agree(small_slide):
    a = open_slide(small_slide.path)
    b = open_slide(small_slide.path, reader="tifffile")
    assert a.name == "openslide" and a.vendor == "generic-tiff" and b.name == "tifffile"
    assert a.level_dimensions == b.level_dimensions == small_slide.level_dimensions
    assert a.mpp == pytest.approx(0.25) and b.mpp == pytest.approx(0.25)
    for level, (x, y) in [(0, (1000, 700)), (2, (1024, 512))]:
        ra = a.read_region((x, y), level, (200, 150))
        rb = b.read_region((x, y), level, (200, 150))
        assert np.abs(ra.astype(int) - rb).mean() < 1.0


@pytest.mark.parametrize("which", ["generated", "svs"])
def test_tifffile_decoder_gives_openslides_pixels(which, small_slide, cmu_svs):
    """Plain tiled TIFFs and Aperio SVS decode with tifffile, byte-identical to OpenSlide."""
    path = small_slide.path if which == "generated" else cmu_svs
    with open_slide(path) as s:
        assert s.name == "openslide" and s.decoder == "tifffile"
        w, h = s.dimensions
        rng = np.random.default_rng(0)
        reads = [(0, (x, y), (97, 61)) for x, y in rng.integers(-50, min(w, h), (12, 2))]
        reads += [(0, (w - 40, h - 30), (90, 80)), (0, (-20, -10), (64, 64))]
        for level in range(1, s.level_count):
            ds = int(s.level_downsamples[level])
            reads += [(level, (ds * 37, ds * 11), (120, 90)), (level, (ds * 37 + 1, 5), (50, 40))]
        for level, (x, y), (rw, rh) in reads:
            got = s.read_region((x, y), level, (rw, rh))
            ref = s._read_openslide(x, y, level, rw, rh)
            np.testing.assert_array_equal(got, ref, err_msg=f"level {level} at {(x, y)}")


def test_tifffile_decoder_falls_back_when_pixels_differ(small_slide, monkeypatch):
    from histoxmodal.io.slide_readers import TiffSegments

    real = TiffSegments.read
    monkeypatch.setattr(TiffSegments, "read", lambda self, *a: real(self, *a) // 2)
    with open_slide(small_slide.path) as s:
        assert s.decoder == "openslide"
        region = s.read_region((1000, 700), 0, (64, 64))
    with open_slide(small_slide.path, reader="tifffile") as t:
        np.testing.assert_array_equal(region // 2, t.read_region((1000, 700), 0, (64, 64)))


def test_ome_tiff_pyramid_in_subifds(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
    half = base[::2, ::2].copy()
    path = tmp_path / "img.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            base,
            subifds=1,
            tile=(128, 128),
            photometric="rgb",
            metadata={
                "axes": "YXS",
                "PhysicalSizeX": 0.5,
                "PhysicalSizeY": 0.5,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeYUnit": "µm",
            },
        )
        tw.write(half, subfiletype=1, tile=(128, 128), photometric="rgb")
    s = open_slide(path)
    assert s.name == "tifffile" and s.vendor == "ome-tiff"
    assert s.mpp == pytest.approx(0.5) and "OME" in s.mpp_info.detail
    assert s.level_dimensions == ((800, 600), (400, 300))
    np.testing.assert_array_equal(s.read_region((130, 250), 0, (300, 200)), base[250:450, 130:430])
    np.testing.assert_array_equal(s.read_region((200, 100), 1, (50, 40)), half[50:90, 100:150])


def test_striped_tiff_falls_back_to_tifffile(tmp_path):
    import tifffile

    img = np.random.default_rng(1).integers(0, 255, (300, 410, 3), dtype=np.uint8)
    path = tmp_path / "striped.tif"
    tifffile.imwrite(
        path,
        img,
        photometric="rgb",
        rowsperstrip=16,
        resolution=(1e4 / 0.4, 1e4 / 0.4),
        resolutionunit="CENTIMETER",
    )
    s = open_slide(path)
    assert s.name == "tifffile"
    assert s.mpp == pytest.approx(0.4) and "XResolution" in s.mpp_info.detail
    np.testing.assert_array_equal(
        s.read_region((-10, 290), 0, (50, 20))[:10, 10:], img[290:300, 0:40]
    )
    assert (s.read_region((-10, 290), 0, (50, 20))[10:] == 255).all()


def test_read_region_at_mpp_resamples_from_best_level(small_slide):
    import cv2

    s = open_slide(small_slide.path)
    # 0.5 µm/px from a 0.25 µm/px slide: level 1 (downsample 2) is read as is
    assert s.best_level_for_downsample(2.0) == 1
    np.testing.assert_array_equal(
        s.read_region_at_mpp((800, 600), 100, 0.5), s.read_region((800, 600), 1, (100, 100))
    )
    # 0.75 µm/px: level 1 read at 150 px and shrunk to 100
    out = s.read_region_at_mpp((800, 600), 100, 0.75)
    ref = cv2.resize(
        s.read_region((800, 600), 1, (150, 150)), (100, 100), interpolation=cv2.INTER_AREA
    )
    np.testing.assert_array_equal(out, ref)


def test_thumbnail_reads_a_low_level(small_slide, monkeypatch):
    s = open_slide(small_slide.path)
    levels = []
    real = s._read_level_region
    monkeypatch.setattr(
        s,
        "_read_level_region",
        lambda x, y, level, w, h: levels.append(level) or real(x, y, level, w, h),
    )
    t = s.get_thumbnail(max_size=300)
    assert t.shape == (200, 300, 3)
    assert set(levels) == {3}  # 3072 / 8 = 384 px: the coarsest level not below 300 px


def test_bad_inputs(tmp_path, cmu_svs):
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 50)
    with pytest.raises(SlideOpenError, match="notes.svs"):
        open_slide(text)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty"):
        open_slide(empty)
    with pytest.raises(FileNotFoundError, match="missing.svs"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideOpenError, match="folder"):
        open_slide(tmp_path)
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(cmu_svs.read_bytes()[:400_000])
    with pytest.raises((SlideOpenError, SlideReadError), match="truncated"):
        s = open_slide(truncated)
        s.read_region((0, 0), 0, (2220, 2967))


def test_truncated_jpeg(tmp_path, data_dir):
    jpg = tmp_path / "cut.jpg"
    jpg.write_bytes((data_dir / "her2st" / "images" / "C3.jpg").read_bytes()[:100_000])
    s = open_slide(jpg, mpp=1.0)  # the header is intact
    with pytest.raises(SlideReadError, match="cut.jpg"):
        s.read_region((0, 0), 0, (64, 64))


def test_unknown_reader_name_suggests(cmu_svs):
    with pytest.raises(KeyError, match="Did you mean 'openslide'"):
        open_slide(cmu_svs, reader="opneslide")


@pytest.mark.parametrize("bad", ["boxes_0.dcm", "boxes_1.dcm"])
def test_dicom_wsi_without_image_type_says_what_is_missing(data_dir, tmp_path, bad):
    """OpenSlide says "Couldn't get image flavor"; the message names the file and the tag."""
    pydicom = pytest.importorskip("pydicom")
    fx = data_dir / "wsi" / "openslide-fixtures"
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        ds = pydicom.dcmread(fx / name)
        if name == bad:
            del ds.ImageType
        ds.save_as(tmp_path / name)
    with pytest.raises(SlideOpenError) as e:
        open_slide(tmp_path / "boxes_0.dcm")
    msg = str(e.value)
    assert f"DICOM file {tmp_path / bad} has no ImageType (0008,0008)" in msg
    assert "whole-slide" in msg and "truncated or corrupt" not in msg
    assert "\n" not in msg
