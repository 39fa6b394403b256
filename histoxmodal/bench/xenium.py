"""Peak memory of pooling Xenium transcripts into pseudo-spots, against the file's size.

:func:`~histoxmodal.io.spatial.pool_transcripts` streams ``transcripts.parquet`` by record batch,
so its peak memory should grow with the result (spots × features nonzeros), not with the number
of rows. This writes transcript tables of increasing length over the same tissue area (in
Xenium's schema, rows in random order: no spatial locality to lean on) and measures, each in a
fresh process, the peak resident memory of the pooling and, for comparison, of the obvious
pandas approach (read the four columns, ``groupby``). The peak is measured from the process's
resident memory after its imports (Linux: ``/proc/self/status``, the peak reset through
``/proc/self/clear_refs``), so it is the work's own plus the interpreter and libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = [
    "MEMORY_PRELUDE",
    "bench_xenium_pooling",
    "format_pooling_table",
    "pooling_peak_memory",
    "run_child",
    "write_transcripts",
]

_GENE_CATEGORY = "predesigned_gene"
_CONTROLS = {
    **{f"NegControlProbe_{i:05d}": "negative_control_probe" for i in range(20)},
    **{f"NegControlCodeword_{500 + i}": "negative_control_codeword" for i in range(40)},
    **{f"UnassignedCodeword_{i:04d}": "unassigned_codeword" for i in range(40)},
}


def write_transcripts(
    path: str | Path,
    n_rows: int,
    *,
    width_um: float = 8000.0,
    height_um: float = 6000.0,
    n_genes: int = 280,
    low_qv_fraction: float = 0.1,
    chunk_rows: int = 1 << 20,
    seed: int = 0,
) -> Path:
    """Write ``n_rows`` transcripts in XOA 3's schema, chunk by chunk (bounded memory), one row
    group per chunk; features drawn with a skewed (log-normal) abundance, positions uniform."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rng = np.random.default_rng(seed)
    names = [f"GENE{i:04d}" for i in range(n_genes)] + list(_CONTROLS)
    cats = [_GENE_CATEGORY] * n_genes + list(_CONTROLS.values())
    p = rng.lognormal(0, 1.2, len(names))
    p[n_genes:] *= 0.02  # controls are rare
    p /= p.sum()
    names_arr, cats_arr = pa.array(names), pa.array(cats)
    schema = pa.schema(
        [
            ("transcript_id", pa.uint64()),
            ("cell_id", pa.string()),
            ("overlaps_nucleus", pa.uint8()),
            ("feature_name", pa.string()),
            ("x_location", pa.float32()),
            ("y_location", pa.float32()),
            ("z_location", pa.float32()),
            ("qv", pa.float32()),
            ("fov_name", pa.string()),
            ("nucleus_distance", pa.float32()),
            ("codeword_index", pa.int32()),
            ("codeword_category", pa.string()),
            ("is_gene", pa.bool_()),
        ]
    )
    tmp = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(tmp, schema) as w:
        done = 0
        while done < n_rows:
            n = min(chunk_rows, n_rows - done)
            f = rng.choice(len(names), n, p=p).astype(np.int32)
            idx = pa.array(f)
            qv = rng.uniform(20, 40, n)
            low = rng.random(n) < low_qv_fraction
            qv[low] = rng.uniform(0, 20, int(low.sum()))
            x = rng.uniform(0, width_um, n).astype(np.float32)
            y = rng.uniform(0, height_um, n).astype(np.float32)
            fov = pa.DictionaryArray.from_arrays(
                pa.array((x // 500).astype(np.int32) % 26),
                pa.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")),
            ).cast(pa.string())
            batch = pa.record_batch(
                [
                    pa.array(np.arange(done, done + n, dtype=np.uint64)),
                    pa.array(np.full(n, "UNASSIGNED", dtype=object), pa.string()),
                    pa.array(rng.integers(0, 2, n, dtype=np.uint8)),
                    names_arr.take(idx),
                    pa.array(x),
                    pa.array(y),
                    pa.array(rng.uniform(10, 20, n).astype(np.float32)),
                    pa.array(qv.astype(np.float32)),
                    fov,
                    pa.array(rng.uniform(0, 10, n).astype(np.float32)),
                    idx,
                    cats_arr.take(idx),
                    pa.array(f < n_genes),
                ],
                schema=schema,
            )
            w.write_batch(batch)
            done += n
    tmp.replace(path)
    return path


#: the code a measuring child process starts with: ``status(key)`` reads ``/proc/self/status``
#: (MiB), ``reset_peak()`` resets the peak resident size (Linux)
MEMORY_PRELUDE = """
import json, sys, time


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


def reset_peak():
    # Linux: writing 5 to clear_refs resets the peak resident size (VmHWM) to the current one
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


"""

_POOL = (
    MEMORY_PRELUDE
    + """
import numpy as np, pyarrow.parquet, scipy.sparse
from histoxmodal.io.spatial import pool_transcripts
base, reset = status("VmRSS"), reset_peak()
t = time.perf_counter()
pool = pool_transcripts(sys.argv[1], bin_um=float(sys.argv[2]), batch_rows=int(sys.argv[3]))
dt = time.perf_counter() - t
c = pool.counts
print(json.dumps({"seconds": dt, "rss_after_imports_mib": base, "peak_mib": status("VmHWM"),
    "peak_reset": reset, "n_spots": c.shape[0], "nnz": int(c.nnz),
    "result_mib": (c.data.nbytes + c.indices.nbytes + c.indptr.nbytes) / 2**20,
    "n_batches": pool.stats["n_batches"], "n_folds": pool.stats["n_folds"]}))
"""
)

_NAIVE = (
    MEMORY_PRELUDE
    + """
import numpy as np, pandas as pd, pyarrow.parquet
base, reset = status("VmRSS"), reset_peak()
t = time.perf_counter()
b = float(sys.argv[2])
df = pd.read_parquet(sys.argv[1], columns=["feature_name", "x_location", "y_location", "qv"])
df = df[df["qv"] >= 20]
counts = df.groupby(
    [np.floor(df["x_location"] / b).astype(int), np.floor(df["y_location"] / b).astype(int),
     df["feature_name"]]).size()
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_after_imports_mib": base, "peak_mib": status("VmHWM"),
    "peak_reset": reset, "nnz": int(len(counts))}))
"""
)


def run_child(code: str, *args: str) -> dict[str, float]:
    """Run ``code`` in a fresh Python (one thread) with ``args``; its last stdout line, as JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pooling_peak_memory(
    path: str | Path, *, bin_um: float = 55.0, batch_rows: int = 1 << 19, naive: bool = False
) -> dict[str, float]:
    """Peak resident memory (MiB) and time of pooling ``path`` in a fresh process: the
    streaming :func:`pool_transcripts`, or (``naive``) pandas reading the columns whole."""
    if naive:
        return run_child(_NAIVE, str(path), str(bin_um))
    return run_child(_POOL, str(path), str(bin_um), str(batch_rows))


def bench_xenium_pooling(
    workdir: str | Path,
    *,
    rows: tuple[int, ...] = (1_000_000, 10_000_000, 40_000_000),
    naive_max_rows: int = 10_000_000,
    bin_um: float = 55.0,
    keep_files: bool = False,
) -> dict[str, object]:
    """Write a transcript table of each length in ``rows`` under ``workdir`` and measure the
    pooling's (and, up to ``naive_max_rows``, pandas') peak memory on it.

    Returns
    -------
    dict
        Per length: file size (MiB), write time, and the measurements of
        :func:`pooling_peak_memory`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"bin_um": bin_um, "runs": []}
    for n in rows:
        f = workdir / f"transcripts_{n}.parquet"
        t = time.perf_counter()
        if not f.exists():
            write_transcripts(f, n)
        run: dict[str, object] = {
            "rows": n,
            "file_mib": f.stat().st_size / 2**20,
            "write_seconds": time.perf_counter() - t,
            "streaming": pooling_peak_memory(f, bin_um=bin_um),
        }
        if n <= naive_max_rows:
            run["pandas"] = pooling_peak_memory(f, bin_um=bin_um, naive=True)
        results["runs"].append(run)
        if not keep_files:
            f.unlink()
    return results


def format_pooling_table(results: dict[str, object]) -> str:
    """The runs of :func:`bench_xenium_pooling` as a plain-text table, one row per length."""
    rows = [("transcripts", "file MiB", "peak MiB", "seconds", "spots", "nonzeros", "pandas MiB")]
    for r in results["runs"]:  # type: ignore[union-attr]
        s, pd_run = r["streaming"], r.get("pandas")
        rows.append(
            (
                f"{r['rows']:,}",
                f"{r['file_mib']:.0f}",
                f"{s['peak_mib']:.0f}",
                f"{s['seconds']:.1f}",
                f"{s['n_spots']:,}",
                f"{s['nnz']:,}",
                f"{pd_run['peak_mib']:.0f}" if pd_run else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
