"""Post-hoc Harmony (Korsunsky et al. 2019, via harmonypy) on embeddings: the baseline that
in-training batch corrections are compared against."""

from __future__ import annotations

import numpy as np


def harmony(
    embeddings: np.ndarray, batch: np.ndarray, *, seed: int = 0, max_iter: int = 20
) -> np.ndarray:
    """Batch-corrected copy of ``embeddings`` ``(n, d)``, re-normalized to unit length.

    Parameters
    ----------
    batch
        ``(n,)`` batch labels.
    """
    import harmonypy
    import pandas as pd

    x = np.asarray(embeddings, np.float64)
    meta = pd.DataFrame({"batch": np.asarray(batch).astype(str)})
    ho = harmonypy.run_harmony(
        x, meta, ["batch"], random_state=seed, max_iter_harmony=max_iter, verbose=False
    )
    z = np.asarray(ho.Z_corr)
    if z.shape != x.shape:  # older harmonypy returns (d, n)
        z = z.T
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
