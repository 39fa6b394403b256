"""Radiology reader on the real NIH PNGs, SIIM and CT DICOMs; MONOCHROME1 and NIfTI generated."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from histoxmodal.errors import ConfigError
from histoxmodal.io.radiology import (
    RadiologyReadError,
    radiology_to_unit,
    read_radiology,
    window_range,
)

pydicom = pytest.importorskip("pydicom")

SIIM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def cxr(data_dir):
    return data_dir / "cxr"


@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_nih_png(cxr, name):
    img = read_radiology(cxr / name)
    ref = np.asarray(Image.open(cxr / name))
    assert img.shape == (512, 512) and img.pixels.dtype == np.float32
    np.testing.assert_array_equal(img.pixels, ref.astype(np.float32))
    assert img.modality == "PNG" and img.source_format == "png" and img.spacing is None
    assert img.window == (128.0, 256.0) and img.metadata["window_source"] == "bit depth"
    np.testing.assert_allclose(radiology_to_unit(img), ref / 255.0, atol=1e-6)


def test_rgb_png_is_converted_to_grey(cxr, tmp_path):
    grey = np.asarray(Image.open(cxr / "00000001_000.png"))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    img = read_radiology(tmp_path / "rgb.png")
    np.testing.assert_array_equal(img.pixels, grey.astype(np.float32))


def test_siim_dicom(cxr):
    img = read_radiology(cxr / SIIM)
    ds = pydicom.dcmread(cxr / SIIM)
    assert img.modality == "CR" and img.shape == (1024, 1024) and img.view == "PA"
    assert img.patient_id == "16d7f894-55d7-4d95-8957-d18987f0e981"
    assert img.study_id == "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818"
    assert img.spacing == (0.168, 0.168) and img.source_format == "dicom"
    assert img.acquired_at == datetime(1901, 1, 1)  # the anonymised StudyDate, as written
    np.testing.assert_array_equal(img.pixels, ds.pixel_array.astype(np.float32))
    assert img.metadata["body_part"] == "CHEST" and not img.metadata["inverted"]


def test_siim_resized_and_unit(cxr):
    img = read_radiology(cxr / SIIM, size=(256, 256), unit=True)
    assert img.shape == (256, 256) and img.spacing == pytest.approx((0.672, 0.672))
    assert img.pixels.min() >= 0 and img.pixels.max() <= 1
    full = read_radiology(cxr / SIIM)
    # a 4 x 4 block average and the anti-aliased bilinear shrink agree on smooth anatomy
    blocks = full.pixels.reshape(256, 4, 256, 4).mean(axis=(1, 3)) / 255
    assert np.median(np.abs(img.pixels - blocks)) < 0.01


def test_ct_in_hounsfield_units(cxr):
    img = read_radiology(cxr / "CT_small.dcm")
    ds = pydicom.dcmread(cxr / "CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.pixels, hu.astype(np.float32))
    assert img.modality == "CT" and img.patient_id == "1CT1" and img.shape == (128, 128)
    assert img.spacing == (0.661468, 0.661468)
    assert img.acquired_at == datetime(1997, 4, 30, 11, 29, 36)
    assert img.window is None and img.metadata["window_source"] == "data range"
    unit = radiology_to_unit(img)
    assert unit.min() == 0 and unit.max() == 1


def test_window_matches_dicom_and_monai(cxr):
    img = read_radiology(cxr / "CT_small.dcm", window=(40, 400))
    assert img.window == (40.0, 400.0) and img.metadata["window_source"] == "argument"
    lo, hi = window_range(img.window)
    assert (lo, hi) == (-160.0, 239.0)
    unit = radiology_to_unit(img)
    expected = np.clip((img.pixels - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    monai = pytest.importorskip("monai.transforms")
    ref = monai.ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(
        img.pixels[None]
    )
    np.testing.assert_allclose(unit, np.asarray(ref)[0], atol=1e-6)


def test_monochrome1_is_inverted(cxr, tmp_path):
    ds = pydicom.dcmread(cxr / SIIM)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    orig = read_radiology(cxr / SIIM)
    inv = read_radiology(tmp_path / "mono1.dcm")
    assert inv.metadata["inverted"] and inv.metadata["photometric"] == "MONOCHROME1"
    np.testing.assert_array_equal(inv.pixels, 255 - orig.pixels)


def test_monochrome1_header_window_is_mirrored(cxr, tmp_path):
    ds = pydicom.dcmread(cxr / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(tmp_path / "mono2.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    m2 = read_radiology(tmp_path / "mono2.dcm")
    m1 = read_radiology(tmp_path / "mono1.dcm")
    assert m2.window == (40.0, 400.0) and m2.metadata["window_source"] == "header"
    # stored range -32768..32767 -> HU -33792..31743; x' = -2049 - x
    np.testing.assert_array_equal(m1.pixels, -2049 - m2.pixels)
    np.testing.assert_allclose(radiology_to_unit(m1), 1 - radiology_to_unit(m2), atol=1e-6)


def test_dicom_series_folder_is_stacked_by_position(cxr, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    base = pydicom.dcmread(cxr / "CT_small.dcm")
    for name, z, offset in [("b.dcm", -65.7, 100), ("a.dcm", -75.7, 0), ("c.dcm", -70.7, 50)]:
        ds = pydicom.dcmread(cxr / "CT_small.dcm")
        ds.ImagePositionPatient = [-158.135803, -179.035797, z]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        arr = base.pixel_array.astype(np.int16) + offset
        ds.PixelData = arr.tobytes()
        ds.save_as(series / name)
    vol = read_radiology(series)
    assert vol.shape == (3, 128, 128) and vol.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    hu = base.pixel_array.astype(np.float32) - 1024
    for k, offset in enumerate([0, 50, 100]):  # ordered by z: -75.7, -70.7, -65.7
        np.testing.assert_array_equal(vol.pixels[k], hu + offset)
    assert vol.metadata["files"] == ["a.dcm", "c.dcm", "b.dcm"]
    small = read_radiology(series, size=(2, 64, 64))
    assert small.shape == (2, 64, 64) and small.spacing == pytest.approx((7.5, 1.322936, 1.322936))


def test_nifti_volume_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)  # (x, y, z)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "vol.nii.gz")
    img = read_radiology(tmp_path / "vol.nii.gz")
    assert img.shape == (4, 5, 6) and img.source_format == "nifti"  # (D, H, W) = (z, y, x)
    np.testing.assert_array_equal(img.pixels, data.transpose(2, 1, 0))
    assert img.spacing == pytest.approx((2.0, 0.7, 0.5))
    np.testing.assert_allclose(img.metadata["affine"], affine)


def test_bad_inputs(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_radiology(tmp_path / "missing.dcm")
    with pytest.raises(RadiologyReadError, match="read_ecg"):
        read_radiology(data_dir / "ecg" / "waveform_ecg.dcm")
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.raises(RadiologyReadError, match="x.txt"):
        read_radiology(txt)
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png")
    with pytest.raises(RadiologyReadError, match="fake.png"):
        read_radiology(fake)
    with pytest.raises(ConfigError, match="center, width"):
        read_radiology(data_dir / "cxr" / "CT_small.dcm", window=(40,))
    with pytest.raises(ConfigError, match="size="):
        read_radiology(data_dir / "cxr" / "CT_small.dcm", size=(0, 10))


def test_text_file_named_dcm_is_not_a_dicom_file(tmp_path):
    p = tmp_path / "report.dcm"
    p.write_text("FINDINGS: no acute cardiopulmonary process.\n")
    with pytest.raises(RadiologyReadError) as e:
        read_radiology(p)
    msg = str(e.value)
    assert str(p) in msg and "not a DICOM file" in msg and "DICM" in msg
    assert "pixel data" not in msg


def test_text_file_named_dcm_in_a_series_folder_is_named(cxr, tmp_path):
    (tmp_path / "a.dcm").write_bytes((cxr / "CT_small.dcm").read_bytes())
    (tmp_path / "b.dcm").write_text("not an image\n")
    with pytest.raises(RadiologyReadError) as e:
        read_radiology(tmp_path)
    assert str(tmp_path / "b.dcm") in str(e.value) and "not a DICOM file" in str(e.value)


def test_dicom_without_preamble_still_read_as_dicom(cxr, tmp_path):
    """A dataset without preamble and file meta is still DICOM; only non-DICOM is refused."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from histoxmodal.io.radiology import read_dicom_dataset

    ds = pydicom.dcmread(cxr / "CT_small.dcm")
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    p = tmp_path / "raw.dcm"
    p.write_bytes(buf.getvalue())
    assert p.read_bytes()[128:132] != b"DICM"
    back = read_dicom_dataset(p, stop_before_pixels=True)
    assert back.Modality == "CT" and back.SOPInstanceUID == ds.SOPInstanceUID


