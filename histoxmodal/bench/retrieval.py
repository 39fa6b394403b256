"""``histoxmodal bench retrieval``: tiled whole-test-set retrieval vs the full N x N argsort,
by inner product and by CSLS (``head.retrieval_score: csls``) against its dense formula."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from histoxmodal.evaluation.retrieval import rank_metrics, retrieval_ranks
import torch  # imported before the baseline is taken

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

n, d, seed, score = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(seed)
a = rng.standard_normal((n, d), dtype=np.float32); a /= np.linalg.norm(a, axis=1, keepdims=True)
b = a + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
b /= np.linalg.norm(b, axis=1, keepdims=True)
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
t0 = time.perf_counter()
m = rank_metrics(retrieval_ranks(a, b, score=score))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_extra_mb": status("VmHWM") - before,
                  "metrics": m}))
"""


def full_argsort_ranks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The baseline: the full similarity matrix, argsorted row by row (what HESCAPE's code does)."""
    import torch

    sim = torch.as_tensor(a) @ torch.as_tensor(b).T
    order = torch.argsort(sim, dim=1, descending=True)
    return (order == torch.arange(len(a))[:, None]).nonzero()[:, 1].numpy()


def dense_csls_ranks(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    """The baseline for ``csls``: the full cosine matrix, each row's and column's k best by a
    full sort, the adjusted matrix argsorted row by row."""
    import torch

    a_, b_ = torch.as_tensor(a), torch.as_tensor(b)
    cos = (a_ / a_.norm(dim=1, keepdim=True)) @ (b_ / b_.norm(dim=1, keepdim=True)).T
    r_q = cos.sort(dim=1).values[:, -k:].mean(dim=1)
    r_i = cos.sort(dim=0).values[-k:, :].mean(dim=0)
    adj = 2 * cos - r_q[:, None] - r_i[None, :]
    order = torch.argsort(adj, dim=1, descending=True)
    return (order == torch.arange(len(a))[:, None]).nonzero()[:, 1].numpy()


def _child(n: int, d: int, score: str) -> dict:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(d), "0", score],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_retrieval_bench(
    *,
    n: int = 100_000,
    dim: int = 128,
    baseline_n: int = 10_000,
    json_path: str | Path | None = None,
) -> int:
    from histoxmodal.evaluation.retrieval import rank_metrics, retrieval_ranks

    rng = np.random.default_rng(0)
    nb, d = baseline_n, dim
    a = rng.standard_normal((nb, d), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a + 0.5 * rng.standard_normal((nb, d), dtype=np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    t0 = time.perf_counter()
    base = full_argsort_ranks(a, b)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = retrieval_ranks(a, b)
    t_ours = time.perf_counter() - t0
    differ = int(np.sum(base != ours))
    same = differ <= max(1, nb // 1000)  # float32 near-ties may order either way
    mb, mo = rank_metrics(base), rank_metrics(ours)
    print(
        f"{nb} x {nb}, {d}-d: full matrix + argsort {t_base:.2f} s; tiled {t_ours:.2f} s "
        f"({t_base / t_ours:.1f}x); ranks differ for {differ} of {nb} queries (float32 "
        f"near-ties); R@1 {mb['R@1']:.4f} vs {mo['R@1']:.4f}, R@10 {mb['R@10']:.4f} vs "
        f"{mo['R@10']:.4f}"
    )
    print(
        f"  full-matrix memory at this size: {nb * nb * 12 / 1e9:.1f} GB (scores + int64 "
        f"order); at {n}: {n**2 * 12 / 1e9:.0f} GB"
    )
    t0 = time.perf_counter()
    base_c = dense_csls_ranks(a, b)
    t_base_c = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_c = retrieval_ranks(a, b, score="csls")
    t_ours_c = time.perf_counter() - t0
    differ_c = int(np.sum(base_c != ours_c))
    same = same and differ_c <= max(1, nb // 1000)
    mc = rank_metrics(ours_c)
    print(
        f"{nb} x {nb}, {d}-d, CSLS (k=10): dense {t_base_c:.2f} s; tiled {t_ours_c:.2f} s "
        f"({t_base_c / t_ours_c:.1f}x; {t_ours_c / t_ours:.1f}x the tiled inner product); ranks "
        f"differ for {differ_c} of {nb}; R@1 {rank_metrics(base_c)['R@1']:.4f} vs {mc['R@1']:.4f}"
    )
    big = _child(n, d, "ip")
    m = big["metrics"]
    print(
        f"{n} x {n}, {d}-d tiled: {big['seconds']:.1f} s, "
        f"{big['peak_extra_mb']:.0f} MB beyond the embeddings (targets: < 30 s, < 1 GB); "
        f"R@1 {m['R@1']:.4f} R@10 {m['R@10']:.4f} median rank {m['median_rank']:.0f}"
    )
    big_c = _child(n, d, "csls")
    print(
        f"{n} x {n}, {d}-d tiled CSLS: {big_c['seconds']:.1f} s "
        f"({big_c['seconds'] / big['seconds']:.1f}x the inner product), "
        f"{big_c['peak_extra_mb']:.0f} MB beyond the embeddings; "
        f"R@1 {big_c['metrics']['R@1']:.4f} R@10 {big_c['metrics']['R@10']:.4f}"
    )
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "baseline_n": nb,
                    "dim": d,
                    "full_argsort_s": t_base,
                    "tiled_s": t_ours,
                    "identical": same,
                    "n": n,
                    "large": big,
                    "csls": {
                        "dense_s": t_base_c,
                        "tiled_s": t_ours_c,
                        "ranks_differ": differ_c,
                        "large": big_c,
                    },
                    "baseline_metrics": rank_metrics(base),
                },
                indent=2,
            )
        )
    return 0 if same else 1
