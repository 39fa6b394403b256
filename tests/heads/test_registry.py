"""The head registry: names, descriptions, creation, and a save/load round trip for every head."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from histoxmodal.heads import (
    HEADS,
    ABMILHead,
    LinearProbeHead,
    MeanMILHead,
    MLPHead,
    RetrievalHead,
    RidgeHead,
    create_head,
    describe_head,
    list_heads,
    load_head,
)
from histoxmodal.heads.registry import TASKS

CLASSES = {
    "ridge": RidgeHead,
    "mlp": MLPHead,
    "retrieval": RetrievalHead,
    "abmil": ABMILHead,
    "mean_mil": MeanMILHead,
    "linear_probe": LinearProbeHead,
}

#: small, fast params per head for the round trip
FAST = {
    "ridge": {"alphas": (0.1, 1.0, 10.0), "pca": 4, "cv": 3},
    "mlp": {"hidden": (8,), "max_epochs": 3},
    "retrieval": {"k": 5},
    "abmil": {"hidden": 8, "epochs": 2},
    "mean_mil": {"epochs": 2},
    "linear_probe": {"c": 0.3},
}


def _fit_and_predict(name: str, head):
    """Fit ``head`` on toy data for its task; returns a function computing its predictions."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 6))
    task = describe_head(name)["task"]
    if task == "mil":
        bags = [rng.standard_normal((int(n), 6)).astype(np.float32) for n in rng.integers(2, 9, 12)]
        head.fit(bags, np.arange(12) % 3)
        return lambda h: h.predict_proba(bags)
    if task == "classification":
        head.fit(x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 0))
        return lambda h: h.predict_proba(x)
    y = x @ rng.standard_normal((6, 3)) + 0.1 * rng.standard_normal((60, 3))
    head.fit(x, y, groups=np.repeat(np.arange(4), 15)) if name != "retrieval" else head.fit(x, y)
    return lambda h: h.predict(x)


def test_the_registered_heads():
    assert list_heads() == sorted(CLASSES)
    assert list_heads("*mil") == ["abmil", "mean_mil"]
    for name, cls in CLASSES.items():
        assert HEADS.get(name) is cls and cls.head_name == name
        assert isinstance(create_head(name), cls)


def test_describe_states_task_input_and_params():
    for name in list_heads():
        d = describe_head(name)
        assert d["task"] in TASKS
        assert d["summary"].endswith(".") and d["input"] and d["target"] and d["output"]
        assert d["class"] == f"{CLASSES[name].__module__}.{CLASSES[name].__qualname__}"
    ridge = describe_head("ridge")
    assert ridge["task"] == "regression" and ridge["input"] == "image embeddings (n, d)"
    assert ridge["params"] == {"alphas": RidgeHead().alphas, "pca": None, "cv": 5}
    assert describe_head("abmil")["task"] == "mil"
    assert describe_head("linear_probe")["task"] == "classification"
    assert describe_head("MLP")["params"]["hidden"] == (256,)  # names are case-insensitive


def test_create_head_passes_params_and_rejects_unknown_names_and_params():
    head = create_head("ridge", pca=3, cv=4)
    assert head == RidgeHead(pca=3, cv=4)
    with pytest.raises(KeyError) as e:
        create_head("rigde")
    assert "Did you mean 'ridge'" in str(e.value)
    assert "Available: abmil, linear_probe, mean_mil, mlp, retrieval, ridge" in str(e.value)
    with pytest.raises(KeyError, match="Did you mean 'abmil'"):
        create_head("abmill")
    with pytest.raises(TypeError, match=r"no parameter hiden; its parameters: hidden, dropout"):
        create_head("mlp", hiden=(8,))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_save_load_round_trip_gives_identical_predictions(name, tmp_path):
    head = create_head(name, **FAST[name])
    predict = _fit_and_predict(name, head)
    before = predict(head)
    folder = head.save(tmp_path / name)
    files = {p.name for p in folder.iterdir()}
    assert "head.json" in files and files <= {
        "head.json",
        "arrays.safetensors",
        "weights.safetensors",
    }
    for back in (load_head(folder), CLASSES[name].load(folder / "head.json")):
        assert type(back) is type(head) and back == head
        np.testing.assert_array_equal(predict(back), before)
    # the loaded head saves again to the same files
    again = load_head(folder).save(tmp_path / f"{name}_again")
    np.testing.assert_array_equal(predict(load_head(again)), before)


def test_importing_heads_imports_neither_torch_nor_sklearn():
    code = (
        "import sys, histoxmodal.heads as h; h.list_heads(); h.describe_head('abmil'); "
        "h.create_head('mlp'); h.create_head('abmil'); "
        "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
