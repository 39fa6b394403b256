"""MIL heads: outputs equal the formulas computed in numpy, and ABMIL learns "contains X"."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from histoxmodal.errors import ConfigError  # noqa: E402
from histoxmodal.heads.mil import ABMILHead, MeanMILHead  # noqa: E402


def _contains_x_bags(n_bags=40, seed=0, d=8):
    """Bags of 10-30 instances of four types; a bag is positive when it holds 1-3 of type 0.

    Returns the bags, their labels and, per bag, which instances are of type 0.
    """
    types = np.random.default_rng(123).standard_normal((4, d)) * 2
    rng = np.random.default_rng(seed)
    bags, labels, is_x = [], [], []
    for b in range(n_bags):
        n = int(rng.integers(10, 30))
        t = rng.integers(1, 4, n)
        if b % 2:
            t[rng.choice(n, int(rng.integers(1, 4)), replace=False)] = 0
        bags.append((types[t] + 0.3 * rng.standard_normal((n, d))).astype(np.float32))
        labels.append(b % 2)
        is_x.append(t == 0)
    return bags, np.array(labels), is_x


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_abmil_learns_which_bags_contain_an_instance_of_type_x():
    bags, labels, _ = _contains_x_bags()
    test_bags, test_labels, test_x = _contains_x_bags(n_bags=60, seed=1)
    head = ABMILHead(epochs=10, lr=1e-2, seed=0).fit(bags, labels)
    assert (head.predict(bags) == labels).mean() == 1.0
    assert (head.predict(test_bags) == test_labels).mean() == 1.0
    # and for the right reason: the attention of a positive bag sits on its type-0 instances
    mass = [
        head.attention(b)[x].sum() for b, x, y in zip(test_bags, test_x, test_labels, strict=True)
    ]
    assert min(m for m, y in zip(mass, test_labels, strict=True) if y) > 0.9
    # mean pooling dilutes 1-3 instances among 10-30: the problem needs the attention
    base = MeanMILHead(epochs=10, lr=1e-2, seed=0).fit(bags, labels)
    assert (base.predict(test_bags) == test_labels).mean() < 0.9


def test_abmil_attention_and_probabilities_equal_the_gated_attention_formula():
    rng = np.random.default_rng(0)
    d, hidden, k = 5, 3, 3
    bags = [rng.standard_normal((n, d)).astype(np.float32) for n in (4, 7, 1)]
    head = ABMILHead(hidden=hidden, epochs=1).fit(bags, ["a", "b", "c"])
    w = {
        "v.weight": rng.standard_normal((hidden, d)),
        "v.bias": rng.standard_normal(hidden),
        "u.weight": rng.standard_normal((hidden, d)),
        "u.bias": rng.standard_normal(hidden),
        "w.weight": rng.standard_normal((1, hidden)),
        "w.bias": rng.standard_normal(1),
        "classifier.weight": rng.standard_normal((k, d)),
        "classifier.bias": rng.standard_normal(k),
    }
    head.net_.load_state_dict({n: torch.as_tensor(a, dtype=torch.float32) for n, a in w.items()})
    proba = head.predict_proba(bags)
    for bag, p in zip(bags, proba, strict=True):
        x = bag.astype(np.float64)
        gate = np.tanh(x @ w["v.weight"].T + w["v.bias"]) * _sigmoid(
            x @ w["u.weight"].T + w["u.bias"]
        )
        att = _softmax(gate @ w["w.weight"][0] + w["w.bias"][0])
        np.testing.assert_allclose(head.attention(bag), att, rtol=1e-5, atol=1e-7)
        logits = w["classifier.weight"] @ (att @ x) + w["classifier.bias"]
        np.testing.assert_allclose(p, _softmax(logits), rtol=1e-5, atol=1e-6)
    assert head.predict(bags).tolist() == [
        "abc"[i] for i in proba.argmax(axis=1)
    ]  # labels, in np.unique order
    np.testing.assert_array_equal(head.attention(bags[2]), [1.0])  # one instance: all of it


def test_mean_mil_logits_equal_w_times_the_bag_mean_plus_b():
    rng = np.random.default_rng(1)
    bags = [rng.standard_normal((n, 6)).astype(np.float32) for n in (3, 9, 5, 2)]
    head = MeanMILHead(epochs=2).fit(bags, [0, 1, 1, 0])
    weight = head.net_.classifier.weight.detach().double().numpy()
    bias = head.net_.classifier.bias.detach().double().numpy()
    want = np.stack([_softmax(weight @ b.astype(np.float64).mean(0) + bias) for b in bags])
    np.testing.assert_allclose(head.predict_proba(bags), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(head.classes_, [0, 1])


def test_mil_fit_is_seeded_and_leaves_torch_random_state_alone():
    bags, labels, _ = _contains_x_bags(n_bags=10)
    before = torch.get_rng_state()
    a = ABMILHead(epochs=2, seed=5).fit(bags, labels).predict_proba(bags)
    assert torch.equal(torch.get_rng_state(), before)
    b = ABMILHead(epochs=2, seed=5).fit(bags, labels).predict_proba(bags)
    c = ABMILHead(epochs=2, seed=6).fit(bags, labels).predict_proba(bags)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_mil_save_load_keeps_labels_and_outputs(tmp_path):
    bags, labels, _ = _contains_x_bags(n_bags=12)
    names = np.where(labels == 1, "tumour", "normal")
    for head in (
        ABMILHead(hidden=16, dropout=0.0, epochs=2, seed=3),
        MeanMILHead(epochs=2, lr=1e-2),
    ):
        head.fit(bags, names)
        back = type(head).load(head.save(tmp_path / head.head_name))
        assert back == head  # params and history_
        assert back.classes_.tolist() == ["normal", "tumour"]
        assert back.classes_.dtype == head.classes_.dtype
        np.testing.assert_array_equal(back.predict_proba(bags), head.predict_proba(bags))
        np.testing.assert_array_equal(back.predict(bags), head.predict(bags))


def test_mil_input_errors_name_the_argument():
    bags, labels, _ = _contains_x_bags(n_bags=6)
    with pytest.raises(ConfigError, match="one class"):
        ABMILHead(epochs=1).fit(bags, np.zeros(6, int))
    with pytest.raises(ConfigError, match="6 bags for labels of shape"):
        ABMILHead(epochs=1).fit(bags, labels[:5])
    with pytest.raises(ConfigError, match=r"bags is one \(20, 8\) array"):
        ABMILHead(epochs=1).fit(np.zeros((20, 8)), labels)
    with pytest.raises(ConfigError, match="before fit"):
        MeanMILHead().predict_proba(bags)
    head = MeanMILHead(epochs=1).fit(bags, labels)
    with pytest.raises(ConfigError, match=r"bags\[1\] has shape \(4, 3\).*\(n_instances >= 1, 8\)"):
        head.predict_proba([bags[0], np.zeros((4, 3))])


def test_the_networks_are_importable_from_the_mil_module():
    from histoxmodal.heads.mil import GatedAttentionMIL, MeanPoolMIL
    from histoxmodal.heads.mil_modules import GatedAttentionMIL as G

    assert GatedAttentionMIL is G
    net = MeanPoolMIL(4, 3)
    bag = torch.ones(5, 4)
    torch.testing.assert_close(net(bag), net.classifier.weight.sum(1) + net.classifier.bias)
