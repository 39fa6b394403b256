"""Gene towers over a fixed gene panel.

Each tower states the panel (``genes``) and the normalization of its input
(``normalization``, as produced by :class:`~histoxmodal.data.dataset.PairedDataset`); genes a
sample did not measure arrive with ``gene_mask`` False and are treated as absent, not as zero
expression.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from histoxmodal import keys
from histoxmodal.encoders.registry import ENCODERS
from histoxmodal.errors import ConfigError


def _panel(n_genes: int | None, genes: Sequence[str] | None) -> tuple[list[str] | None, int]:
    """The gene panel a tower reads: names (if given) and size."""
    if genes is not None:
        return list(genes), len(genes)
    if not n_genes:
        raise ConfigError("give n_genes or genes (the panel the tower reads)")
    return None, int(n_genes)


class BatchSpecificNorm(nn.Module):
    """Batch normalization with its own statistics for every batch (domain-specific batch norm,
    Chang et al. 2019) and one shared affine transform.

    Each batch's features are centred and scaled by that batch's mean and variance, so a shift or
    scale that a batch adds (a technical batch effect) is removed inside the layer and cannot be
    re-learned by the weights after it. Training uses the statistics of each batch's rows in the
    minibatch (and keeps running averages); evaluation uses the running averages, and for a
    batch never seen in training (a new sample at test time) the statistics of all its rows as
    :func:`adapt_batch_norms` fixed them (``Run.embed`` does), else of its rows in the current
    call, as AdaBN does.

    Parameters
    ----------
    n_features
        Feature size ``(B, n_features)``.
    n_batches
        Number of batch ids (``0 .. n_batches - 1``).
    """

    def __init__(
        self, n_features: int, n_batches: int, *, momentum: float = 0.1, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.n_batches, self.momentum, self.eps = n_batches, momentum, eps
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("running_mean", torch.zeros(n_batches, n_features))
        self.register_buffer("running_var", torch.ones(n_batches, n_features))
        self.register_buffer("seen", torch.zeros(n_batches, dtype=torch.bool))
        # the statistics of batches never seen in training, fixed over all their rows by
        # adapt_batch_norms (not part of the saved weights)
        self.register_buffer("adapted_mean", torch.zeros(n_batches, n_features), persistent=False)
        self.register_buffer("adapted_var", torch.ones(n_batches, n_features), persistent=False)
        self.register_buffer("adapted", torch.zeros(n_batches, dtype=torch.bool), persistent=False)
        self.adapting = False

    def forward(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        if batch is None:
            raise ConfigError("this tower is batch-conditioned: pass batch ids")
        if len(batch) and (int(batch.min()) < 0 or int(batch.max()) >= self.n_batches):
            raise ConfigError(
                f"batch id {int(batch.max())} outside the {self.n_batches} batches this tower "
                "was built for"
            )
        mean = self.running_mean[batch].to(x.dtype)
        var = self.running_var[batch].to(x.dtype)
        for b in batch.unique().tolist():
            rows = batch == b
            if not self.training and bool(self.seen[b]):
                continue
            if not self.training and not self.adapting and bool(self.adapted[b]):
                m, v = self.adapted_mean[b].to(x.dtype), self.adapted_var[b].to(x.dtype)
            elif int(rows.sum()) < 2:
                continue
            else:
                xb = x[rows]
                m, v = xb.mean(0), xb.var(0, unbiased=False)
            mean, var = mean.clone(), var.clone()
            mean[rows], var[rows] = m, v
            if self.training:
                with torch.no_grad():
                    w = self.momentum if bool(self.seen[b]) else 1.0
                    self.running_mean[b].lerp_(m.detach().float(), w)
                    self.running_var[b].lerp_(v.detach().float(), w)
                    self.seen[b] = True
            elif self.adapting:
                with torch.no_grad():
                    self.adapted_mean[b] = m.detach().float()
                    self.adapted_var[b] = v.detach().float()
                    self.adapted[b] = True
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def add_unseen_batches(tower: nn.Module, n_batches: int) -> int:
    """Give every batch-conditioned layer of ``tower`` slots for ``n_batches`` batch ids, the
    new ones unseen in training, so a dataset that brings sections the run never knew (a
    separately built test set) is normalized with their own statistics (AdaBN, see
    :func:`adapt_batch_norms`) instead of borrowing a training batch's id.

    Returns the number of slots added (0 when ``tower`` already has enough, or is not
    batch-conditioned).

    Raises
    ------
    ConfigError
        The tower conditions on a one-hot of the batch: its weights have no column for a
        batch it was not built with.
    """
    added = 0
    for m in tower.modules():
        if getattr(m, "conditioning", None) == "onehot" and n_batches > m.n_batches:
            raise ConfigError(
                f"the gene tower conditions on a one-hot of {m.n_batches} batches and cannot "
                f"embed the {n_batches - m.n_batches} new batch(es) of this dataset; evaluate on "
                "the run's own dataset, or train with conditioning 'norm'"
            )
        if isinstance(m, BatchSpecificNorm) and n_batches > m.n_batches:
            extra = n_batches - m.n_batches
            for name, fill in (
                ("running_mean", 0.0), ("running_var", 1.0), ("adapted_mean", 0.0),
                ("adapted_var", 1.0), ("seen", False), ("adapted", False),
            ):  # fmt: skip
                old = getattr(m, name)
                pad = torch.full((extra, *old.shape[1:]), fill, dtype=old.dtype, device=old.device)
                setattr(m, name, torch.cat([old, pad]))
            added = max(added, extra)
            m.n_batches = n_batches
        elif getattr(m, "conditioning", None) == "norm" and n_batches > m.n_batches:
            m.n_batches = n_batches
    return added


def adapt_batch_norms(
    tower: nn.Module, encode: Callable[[torch.Tensor], object], batch: torch.Tensor
) -> list[int]:
    """AdaBN over whole batches: fix the statistics of every batch ``tower`` never saw in
    training from **all** of its rows, in one call per batch, instead of from whichever rows
    share an embedding minibatch (which makes a new sample's embeddings depend on the batch
    size and on the rows embedded beside it).

    ``encode(rows)`` runs ``tower`` on the rows (a boolean mask) of one batch; ``batch`` holds
    the batch id of every row. The :class:`BatchSpecificNorm` layers of ``tower`` keep the
    statistics (not saved with the weights) until the next call. Returns the adapted ids.
    """
    layers = [m for m in tower.modules() if isinstance(m, BatchSpecificNorm)]
    if not layers:
        return []
    unseen = [int(b) for b in batch.unique().tolist() if not bool(layers[0].seen[b])]
    was = [m.training for m in layers]
    for m in layers:
        m.adapted.zero_()
        m.adapting = True
        m.eval()
    try:
        with torch.no_grad():
            for b in unseen:
                encode(batch == b)
    finally:
        for m, t in zip(layers, was, strict=True):
            m.adapting = False
            m.train(t)
    return unseen


_CONDITIONING = ("norm", "onehot")


class CovariateMLP(nn.Module):
    """Fully connected layers conditioned on a batch covariate in every layer.

    ``conditioning="norm"`` (default): each layer's input is normalized with statistics of its
    own batch (:class:`BatchSpecificNorm`), so a per-batch shift is removed at every depth.
    ``conditioning="onehot"``: the one-hot batch is concatenated to every layer's input
    (scvi-tools' ``FCLayers(n_cat_list=...)``). That pattern corrects batches in scVI because a
    *decoder* gets the batch for free; in a contrastive encoder with no decoder it hands the
    tower the batch identity, which the loss then uses when the batch is visible in the other
    modality too (measured: kNN batch purity 2.00 vs 1.46 without it). Use it only where the
    objective rewards removing the batch.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        *,
        n_batches: int = 0,
        conditioning: str = "norm",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if conditioning not in _CONDITIONING:
            raise ConfigError(f"conditioning={conditioning!r}: expected one of {_CONDITIONING}")
        self.n_batches = n_batches
        self.conditioning = conditioning if n_batches else None
        extra = n_batches if self.conditioning == "onehot" else 0
        dims = [n_in, *hidden]
        self.layers = nn.ModuleList(nn.Linear(d + extra, h) for d, h in itertools.pairwise(dims))
        if self.conditioning == "norm":
            self.in_norm = BatchSpecificNorm(n_in, n_batches)
            self.norms = nn.ModuleList(BatchSpecificNorm(h, n_batches) for h in hidden)
        else:
            self.norms = nn.ModuleList(nn.LayerNorm(h) for h in hidden)
        self.out = nn.Linear(dims[-1] + extra, n_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_batches and batch is None:
            raise ConfigError("this tower is batch-conditioned: pass batch ids")
        if self.conditioning == "onehot":
            onehot = nn.functional.one_hot(batch, self.n_batches).to(x.dtype)
            h = x
            for lin, norm in zip(self.layers, self.norms, strict=True):
                h = self.drop(torch.relu(norm(lin(torch.cat([h, onehot], dim=-1)))))
            return self.out(torch.cat([h, onehot], dim=-1))
        h = self.in_norm(x, batch) if self.conditioning == "norm" else x
        for lin, norm in zip(self.layers, self.norms, strict=True):
            z = lin(h)
            h = self.drop(torch.relu(norm(z, batch) if self.conditioning == "norm" else norm(z)))
        return self.out(h)


class MLPGeneEncoder(nn.Module):
    """MLP over the normalized expression of a gene panel.

    Parameters
    ----------
    n_genes
        Panel size (or give ``genes``).
    genes
        The panel's gene names, stored with the model.
    hidden, out_dim, dropout
        Layer sizes.
    n_batches, conditioning
        ``n_batches > 0`` conditions every layer on the batch (see :class:`CovariateMLP`):
        ``"norm"`` (batch-specific normalization, removes per-batch shifts) or ``"onehot"``.
    """

    normalization = "log1p_cp10k"
    inputs = (keys.BATCH_EXPRESSION, keys.BATCH_GENE_MASK, keys.OBS_BATCH)

    def __init__(
        self,
        n_genes: int | None = None,
        *,
        genes: Sequence[str] | None = None,
        hidden: Sequence[int] = (1024, 512),
        out_dim: int = 256,
        n_batches: int = 0,
        conditioning: str = "norm",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.genes, n_genes = _panel(n_genes, genes)
        self.n_genes = int(n_genes)
        self.embed_dim = out_dim
        self.net = CovariateMLP(
            n_genes,
            hidden,
            out_dim,
            n_batches=n_batches,
            conditioning=conditioning,
            dropout=dropout,
        )

    def forward(
        self,
        expression: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, n_genes)`` -> ``(B, out_dim)``; unmeasured genes are zeroed."""
        if gene_mask is not None:
            expression = expression * gene_mask.to(expression.dtype)
        return self.net(expression, batch)


class GeneTransformerEncoder(nn.Module):
    """A small transformer over gene tokens with rank-value encoding (Geneformer/Nicheformer).

    Each spot becomes the sequence of its ``max_tokens`` most expressed measured genes, ordered
    by expression divided by the gene's typical level (``gene_scale``, set with
    :meth:`fit_scale`), so housekeeping genes do not crowd out informative ones. Token = gene
    embedding + rank embedding; a class token is pooled.
    """

    normalization = "log1p_cp10k"
    inputs = (keys.BATCH_EXPRESSION, keys.BATCH_GENE_MASK, keys.OBS_BATCH)

    def __init__(
        self,
        n_genes: int | None = None,
        *,
        genes: Sequence[str] | None = None,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_tokens: int = 256,
        out_dim: int = 256,
        n_batches: int = 0,
        conditioning: str = "norm",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if conditioning not in _CONDITIONING:
            raise ConfigError(f"conditioning={conditioning!r}: expected one of {_CONDITIONING}")
        self.genes, n_genes = _panel(n_genes, genes)
        self.n_genes, self.max_tokens, self.embed_dim = int(n_genes), max_tokens, out_dim
        self.gene_embed = nn.Embedding(n_genes + 1, dim, padding_idx=0)
        self.rank_embed = nn.Embedding(max_tokens, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        # batch conditioning: a batch token added to the class token ("onehot"), or the pooled
        # features normalized per batch ("norm", see BatchSpecificNorm)
        use = conditioning if n_batches else None
        self.batch_embed = nn.Embedding(n_batches, dim) if use == "onehot" else None
        self.batch_norm = BatchSpecificNorm(dim, n_batches) if use == "norm" else None
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.register_buffer("gene_scale", torch.ones(n_genes))

    @torch.no_grad()
    def fit_scale(self, expression: torch.Tensor) -> None:
        """Set each gene's scale to its median over the spots that express it."""
        x = expression.float()
        x = torch.where(x > 0, x, torch.full_like(x, float("nan")))
        med = torch.nanmedian(x, dim=0).values
        self.gene_scale.copy_(torch.nan_to_num(med, nan=1.0).clamp(min=1e-6))

    def tokens(self, expression: torch.Tensor, gene_mask: torch.Tensor | None = None):
        """Token ids ``(B, K)`` (gene index + 1, 0 = padding) and the padding mask."""
        score = expression / self.gene_scale
        valid = expression > 0
        if gene_mask is not None:
            valid = valid & gene_mask.bool()
        score = score.masked_fill(~valid, float("-inf"))
        k = min(self.max_tokens, self.n_genes)
        top, idx = score.topk(k, dim=1)
        pad = torch.isinf(top)
        return (idx + 1).masked_fill(pad, 0), pad

    def forward(
        self,
        expression: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ids, pad = self.tokens(expression, gene_mask)
        ranks = torch.arange(ids.shape[1], device=ids.device)
        h = self.gene_embed(ids) + self.rank_embed(ranks)[None]
        cls = self.cls.expand(len(h), -1, -1)
        if self.batch_embed is not None:
            if batch is None:
                raise ConfigError("this tower is batch-conditioned: pass batch ids")
            cls = cls + self.batch_embed(batch)[:, None]
        h = torch.cat([cls, h], dim=1)
        mask = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        h = self.norm(self.encoder(h, src_key_padding_mask=mask)[:, 0])
        if self.batch_norm is not None:
            h = self.batch_norm(h, batch)
        return self.head(h)


#: what each gene normalization means for a user (``histoxmodal models``)
INPUTS = {
    "log1p_cp10k": "log1p of counts per 10k, the dataset's panel",
    "counts": "raw counts, the dataset's panel",
}


def _default_dim(cls: type, defaults: dict) -> int | None:
    """The output size a tower has with ``defaults``: ``out_dim``, or ``n_latent`` (scVI)."""
    import inspect

    params = inspect.signature(cls).parameters
    for key in ("out_dim", "n_latent"):
        if key in params:
            return int(defaults.get(key, params[key].default))
    return None


def _reg(name: str, cls: type, defaults: dict, summary: str) -> None:
    def factory(**overrides) -> nn.Module:
        return cls(**{**defaults, **overrides})

    factory.__name__ = name
    factory.__doc__ = summary
    ENCODERS.register(
        name,
        modality="gene",
        arch=cls.__name__,
        normalization=cls.normalization,
        input=INPUTS[cls.normalization],
        dim=_default_dim(cls, defaults),
        weights="none: trained with the image tower",
        licence="Apache-2.0 (histoxmodal)",
    )(factory)


_reg("gene_mlp", MLPGeneEncoder, {}, "MLP over a gene panel (1024-512 hidden, 256-d).")
_reg(
    "gene_transformer",
    GeneTransformerEncoder,
    {},
    "Transformer over rank-value gene tokens (2 layers, 128-d, top 256 genes).",
)
_reg("test_gene_mlp", MLPGeneEncoder, {"hidden": (16,), "out_dim": 8}, "Tiny gene MLP (tests).")
_reg(
    "test_gene_transformer",
    GeneTransformerEncoder,
    {"dim": 16, "depth": 1, "heads": 2, "max_tokens": 8, "out_dim": 8},
    "Tiny gene transformer (tests).",
)


class ScviGeneEncoder(nn.Module):
    """The encoder of an scVI model (scvi-tools) as a gene tower: raw counts in, the posterior
    mean of the latent space out.

    Built with exactly the layers ``scvi.model.SCVI`` gives its ``z_encoder`` (so weights move
    between them with a strict ``load_state_dict``). :meth:`pretrain` fits scVI on the training
    spots with ``batch_key`` (scVI's own batch correction: the decoder, not the encoder, sees the
    batch), then copies the trained encoder in. ``freeze=True`` keeps it fixed during contrastive
    training; otherwise it is fine-tuned.
    """

    normalization = "counts"
    inputs = (keys.BATCH_EXPRESSION, keys.BATCH_GENE_MASK, keys.OBS_BATCH)

    def __init__(
        self,
        n_genes: int | None = None,
        *,
        genes: Sequence[str] | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_batches: int = 0,
        encode_covariates: bool = False,
        dropout: float = 0.1,
        pretrain_epochs: int = 0,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        from histoxmodal.deps import require_extra

        require_extra("scvi", "the scVI gene tower")
        from scvi.nn import Encoder

        self.genes, n_genes = _panel(n_genes, genes)
        self.n_genes, self.embed_dim = n_genes, n_latent
        self.hparams = {
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "encode_covariates": encode_covariates,
            "dropout_rate": dropout,
        }
        self.n_batches = n_batches
        self.use_batch = bool(encode_covariates and n_batches)
        self.pretrain_epochs, self.freeze = pretrain_epochs, freeze
        self.encoder = Encoder(
            n_genes,
            n_latent,
            n_cat_list=[n_batches] if self.use_batch else None,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout,
            distribution="normal",
            inject_covariates=True,
            use_batch_norm=True,
            use_layer_norm=False,
            var_activation=None,
            return_dist=True,
        )
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        for name, p in self.encoder.named_parameters():
            # the tower outputs the posterior mean: the variance head gets no gradient
            p.requires_grad = not self.freeze and not name.startswith("var_encoder")

    def pretrain(
        self, adata, *, batch_key: str = "batch", max_epochs: int | None = None, seed: int = 0
    ) -> None:
        """Fit scVI on ``adata`` (raw counts, this tower's genes) and take its encoder."""
        import scvi

        if self.genes is None:
            raise ConfigError("pretraining needs the gene names (genes=...)")
        sub = adata[:, self.genes].copy()
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(sub, batch_key=batch_key)
        model = scvi.model.SCVI(
            sub,
            n_latent=self.hparams["n_latent"],
            n_hidden=self.hparams["n_hidden"],
            n_layers=self.hparams["n_layers"],
            dropout_rate=self.hparams["dropout_rate"],
            encode_covariates=self.hparams["encode_covariates"],
        )
        model.train(
            max_epochs=max_epochs or self.pretrain_epochs or 50,
            accelerator="cpu",
            enable_progress_bar=False,
        )
        self.encoder.load_state_dict(model.module.z_encoder.state_dict())
        self._apply_freeze()

    def forward(
        self,
        expression: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, n_genes)`` raw counts -> ``(B, n_latent)`` posterior means."""
        if gene_mask is not None:
            expression = expression * gene_mask.to(expression.dtype)
        cats = []
        if self.use_batch:
            if batch is None:
                raise ConfigError("this scVI encoder encodes covariates: pass batch ids")
            cats = [batch.view(-1, 1)]
        dist, _ = self.encoder(torch.log1p(expression), *cats)
        return dist.loc


def gene_scvi(weights: str | None = None, **kwargs) -> nn.Module:
    """scVI encoder (scvi-tools); raw counts in, the posterior mean out. With ``weights=DIR``
    a saved ``SCVI`` folder (``model.save(DIR)``, ``histoxmodal pretrain-genes``); without, it
    is pretrained on the training spots with the batch key (``pretrain_epochs``)."""
    if weights is not None:
        from histoxmodal.encoders.scvi_models import ScviModelTower

        return ScviModelTower(weights, **kwargs)
    return ScviGeneEncoder(**kwargs)


def gene_drvi(weights: str | None = None, **kwargs) -> nn.Module:
    """DRVI encoder (drvi-py) from a saved ``DRVI`` folder (``weights=DIR``: ``model.save``,
    ``histoxmodal pretrain-genes --model drvi``); raw counts in, the posterior mean out."""
    from histoxmodal.encoders.scvi_models import DrviModelTower

    if weights is None:
        raise ConfigError(
            "gene_drvi needs a saved DRVI model: set model.gene_weights=DIR (a folder "
            "`histoxmodal pretrain-genes --model drvi` writes, or DRVI's model.save(DIR))"
        )
    return DrviModelTower(weights, **kwargs)


ENCODERS.register(
    "gene_scvi",
    modality="gene",
    arch="ScviGeneEncoder",
    normalization="counts",
    input="raw counts, mapped by gene name onto a saved model's genes",
    dim="n_latent (10 untrained)",
    weights="optional: a local SCVI folder (model.gene_weights=DIR), else pretrained on the "
    "training spots",
    licence="BSD-3-Clause (scvi-tools)",
)(gene_scvi)
ENCODERS.register(
    "gene_drvi",
    modality="gene",
    arch="DRVI",
    normalization="counts",
    input="raw counts, mapped by gene name onto the model's genes (missing ones zero)",
    dim="n_latent of the saved model",
    weights="required: a local DRVI folder (model.gene_weights=DIR); never downloaded",
    needs_weights=True,
    licence="BSD-3-Clause (drvi-py)",
)(gene_drvi)
_reg(
    "test_gene_scvi",
    ScviGeneEncoder,
    {"n_latent": 4, "n_hidden": 16, "pretrain_epochs": 2},
    "Tiny scVI encoder (tests).",
)


def gene_nicheformer(weights: str | None = None, **kwargs) -> nn.Module:
    """Nicheformer (theislab) from a local checkpoint folder (``weights=DIR``: the Lightning
    ``.ckpt``, ``genes.txt``, ``technology_mean.npy``); raw counts in, rank tokens, the mean of
    the last layer's token outputs out. Refuses to run untrained unless ``random_weights=True``."""
    from histoxmodal.encoders.nicheformer import NicheformerGeneTower

    return NicheformerGeneTower(weights, **kwargs)


ENCODERS.register(
    "gene_nicheformer",
    modality="gene",
    arch="Nicheformer",
    normalization="counts",
    input="raw counts, mapped by gene name onto the model's genes (missing ones zero), "
    "scaled by the technology mean, ranked into tokens",
    dim="dim_model of the checkpoint (512 published)",
    weights="required: a local Nicheformer folder (model.gene_weights=DIR: .ckpt, genes.txt, "
    "technology_mean.npy; published on Mendeley Data); never downloaded",
    needs_weights=True,
    licence="BSD-3-Clause (nicheformer)",
)(gene_nicheformer)
