"""With DDP-style gathering on 2 CPU processes (gloo), loss and gradients equal one process."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from histoxmodal.losses import create_loss  # noqa: E402

NAMES = ["clip", "siglip", "cwcl", "soft_clip", "symile"]


def _setup(seed=0):
    torch.manual_seed(seed)
    enc_a, enc_b = torch.nn.Linear(6, 4).double(), torch.nn.Linear(9, 4).double()
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(16, 6, generator=g, dtype=torch.float64)
    xb = torch.randn(16, 9, generator=g, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 2] * 4)
    return enc_a, enc_b, xa, xb, batch


def _run(name, enc_a, enc_b, xa, xb, batch, kwargs):
    loss = create_loss(name, **kwargs).double()
    a, b = F.normalize(enc_a(xa), dim=1), F.normalize(enc_b(xb), dim=1)
    value = loss(a, b, batch=batch)
    value.backward()
    grads = [p.grad.clone() for p in [*enc_a.parameters(), *enc_b.parameters(), loss.logit_scale]]
    return value.detach(), grads


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        for name in NAMES:
            for kwargs in ({}, {"same_batch": "mask"}, {"cross_batch": "mask"}):
                enc_a, enc_b, xa, xb, batch = _setup()
                sl = slice(rank * 8, (rank + 1) * 8)
                value, grads = _run(name, enc_a, enc_b, xa[sl], xb[sl], batch[sl], kwargs)
                dist.all_reduce(value)
                for g in grads:  # what DDP does: average the gradients over ranks
                    dist.all_reduce(g)
                    g /= world
                out[(name, tuple(kwargs.items()))] = (value / world, grads)
        if rank == 0:
            results.update({k: (v[0].item(), [g.tolist() for g in v[1]]) for k, v in out.items()})
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, port, results), nprocs=2, join=True)
    assert len(results) == 3 * len(NAMES)
    for (name, kw), (value, grads) in results.items():
        enc_a, enc_b, xa, xb, batch = _setup()
        want, want_grads = _run(name, enc_a, enc_b, xa, xb, batch, dict(kw))
        assert value == pytest.approx(float(want), rel=1e-9), name
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(
                torch.tensor(g, dtype=torch.float64), w, rtol=1e-7, atol=1e-10
            )
