"""Gene embedders: ``embedder(fit, apply, seed) -> (n_apply, dim)``, fitted without labels on the
spots of ``fit`` and applied to the spots of ``apply``.

A PCA baseline and the scVI gene tower, in the form the leave-one-patient-out experiments of
:mod:`histoxmodal.bench.labels` call them (fitted again per held-out patient). Expression is
read through :mod:`histoxmodal.data.normalize` (log1p-CP10k, variance or Seurat-flavour gene
panels), with one difference from its all-gene default, kept from the first version of these
embedders: the library size of a spot is its total over the genes ``fit`` and ``apply`` share,
so both sides of a fit/apply pair are scaled over the same genes even when one AnnData measures
genes the other lacks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from histoxmodal import keys
from histoxmodal.data.normalize import expression_matrix, highly_variable_genes
from histoxmodal.errors import ConfigError

#: an embedder: ``f(fit_adata, apply_adata, seed) -> (n_apply, dim)``
EmbedFn = Callable[..., np.ndarray]


def _common_genes(fit, apply) -> list[str]:
    """Genes of ``fit`` that ``apply`` has too, in ``fit`` order."""
    have = set(apply.var_names)
    common = [g for g in fit.var_names if g in have]
    if not common:
        raise ConfigError(
            "the pretraining and the labelled AnnData share no gene names; are both gene "
            "symbols (var_names)?"
        )
    return common


def _restrict(adata, genes: Sequence[str]):
    """``adata`` over ``genes`` only (no copy when it already has exactly those), so that the
    library sizes :mod:`~histoxmodal.data.normalize` takes over every gene are over ``genes``."""
    if len(genes) == adata.n_vars and list(adata.var_names) == list(genes):
        return adata
    return adata[:, list(genes)]


@dataclass
class PcaEmbedder:
    """Baseline gene embedding: PCA of log-normalized expression.

    ``embedder(fit, apply, seed)``: on the spots of ``fit``, counts over the genes shared with
    ``apply`` are normalized to 10,000 per spot (library size over those shared genes) and
    ``log1p``-transformed; the ``n_top_genes`` of highest variance
    (:func:`~histoxmodal.data.normalize.highly_variable_genes`, ``flavor="variance"``) are kept,
    centred on the ``fit`` mean, and the top ``n_components`` principal axes of ``fit`` project
    ``apply``, normalized the same way, to ``(n_apply, n_components)``.
    Deterministic: ``seed`` is ignored.
    """

    n_components: int = 50
    n_top_genes: int = 2000
    deterministic = True

    @property
    def name(self) -> str:
        return f"pca{self.n_components}"

    def describe(self) -> str:
        return (
            f"PCA({self.n_components}) of log1p(CP10k) expression, top {self.n_top_genes} genes "
            "by variance; genes, mean and axes from the pretraining spots"
        )

    def __call__(self, fit, apply, seed: int = 0) -> np.ndarray:
        from sklearn.utils.extmath import randomized_svd

        genes = _common_genes(fit, apply)
        fit, apply = _restrict(fit, genes), _restrict(apply, genes)
        panel = highly_variable_genes(fit, self.n_top_genes, flavor="variance")
        xf = expression_matrix(fit, panel)
        mean = xf.mean(axis=0)
        k = min(self.n_components, *xf.shape)
        # randomised SVD with a fixed state: deterministic, and 5x faster than a full SVD here
        _, _, vt = randomized_svd(xf - mean, k, n_iter=7, random_state=0)
        return (expression_matrix(apply, panel) - mean) @ vt.T


@dataclass
class ScviEmbedder:
    """Gene tower: the scVI encoder (:class:`~histoxmodal.encoders.gene.ScviGeneEncoder`)
    pretrained on raw counts, its posterior latent mean as the embedding.

    ``embedder(fit, apply, seed)``: the panel is ``genes`` if given, else the
    ``n_top_genes`` most variable (Seurat-flavour dispersion on log1p-CP10k ``fit`` expression,
    library size over the shared genes;
    :func:`~histoxmodal.data.normalize.highly_variable_genes`) of the genes ``fit`` and
    ``apply`` share; scVI is trained for ``max_epochs`` on ``fit`` with ``batch_key`` as its
    batch (scVI's decoder sees the batch; the encoder does not, so it applies to spots of
    unseen batches); ``apply``'s raw counts are encoded to ``(n_apply, n_latent)``.
    """

    n_latent: int = 10
    n_hidden: int = 128
    n_top_genes: int = 2000
    max_epochs: int = 10
    batch_key: str = keys.OBS_PATIENT
    genes: tuple[str, ...] | None = None
    name: str = "scvi"
    deterministic = False

    def describe(self) -> str:
        panel = f"{len(self.genes)} given genes" if self.genes else f"top {self.n_top_genes} HVG"
        return (
            f"scVI encoder (n_latent={self.n_latent}, n_hidden={self.n_hidden}), {panel}, "
            f"{self.max_epochs} epochs on the pretraining spots, batch_key={self.batch_key!r}; "
            "posterior mean of raw counts"
        )

    def pretrain(self, fit, apply_genes: Sequence[str], seed: int):
        """Fit scVI on ``fit`` and return the trained :class:`ScviGeneEncoder`.

        Parameters
        ----------
        fit
            AnnData of raw counts ``(n_spots, n_genes)`` with ``obs[batch_key]``.
        apply_genes
            Genes of the data the tower will encode; the panel is chosen among those ``fit``
            has too (ignored when ``genes`` is given).
        seed
            scVI's seed.
        """
        from histoxmodal.encoders.gene import ScviGeneEncoder

        if self.batch_key not in fit.obs:
            raise ConfigError(
                f"batch_key={self.batch_key!r} is not a column of obs (columns: "
                f"{list(fit.obs.columns)}); pass batch_key= one of them"
            )
        if self.genes is not None:
            panel = list(self.genes)
        else:
            apply_set = set(apply_genes)
            shared = [g for g in fit.var_names if g in apply_set]
            panel = highly_variable_genes(_restrict(fit, shared), self.n_top_genes, flavor="seurat")
        tower = ScviGeneEncoder(genes=panel, n_latent=self.n_latent, n_hidden=self.n_hidden)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scvi-tools' and Lightning's advice on workers etc.
            tower.pretrain(fit, batch_key=self.batch_key, max_epochs=self.max_epochs, seed=seed)
        return tower.eval()

    @staticmethod
    def encode(tower, counts: np.ndarray) -> np.ndarray:
        """``(n, n_genes)`` counts (tower panel order) -> ``(n, n_latent)``."""
        import torch

        with torch.no_grad():
            return tower(torch.as_tensor(counts, dtype=torch.float32)).double().numpy()

    def __call__(self, fit, apply, seed: int = 0) -> np.ndarray:
        tower = self.pretrain(fit, list(apply.var_names), seed)
        return self.encode(tower, expression_matrix(apply, tower.genes, method="counts"))


#: the default baseline of :func:`~histoxmodal.bench.labels.pathology_from_genes`: PCA(50) of
#: log-normalized expression
PCA_BASELINE = PcaEmbedder()
