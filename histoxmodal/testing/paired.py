"""A synthetic paired dataset whose images and expression share a signal, with an optional
batch effect: for tests and examples of contrastive training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoxmodal import keys


def make_paired_dataset(
    out: str | Path,
    *,
    n_samples: int = 2,
    spots_per_sample: int = 128,
    n_genes: int = 60,
    n_states: int = 4,
    patch_px: int = 32,
    batch_effect: float = 0.0,
    image_batch_effect: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write ``out/`` in the layout of ``histoxmodal build`` (``load_paired`` opens it).

    Each spot has a hidden state (a tissue type) that sets both its image (an H&E-like tint with
    texture) and its expression (a state-specific gene programme, Poisson counts). With
    ``batch_effect > 0`` each sample multiplies a sample-specific half of the genes by
    ``1 + batch_effect``: a technical shift unrelated to the state; ``image_batch_effect`` adds
    a per-sample colour cast of that many grey levels (a scanner or staining batch), so the
    batch is visible in both modalities, the case where contrastive alignment itself learns it.

    Returns
    -------
    Path
        ``out``.
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from histoxmodal.data.splits import make_split, write_split
    from histoxmodal.data.store import write_store
    from histoxmodal.fileutil import write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = n_samples * spots_per_sample
    state = rng.integers(0, n_states, n)
    sample = np.repeat([f"S{i}" for i in range(n_samples)], spots_per_sample)
    programmes = (
        rng.gamma(1.0, 1.0, (n_states, n_genes)) * (rng.random((n_states, n_genes)) < 0.3) * 8 + 0.5
    )
    rate = programmes[state]
    for i in range(n_samples):
        genes = rng.random(n_genes) < 0.5
        rows = sample == f"S{i}"
        rate[np.ix_(rows, genes)] *= 1 + batch_effect * (1 if i % 2 else -0.5)
    counts = rng.poisson(rate).astype(np.int32)
    tints = rng.uniform(60, 230, (n_states, 3))
    casts = rng.normal(0, 1, (n_samples, 3))
    casts *= image_batch_effect / np.maximum(np.linalg.norm(casts, axis=1, keepdims=True), 1e-9)
    sample_idx = np.repeat(np.arange(n_samples), spots_per_sample)
    patches = np.empty((n, patch_px, patch_px, 3), np.uint8)
    for i in range(n):
        tex = rng.normal(0, 12, (patch_px, patch_px, 1))
        colour = tints[state[i]] + casts[sample_idx[i]]
        patches[i] = np.clip(colour + tex, 0, 255).astype(np.uint8)
    obs = pd.DataFrame(
        {
            keys.OBS_SAMPLE: sample,
            keys.OBS_PATIENT: sample,
            keys.OBS_BATCH: sample,
            "state": state.astype(str),
        },
        index=[f"{s}:{i}" for i, s in enumerate(sample)],
    )
    for c in (keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH, "state"):
        obs[c] = obs[c].astype("category")
    adata = ad.AnnData(
        sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    )
    adata.obsm[keys.OBSM_SPATIAL] = rng.uniform(0, 1000, (n, 2))
    adata.obs[keys.OBS_SPATIAL_MPP] = np.float32(1.0)  # coordinates in µm
    write_store(out, adata, [patches], patch_px=patch_px, patch_um=patch_px * 0.5)
    (out / keys.PAIRED_SPLITS_DIR).mkdir(exist_ok=True)
    split = make_split(adata.obs, "random", seed=seed)
    sha = write_split(split, out / keys.PAIRED_SPLITS_DIR / "random.json")
    write_json_atomic(
        out / keys.PAIRED_MANIFEST_FILE,
        {
            "status": "complete",
            "recipe": "synthetic",
            "n_spots": n,
            "n_genes": n_genes,
            "splits": {"random": {"file": keys.split_path("random"), "sha256": sha}},
        },
    )
    return out
