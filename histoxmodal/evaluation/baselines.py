"""Baselines that contrastive training has to beat: hand-crafted colour and texture features of
each patch, and any image representation mapped into the expression space by ridge regression.
"""

from __future__ import annotations

import numpy as np

from histoxmodal.data.transforms import HED_FROM_RGB


def handcrafted_features(patches: np.ndarray, *, batch: int = 256) -> np.ndarray:
    """Colour and texture features of H&E patches, the classic hand-made baseline.

    Per patch: RGB mean, standard deviation and 10/50/90th percentiles (15); haematoxylin,
    eosin and DAB optical densities (Ruifrok-Johnston deconvolution) mean and standard deviation
    (6); an 8-bin grey-level histogram (8); gradient-magnitude mean and standard deviation and
    Laplacian variance (3); the fraction of pixels darker than three haematoxylin-density
    thresholds, a proxy for nuclear density (3). 35 features.

    Parameters
    ----------
    patches
        uint8 ``(n, H, W, 3)``.

    Returns
    -------
    np.ndarray
        ``(n, 35)`` float32.
    """
    import cv2

    out = []
    for s in range(0, len(patches), batch):
        p = np.asarray(patches[s : s + batch])
        x = p.reshape(len(p), -1, 3).astype(np.float32)
        rgb = [
            x.mean(1),
            x.std(1),
            *np.percentile(x, [10, 50, 90], axis=1),
        ]
        od = -np.log(np.maximum(x, 1.0) / 255.0)
        hed = od @ HED_FROM_RGB
        grey = p.astype(np.float32).mean(-1)
        hist = np.stack([np.histogram(g, bins=8, range=(0, 255))[0] / g.size for g in grey]).astype(
            np.float32
        )
        tex = []
        for g in grey:
            gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
            gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
            mag = np.sqrt(gx * gx + gy * gy)
            tex.append([mag.mean(), mag.std(), cv2.Laplacian(g, cv2.CV_32F).var()])
        h = hed[..., 0]
        dark = np.stack([(h > t).mean(1) for t in (0.3, 0.6, 0.9)], axis=1)
        out.append(
            np.concatenate(
                [*rgb, hed.mean(1), hed.std(1), hist, np.asarray(tex, np.float32), dark], axis=1
            )
        )
    return np.concatenate(out).astype(np.float32)


def ridge_to_expression_space(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    n_components: int = 50,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Put an image representation and expression in one space, for retrieval baselines.

    Expression is reduced to its first ``n_components`` principal components (fitted on the
    training rows); a ridge head maps the image features onto them. Returns the predicted
    ``(n_test, k)`` and the measured ``(n_test, k)`` coordinates: retrieval between them is what
    a representation *without* a learned joint space achieves.
    """
    from histoxmodal.heads.expression import RidgeHead

    mu = train_y.mean(0)
    _, _, vt = np.linalg.svd(train_y - mu, full_matrices=False)
    comps = vt[: min(n_components, len(vt))].T
    ridge = RidgeHead().fit(_standardise(train_x, train_x), (train_y - mu) @ comps, groups=groups)
    return ridge.predict(_standardise(test_x, train_x)), (test_y - mu) @ comps


def _standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (x - ref.mean(0)) / np.maximum(ref.std(0), 1e-6)
