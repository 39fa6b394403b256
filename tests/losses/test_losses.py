"""Each loss against a direct (loop) implementation of its formula, gradients, options."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from histoxmodal.losses import create_loss, list_losses  # noqa: E402
from histoxmodal.losses.adversarial import BatchAdversary, grad_reverse  # noqa: E402


def _emb(n=12, d=8, seed=0, k=2):
    g = torch.Generator().manual_seed(seed)
    return [
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1) for _ in range(k)
    ]


def _lse(x):
    m = max(x)
    return m + math.log(sum(math.exp(v - m) for v in x))


def _clip_direct(a, b, t, weights=None):
    """-1/n sum_i log softmax_i(i) both ways; ``weights[i][j]`` multiplies exp of negatives."""
    a, b = a.tolist(), b.tolist()
    n = len(a)

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            terms = []
            for j in range(n):
                w = 1.0 if weights is None or i == j else weights[i][j]
                if w > 0:
                    terms.append(dot(x[i], y[j]) / t + math.log(w))
            total += -(dot(x[i], y[i]) / t - _lse(terms)) / n
    return total / 2


def test_registry_lists_every_loss():
    assert list_losses() == ["clip", "clip_pairwise", "cwcl", "siglip", "soft_clip", "symile"]
    with pytest.raises(KeyError, match="Did you mean 'clip'"):
        create_loss("clpi")


def test_clip_matches_formula_and_batch_options():
    a, b = _emb()
    loss = create_loss("clip", temperature=0.1).double()
    assert float(loss(a, b)) == pytest.approx(_clip_direct(a, b, 0.1), rel=1e-6)
    batch = torch.tensor([0, 0, 1, 1, 2, 2] * 2)
    same = (batch[:, None] == batch[None, :]).tolist()
    masked = create_loss("clip", temperature=0.1, same_batch="mask").double()
    w_mask = [[0.0 if s else 1.0 for s in row] for row in same]
    assert float(masked(a, b, batch=batch)) == pytest.approx(
        _clip_direct(a, b, 0.1, w_mask), rel=1e-6
    )
    down = create_loss(
        "clip", temperature=0.1, same_batch="downweight", same_batch_weight=0.25
    ).double()
    w_down = [[0.25 if s else 1.0 for s in row] for row in same]
    assert float(down(a, b, batch=batch)) == pytest.approx(
        _clip_direct(a, b, 0.1, w_down), rel=1e-6
    )
    within = create_loss("clip", temperature=0.1, cross_batch="mask").double()
    w_within = [[1.0 if s else 0.0 for s in row] for row in same]
    assert float(within(a, b, batch=batch)) == pytest.approx(
        _clip_direct(a, b, 0.1, w_within), rel=1e-6
    )
    both = create_loss(
        "clip",
        temperature=0.1,
        cross_batch="downweight",
        cross_batch_weight=0.5,
        same_batch="downweight",
        same_batch_weight=0.25,
    ).double()
    w_both = [[0.25 if s else 0.5 for s in row] for row in same]
    assert float(both(a, b, batch=batch)) == pytest.approx(
        _clip_direct(a, b, 0.1, w_both), rel=1e-6
    )
    with pytest.raises(ValueError, match="no negatives"):
        create_loss("clip", same_batch="mask", cross_batch="mask")


def test_temperature_is_learnable_and_clamped():
    loss = create_loss("clip", temperature=0.001)  # scale 1000 asks for more than the cap
    assert float(loss.scale) == pytest.approx(100.0)
    a, b = (e.float().requires_grad_() for e in _emb())
    create_loss("clip")(a, b).backward()
    fixed = create_loss("clip", learn_temperature=False)
    assert not fixed.logit_scale.requires_grad


def test_siglip_matches_formula():
    a, b = _emb(seed=1)
    loss = create_loss("siglip", temperature=0.1, bias=-2.0).double()
    s = a @ b.T * 10.0 - 2.0
    n = len(a)
    want = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            want += -math.log(1.0 / (1.0 + math.exp(-z * float(s[i, j]))))
    assert float(loss(a, b)) == pytest.approx(want / n, rel=1e-6)


def test_cwcl_matches_formula_and_reduces_to_clip_for_orthogonal_references():
    a, b = _emb(seed=2)
    loss = create_loss("cwcl", temperature=0.1).double()
    w = (1 + b @ b.T) / 2
    w = w / w.sum(1, keepdim=True)
    la, lb = a @ b.T / 0.1, b @ a.T / 0.1
    want = 0.5 * (
        -(w * F.log_softmax(la, 1)).sum(1).mean() - (w * F.log_softmax(lb, 1)).sum(1).mean()
    )
    assert float(loss(a, b)) == pytest.approx(float(want), rel=1e-6)
    # antipodal references: weights are the identity, and CWCL is CLIP
    a2, b2 = _emb(n=2, seed=3)
    ref = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    got = float(loss(a2, b2, reference=ref))
    assert got == pytest.approx(_clip_direct(a2, b2, 0.1), rel=1e-6)


def test_soft_clip_matches_formula():
    a, b = _emb(seed=4)
    loss = create_loss("soft_clip", temperature=0.1, target_temperature=0.5).double()
    t = F.softmax((a @ a.T + b @ b.T) / 2 / 0.5, dim=1)
    la = a @ b.T / 0.1
    want = 0.5 * (
        -(t * F.log_softmax(la, 1)).sum(1).mean() - (t * F.log_softmax(la.T, 1)).sum(1).mean()
    )
    assert float(loss(a, b)) == pytest.approx(float(want), rel=1e-6)


def _symile_direct(embs, t, candidates, present=None):
    """Loop Symile: ``candidates(m, i)`` lists the non-anchor row tuples scored for anchor row i
    (the first is the positive)."""
    total, count = 0.0, 0
    for m, anchor in enumerate(embs):
        others = [e for k, e in enumerate(embs) if k != m]
        for i in range(len(anchor)):
            if present is not None and not present[i][m]:
                continue
            scores = []
            for rows in candidates(m, i):
                v = anchor[i].clone()
                for o, r in zip(others, rows, strict=True):
                    v = v * o[r]
                scores.append(float(v.sum()) / t)
            total += -(scores[0] - _lse(scores))
            count += 1
    return total / count


def test_symile_matches_formula_for_each_negative_sampling():
    a, b, c = _emb(seed=5, k=3)
    n = len(a)
    matched = create_loss("symile", temperature=0.1, negative_sampling="matched").double()
    want = _symile_direct(
        [a, b, c], 0.1, lambda m, i: [(i, i)] + [(j, j) for j in range(n) if j != i]
    )
    assert float(matched(a, b, c)) == pytest.approx(want, rel=1e-6)
    # O(N): the non-anchor modalities' rows permuted independently; the diagonal is the truth
    loss = create_loss("symile", temperature=0.1, seed=7).double()
    perms = [p.tolist() for p in loss.permutations(n, 3, 0)]

    def shuffled(m, i):
        rows = [(perms[m][j], perms[(m + 1) % 3][j]) for j in range(n) if j != i]
        return [(i, i), *rows]

    assert float(loss(a, b, c)) == pytest.approx(_symile_direct([a, b, c], 0.1, shuffled), rel=1e-6)
    assert int(loss.step) == 1  # the next step draws new permutations
    square = create_loss("symile", temperature=0.1, negative_sampling="n_squared").double()
    every = lambda m, i: [(i, i)] + [(j, k) for j in range(n) for k in range(n) if (j, k) != (i, i)]  # noqa: E731
    assert float(square(a, b, c)) == pytest.approx(_symile_direct([a, b, c], 0.1, every), rel=1e-6)
    # a missing anchor modality adds no term
    present = torch.ones(n, 3, dtype=torch.bool)
    present[::3, 1] = False
    want = _symile_direct([a, b, c], 0.1, every, present=present.tolist())
    assert float(square(a, b, c, present=present)) == pytest.approx(want, rel=1e-6)
    # with two modalities, Symile is CLIP
    assert float(loss(a, b)) == pytest.approx(_clip_direct(a, b, 0.1), rel=1e-6)


def test_pairwise_clip_matches_formula_with_missing_modalities():
    a, b, c = _emb(seed=6, k=3)
    loss = create_loss("clip_pairwise", temperature=0.1).double()
    pairs = [(a, b), (a, c), (b, c)]
    want = sum(_clip_direct(x, y, 0.1) for x, y in pairs) / 3
    assert float(loss(a, b, c)) == pytest.approx(want, rel=1e-6)
    present = torch.ones(len(a), 3, dtype=torch.bool)
    present[[1, 4, 7], 2] = False  # c missing for three rows
    keep = torch.tensor([i not in (1, 4, 7) for i in range(len(a))])
    want = (
        _clip_direct(a, b, 0.1)
        + _clip_direct(a[keep], c[keep], 0.1)
        + _clip_direct(b[keep], c[keep], 0.1)
    ) / 3
    assert float(loss(a, b, c, present=present)) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("name", ["clip", "clip_pairwise", "siglip", "cwcl", "soft_clip", "symile"])
def test_every_loss_gives_finite_values_and_gradients(name):
    torch.manual_seed(0)
    enc_a, enc_b = torch.nn.Linear(5, 4), torch.nn.Linear(7, 4)
    loss = create_loss(name)
    xa, xb = torch.randn(10, 5), torch.randn(10, 7)
    value = loss(
        F.normalize(enc_a(xa), dim=1), F.normalize(enc_b(xb), dim=1), batch=torch.tensor([0, 1] * 5)
    )
    assert torch.isfinite(value)
    value.backward()
    for p in [*enc_a.parameters(), *enc_b.parameters(), loss.logit_scale]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_gradient_reversal_and_adversary():
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -1.0)
    adv = BatchAdversary(3, 2, hidden=8)
    z = torch.randn(6, 3, requires_grad=True)
    value = adv(z, torch.tensor([0, 1, 0, 1, 0, 1]))
    value.backward()
    # the encoder's gradient is the reverse of what lowers the classifier's loss
    z2 = z.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(adv.net(z2), torch.tensor([0, 1, 0, 1, 0, 1])).backward()
    torch.testing.assert_close(z.grad, -z2.grad)
