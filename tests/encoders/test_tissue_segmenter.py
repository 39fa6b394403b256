"""Deep tissue segmenters: the registry behind detect_tissue(method="deep:..."), weights loaded
from a saved file through the real path, provenance, and tiling staying free of torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from histoxmodal.errors import ConfigError
from histoxmodal.io.slide_readers import ArraySlide
from histoxmodal.tiling.tissue import (
    TissueParams,
    create_tissue_segmenter,
    detect_tissue,
    list_tissue_segmenters,
)


def _slide() -> ArraySlide:
    img = np.full((256, 320, 3), 240, np.uint8)
    img[60:200, 80:260] = (190, 100, 170)
    return ArraySlide(img, mpp=8.0, name="toy")


def _saved(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = create_tissue_segmenter("test_unet_tiny")
    state = {k: v.clone() for k, v in ref.model.state_dict().items()}
    # a tissue-favouring bias on the last layer, so the saved model differs from a fresh one
    state["head.bias"] = torch.tensor([-0.5, 0.5])
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


def test_registry_lists_and_suggests():
    assert {"unet", "test_unet_tiny"} <= set(list_tissue_segmenters())
    with pytest.raises(KeyError, match="Did you mean 'unet'"):
        create_tissue_segmenter("unett")
    with pytest.raises(ConfigError, match="needs weights="):
        detect_tissue(_slide(), method="deep:unet")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_load_through_detect_tissue(tmp_path, suffix):
    path, state = _saved(tmp_path, suffix)
    seg = create_tissue_segmenter("test_unet_tiny", weights=path)
    for k, v in seg.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    slide = _slide()
    tm = detect_tissue(
        slide,
        TissueParams(min_area_um2=0, max_hole_um2=0),
        method="deep:test_unet_tiny",
        weights=path,
    )
    # the mask is the loaded model's probability > 0.5 on the thumbnail it was computed on
    prob = seg(tm.thumbnail)
    assert prob.shape == tm.mask.shape and np.isfinite(prob).all()
    assert ((prob >= 0) & (prob <= 1)).all()
    np.testing.assert_array_equal(tm.mask, prob > 0.5)
    p = tm.provenance
    assert p["method"] == "deep:test_unet_tiny" and p["threshold"] == 0.5
    assert p["segmenter"]["weights"] == str(path) and len(p["segmenter"]["weights_sha256"]) == 64
    assert p["mask_mpp"] == pytest.approx(16.0)  # the model's µm/px, not detect_mpp
    import json

    json.dumps(p)
    # an already built segmenter is accepted as the method too
    tm2 = detect_tissue(slide, TissueParams(min_area_um2=0, max_hole_um2=0), method=seg)
    np.testing.assert_array_equal(tm2.mask, tm.mask)


def test_mismatched_weights_are_refused(tmp_path):
    from safetensors.torch import save_file

    from histoxmodal.encoders.weights import WeightsError

    path = tmp_path / "wrong.safetensors"
    save_file({"head.weight": torch.zeros(2, 4, 1, 1), "extra": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="missing keys"):
        detect_tissue(_slide(), method="deep:test_unet_tiny", weights=path)


def test_weights_for_a_classic_method_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="deep:"):
        detect_tissue(_slide(), method="saturation-otsu", weights=tmp_path / "x.safetensors")


def test_tiling_does_not_import_torch():
    code = (
        "import sys, histoxmodal.tiling.tissue, histoxmodal.tiling.grid; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
