"""The Lightning module: two towers, projection heads, a contrastive loss, batch corrections."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from histoxmodal import keys
from histoxmodal.encoders import ProjectionHead, create_encoder
from histoxmodal.losses import create_loss
from histoxmodal.losses.adversarial import BatchAdversary
from histoxmodal.training.config import TrainConfig


class ContrastiveModule(L.LightningModule):
    """Aligns an image tower and a gene tower in one embedding space.

    Images arrive as uint8 ``(B, 3, H, W)`` and are resized and normalized on the device with the
    image tower's own preprocessing; expression arrives normalized with its gene mask.
    """

    def __init__(self, config: TrainConfig, genes: list[str], n_batches: int) -> None:
        super().__init__()
        self.config = config
        m, c = config.model, config.correction
        self.image = create_encoder(
            m.image_encoder, weights=m.image_weights, mode=m.image_mode, **m.image_kwargs
        )
        gene_kwargs = {**m.gene_kwargs, "genes": genes}
        if m.gene_weights:
            gene_kwargs["weights"] = m.gene_weights
        if c.batch_conditioned_genes:
            gene_kwargs["n_batches"] = n_batches
        self.gene = create_encoder(m.gene_encoder, **gene_kwargs)
        self.image_head = ProjectionHead(self.image.embed_dim, m.embed_dim, kind=m.head)
        self.gene_head = ProjectionHead(self.gene.embed_dim, m.embed_dim, kind=m.head)
        loss_kwargs = dict(config.loss.kwargs)
        if c.same_batch != "keep":
            loss_kwargs["same_batch"] = c.same_batch
        if c.cross_batch != "keep":
            loss_kwargs["cross_batch"] = c.cross_batch
        self.loss = (
            None if config.loss.name == "none" else create_loss(config.loss.name, **loss_kwargs)
        )
        self.expression_head = (
            torch.nn.Linear(self.image.embed_dim, len(genes))
            if config.loss.expression_weight > 0
            else None
        )
        self.adversary = (
            BatchAdversary(m.embed_dim, n_batches)
            if c.adversarial_weight > 0 and n_batches > 1
            else None
        )
        pre = self.image.preprocess
        self.register_buffer(
            "mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0, persistent=False
        )

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> the image tower's features (before the head)."""
        x = images.to(self.mean.device).float()
        size = self.image.preprocess.input_size
        if x.shape[-1] != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return self.image((x - self.mean) / self.std)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> L2-normalized ``(B, embed_dim)``."""
        return self.image_head(self.image_features(images))

    def embed_genes(
        self,
        expression: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conditioned = self.config.correction.batch_conditioned_genes
        return self.gene_head(self.gene(expression, gene_mask, batch if conditioned else None))

    def adapt_unseen_batches(self, b: dict[str, torch.Tensor]) -> list[int]:
        """Fix the gene tower's statistics of batches it never saw in training from all their
        rows in ``b`` (the gene inputs of a whole dataset;
        :func:`~histoxmodal.encoders.gene.adapt_batch_norms`). A no-op without batch-specific
        normalization. Returns the adapted batch ids."""
        from histoxmodal.encoders.gene import adapt_batch_norms

        if not self.config.correction.batch_conditioned_genes:
            return []
        dev = self.mean.device
        key = self.config.correction.batch_key
        expr, mask = b[keys.BATCH_EXPRESSION].to(dev), b[keys.BATCH_GENE_MASK].to(dev)
        ids = b[key].to(dev)
        return adapt_batch_norms(self.gene, lambda r: self.gene(expr[r], mask[r], ids[r]), ids)

    def adapt_to_dataset(self, dataset) -> list[int]:
        """AdaBN for a whole dataset (a :class:`~histoxmodal.data.dataset.PairedDataset`, read
        without its images): slots for the batches the towers were not built with
        (:func:`~histoxmodal.encoders.gene.add_unseen_batches`), then the statistics of every
        batch never trained on from all its rows (:meth:`adapt_unseen_batches`), whatever rows
        are embedded afterwards. Returns the adapted batch ids."""
        if not self.config.correction.batch_conditioned_genes:
            return []
        import numpy as np
        import torch.utils.data as tud

        from histoxmodal.encoders.gene import BatchSpecificNorm, add_unseen_batches

        key = self.config.correction.batch_key
        # sections the run never knew (another dataset) get ids after the run's own
        add_unseen_batches(self.gene, len(dataset.categories[key]))
        norms = [m for m in self.modules() if isinstance(m, BatchSpecificNorm)]
        if not norms:
            return []
        ids = np.unique(dataset.codes(key))
        seen = norms[0].seen.cpu().numpy()
        if ids.size and seen[ids].all():
            return []  # every batch trained on: nothing to adapt
        items = [dataset.item_without_image(i) for i in range(len(dataset))]
        return self.adapt_unseen_batches(tud.default_collate(items))

    def _features(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image tower's features of a batch; cached frozen-tower features
        (``image_features``) skip the tower."""
        if keys.BATCH_IMAGE_FEATURES in b:
            return b[keys.BATCH_IMAGE_FEATURES].to(self.mean.device)
        return self.image_features(b[keys.BATCH_IMAGE])

    def _embed(
        self, b: dict[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and gene embeddings of a batch (``features``: its image features, if known)."""
        dev = self.mean.device
        key = self.config.correction.batch_key
        za = self.image_head(self._features(b) if features is None else features)
        zb = self.embed_genes(
            b[keys.BATCH_EXPRESSION].to(dev), b[keys.BATCH_GENE_MASK].to(dev), b[key].to(dev)
        )
        return za, zb

    def embed_batch(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, d), "gene": (B, d)}`` L2-normalized embeddings of a batch; a batch of
        images only (patches of a slide, no expression) gives ``{"image"}``."""
        if keys.BATCH_EXPRESSION not in b and keys.BATCH_IMAGE in b:
            return {"image": self.embed_images(b[keys.BATCH_IMAGE])}
        za, zb = self._embed(b)
        return {"image": za, "gene": zb}

    def compute_loss(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training objective of one batch: ``loss`` and its parts."""
        key = self.config.correction.batch_key
        features = self._features(b)
        za, zb = self._embed(b, features)
        out: dict[str, torch.Tensor] = {}
        loss = za.new_zeros(())
        if self.loss is not None:
            out["contrastive"] = self.loss(za, zb, batch=b[key])
            loss = loss + out["contrastive"]
        if self.expression_head is not None:
            dev = features.device
            y = b[keys.BATCH_EXPRESSION].to(dev)
            mask = b[keys.BATCH_GENE_MASK].to(dev).to(y.dtype).expand_as(y)
            err = (self.expression_head(features) - y) ** 2 * mask
            out["expression_mse"] = err.sum() / mask.sum().clamp(min=1.0)
            loss = loss + self.config.loss.expression_weight * out["expression_mse"]
        if self.adversary is not None:
            out["adversary"] = 0.5 * (self.adversary(za, b[key]) + self.adversary(zb, b[key]))
            loss = loss + self.config.correction.adversarial_weight * out["adversary"]
        out["loss"] = loss
        return out

    def _step(self, b: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        parts = self.compute_loss(b)
        n = len(b[keys.BATCH_EXPRESSION])
        for name, value in parts.items():
            self.log(
                f"{stage}/{name}",
                value,
                batch_size=n,
                sync_dist=stage == "val",
                prog_bar=stage == "train" and name == "loss",
            )
        return parts["loss"]

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.config.optim)


def adamw_warmup_cosine(module, optim) -> dict:
    """AdamW over the trainable parameters, linear warm-up then cosine decay per step (the
    Lightning ``configure_optimizers`` answer shared by the training modules)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warm = max(1, int(optim.warmup_fraction * total))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