def _cr(tmp_path, name, **elements):
    """A 16-bit CR radiograph 64 x 64 with values 0..4095 and the given header elements."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    px = (np.arange(64 * 64).reshape(64, 64) * 4095 // (64 * 64 - 1)).astype(np.uint16)
    ds.Modality, ds.PixelRepresentation, ds.BitsStored, ds.HighBit = "CR", 0, 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.Rows, ds.Columns = px.shape
    ds.PixelData = px.tobytes()
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.save_as(tmp_path / name)
    return tmp_path / name, px.astype(np.float64)


def test_sigmoid_voi_function_is_applied(tmp_path):
    path, x = _cr(tmp_path, "sig.dcm", WindowCenter=2048, WindowWidth=1000,
                  VOILUTFunction="SIGMOID")  # fmt: skip
    img = read_radiology(path)
    assert img.metadata["voi_transform"] == "sigmoid"
    want = 1 / (1 + np.exp(-4 * (x - 2048) / 1000))  # PS3.3 C.11.2.1.3.1, scaled to 0..1
    np.testing.assert_allclose(radiology_to_unit(img), want, atol=2e-4)
    # an explicit window is the linear one, as asked
    lo, hi = window_range((2048, 1000))
    lin = np.clip((x - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(read_radiology(path, window=(2048, 1000), unit=True).pixels, lin,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(radiology_to_unit(img, window=(2048, 1000)), lin, atol=1e-6)
    # MONOCHROME1: bright = dense still holds after the sigmoid
    path1, _ = _cr(tmp_path, "sig1.dcm", WindowCenter=2048, WindowWidth=1000,
                   VOILUTFunction="SIGMOID", PhotometricInterpretation="MONOCHROME1")  # fmt: skip
    np.testing.assert_allclose(radiology_to_unit(read_radiology(path1)), 1 - want, atol=2e-4)


def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    table = (np.sqrt(np.linspace(0, 1, 256)) * 4095).astype(np.uint16)  # a gamma-like LUT
    item = Dataset()
    item.LUTDescriptor = [256, 1000, 12]  # 256 entries, first value mapped 1000, 12-bit output
    item.add_new(0x00283006, "US", table.tolist())  # LUTData
    path, x = _cr(tmp_path, "lut.dcm", WindowCenter=2048, WindowWidth=4096,
                  VOILUTSequence=[item])  # fmt: skip
    img = read_radiology(path)
    assert img.metadata["voi_transform"] == "lut"
    # by hand: values below the first mapped one take the first entry, above the last the last
    want = table[np.clip(x - 1000, 0, 255).astype(int)] / 4095.0
    np.testing.assert_allclose(radiology_to_unit(img), want, atol=1e-6)
    assert read_radiology(path, unit=True).pixels.max() == pytest.approx(1.0)


def test_linear_voi_function_keeps_the_window(tmp_path):
    path, x = _cr(tmp_path, "lin.dcm", WindowCenter=2048, WindowWidth=1000,
                  VOILUTFunction="LINEAR")  # fmt: skip
    img = read_radiology(path)
    assert img.metadata["voi_transform"] == "linear" and "voi_table" not in img.metadata
    lo, hi = window_range((2048, 1000))
    np.testing.assert_allclose(radiology_to_unit(img), np.clip((x - lo) / (hi - lo), 0, 1),
                               atol=1e-6)  # fmt: skip
