"""HeadInputs, the heads' view of a section (centring, smoothing, context), against the same
arithmetic written out with plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.heads.inputs import HeadInputs


def _data():
    rng = np.random.default_rng(0)
    coords = np.array([[0, 0], [100, 0], [0, 100], [500, 500], [0, 0], [100, 0]], np.float64)
    groups = np.array(["A", "A", "A", "A", "B", "B"])
    return rng.normal(size=(6, 3)).astype(np.float32), coords, groups


def test_centre_smooth_and_context_are_the_loops_written_out():
    z, coords, groups = _data()
    centred = z.copy()
    for g in ("A", "B"):
        centred[groups == g] -= z[groups == g].mean(0)

    def neighbourhood_mean(x, radius):
        out = np.empty_like(x, dtype=np.float64)
        for i in range(len(x)):
            near = [
                j
                for j in range(len(x))
                if j != i
                and groups[j] == groups[i]
                and np.linalg.norm(coords[i] - coords[j]) <= radius
            ]
            out[i] = x[near].mean(0) if near else x[i]  # an isolated spot is its own
        return out

    got = HeadInputs(centre=True).apply(z, coords, groups)
    np.testing.assert_allclose(got, centred, atol=1e-6)
    smooth = HeadInputs(centre=True, smooth_um=150.0).apply(z, coords, groups)
    np.testing.assert_allclose(
        smooth, 0.5 * centred + 0.5 * neighbourhood_mean(centred, 150.0), atol=1e-6
    )
    ctx = HeadInputs(context_um=150.0).apply(z, coords, groups)
    np.testing.assert_allclose(ctx, np.c_[z, neighbourhood_mean(z, 150.0)], atol=1e-6)
    assert not HeadInputs() and HeadInputs(centre=True)


def test_each_head_reads_its_part_and_a_saved_heads_targets_win():
    both = HeadInputs(context_um=620.0, centre=True, smooth_um=450.0)
    assert both.for_head("retrieval") == HeadInputs(0.0, True, 450.0)
    assert both.for_head("ridge") == HeadInputs(620.0, True, 0.0)

    pytest.importorskip("torch")
    from histoxmodal.training.config import HeadConfig

    class Config:
        head = HeadConfig(context_um=100.0, smooth_um=50.0)

    class FakeRun:  # anything with config.head, as a Run has
        config = Config()

    assert HeadInputs.of(FakeRun(), "ridge") == HeadInputs(100.0, False, 0.0)
    assert HeadInputs.of(FakeRun(), "retrieval", {"centre": True, "smooth_um": 7}) == HeadInputs(
        0.0, True, 7.0
    )


@pytest.mark.parametrize("name", ["ridge", "mlp", "retrieval"])
def test_a_saved_head_carries_its_inputs_and_genes_and_applies_them(tmp_path, name):
    """``load_head(p).predict(z, coords_um=, groups=)`` equals the inputs applied by hand and
    the plain head's prediction; the genes and inputs sit in ``head.json``."""
    import json

    pytest.importorskip("safetensors")
    if name == "mlp":
        pytest.importorskip("torch")
    from histoxmodal.heads import create_head, load_head

    z, coords, groups = _data()
    rng = np.random.default_rng(1)
    y = rng.normal(size=(6, 2))
    inputs = HeadInputs(context_um=150.0, centre=True, smooth_um=150.0).for_head(name)
    x = inputs.apply(z, coords, groups)
    params = {"max_epochs": 3, "seed": 0} if name == "mlp" else {}
    plain = create_head(name, **params)
    plain = plain.fit(x, y) if name == "retrieval" else plain.fit(x, y, groups=groups)
    want = plain.predict(x)
    plain.reading(inputs).predicting(["CD3E", "ERBB2"], "log1p_cp10k").save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    assert meta["inputs"] == {
        "context_um": inputs.context_um,
        "centre": True,
        "smooth_um": inputs.smooth_um,
    }
    assert meta["outputs"] == {"names": ["CD3E", "ERBB2"], "normalization": "log1p_cp10k"}
    loaded = load_head(tmp_path / "h")
    assert loaded.inputs == inputs and loaded.outputs == ("CD3E", "ERBB2")
    got = loaded.predict(z, coords_um=coords, groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a head without inputs predicts what it is given, as before
    assert not create_head("ridge").fit(z, y).inputs


def test_a_head_saved_without_inputs_loads_plain(tmp_path):
    """A ``head.json`` written before heads kept their inputs loads with none and no genes."""
    import json

    pytest.importorskip("safetensors")
    from histoxmodal.heads import RidgeHead, load_head

    z, _, _ = _data()
    y = np.random.default_rng(2).normal(size=(6, 2))
    RidgeHead().fit(z, y).save(tmp_path / "h")
    file = tmp_path / "h" / "head.json"
    meta = json.loads(file.read_text())
    del meta["inputs"]
    file.write_text(json.dumps(meta))
    h = load_head(tmp_path / "h")
    assert not h.inputs and h.outputs == () and h.normalization is None
    np.testing.assert_allclose(h.predict(z), RidgeHead().fit(z, y).predict(z))
