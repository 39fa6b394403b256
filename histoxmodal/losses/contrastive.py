"""CLIP/InfoNCE, SigLIP, CWCL, soft-target CLIP (BLEEP) and Symile.

Conventions: inputs are L2-normalised embeddings ``(n, d)``; row i of each modality is the same
spot. Every loss holds its own learnable temperature (``logit_scale``, CLIP's parametrisation,
clamped so the scale stays <= 100) and, for SigLIP, bias.

Batch-aware negatives: pass ``batch=`` (``(n,)`` int ids, e.g. the sample or patient) and choose
what happens to each kind of negative, ``"keep"``, ``"mask"`` (dropped) or ``"downweight"``
(weighted by the matching ``*_weight``):

- ``cross_batch`` acts on negatives from *other* batches. Masking them contrasts each pair only
  against its own batch (the loss-side twin of the ``by_batch`` sampler), so batch identity can
  no longer tell a positive from a negative and the tower stops encoding it: this is the option
  that reduces a batch effect (measured in ``tests/training/test_batch_correction.py``).
- ``same_batch`` acts on negatives from the *same* batch: neighbouring spots of one section are
  often near-duplicates (false negatives). Masking them leaves only cross-batch negatives, which
  batch identity separates for free, so it *strengthens* a batch effect when one is present; use
  it against false negatives, not against batch effects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal._registry import Registry
from histoxmodal.errors import ConfigError
from histoxmodal.losses.distributed import gather_no_grad, gather_with_grad, rank_offset

LOSSES: Registry[type[nn.Module]] = Registry("loss")

_NEGATIVES = ("keep", "mask", "downweight")


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss by name (``list_losses()`` lists them)."""
    return LOSSES.get(name)(**kwargs)


def list_losses(pattern: str = "*") -> list[str]:
    return LOSSES.list(pattern)


class _Contrastive(nn.Module):
    def __init__(
        self,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        max_scale: float = 100.0,
        same_batch: str = "keep",
        same_batch_weight: float = 0.5,
        cross_batch: str = "keep",
        cross_batch_weight: float = 0.5,
    ) -> None:
        super().__init__()
        for name, mode, weight in (
            ("same_batch", same_batch, same_batch_weight),
            ("cross_batch", cross_batch, cross_batch_weight),
        ):
            if mode not in _NEGATIVES:
                raise ConfigError(f"{name}={mode!r}: expected one of {_NEGATIVES}")
            if not 0.0 < weight <= 1.0:
                raise ConfigError(f"{name}_weight={weight} must be in (0, 1]")
        if same_batch == "mask" and cross_batch == "mask":
            raise ConfigError("same_batch and cross_batch both 'mask' would leave no negatives")
        if not temperature > 0:
            raise ConfigError(f"temperature={temperature} must be positive")
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )
        self.max_log_scale = math.log(max_scale)
        self.same_batch = same_batch
        self.same_batch_weight = same_batch_weight
        self.cross_batch = cross_batch
        self.cross_batch_weight = cross_batch_weight

    @property
    def batch_aware(self) -> bool:
        """True when negatives are treated by batch (then ``batch=`` is used)."""
        return self.same_batch != "keep" or self.cross_batch != "keep"

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def _batch_bias(
        self, batch: torch.Tensor | None, batch_all: torch.Tensor | None, offset: int, n: int
    ) -> torch.Tensor | None:
        """Additive logit term for negatives by batch (``0``, ``-inf`` or ``log w``), or None."""
        if not self.batch_aware or batch is None:
            return None
        same = batch[:, None] == batch_all[None, :]
        pos = torch.zeros_like(same)
        pos[torch.arange(n), torch.arange(n) + offset] = True
        bias = torch.zeros(same.shape, device=same.device)
        for mode, weight, which in (
            (self.same_batch, self.same_batch_weight, same & ~pos),
            (self.cross_batch, self.cross_batch_weight, ~same),
        ):
            if mode != "keep":
                bias = bias.masked_fill(
                    which, float("-inf") if mode == "mask" else math.log(weight)
                )
        return bias


@LOSSES.register("clip")
class ClipLoss(_Contrastive):
    """Symmetric InfoNCE (CLIP): cross-entropy of each item against every item of the other
    modality, the diagonal being the positive."""

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, *, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, off = len(a), rank_offset(len(a))
        a_all, b_all = gather_with_grad(a), gather_with_grad(b)
        batch_all = gather_no_grad(batch) if batch is not None else None
        labels = torch.arange(n, device=a.device) + off
        bias = self._batch_bias(batch, batch_all, off, n)
        la = self.scale * a @ b_all.T
        lb = self.scale * b @ a_all.T
        if bias is not None:
            la, lb = la + bias, lb + bias
        return 0.5 * (F.cross_entropy(la, labels) + F.cross_entropy(lb, labels))


@LOSSES.register("siglip")
class SigLipLoss(_Contrastive):
    """Pairwise sigmoid loss (SigLIP): every pair is a binary problem, positive on the diagonal;
    learnable temperature (init 10) and bias (init -10)."""

    def __init__(self, temperature: float = 0.1, bias: float = -10.0, **kwargs) -> None:
        super().__init__(temperature=temperature, **kwargs)
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, *, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, off = len(a), rank_offset(len(a))
        b_all = gather_with_grad(b)
        logits = self.scale * a @ b_all.T + self.bias
        sign = -torch.ones_like(logits)
        sign[torch.arange(n), torch.arange(n) + off] = 1.0
        terms = -F.logsigmoid(sign * logits)
        if self.batch_aware and batch is not None:
            bias = self._batch_bias(batch, gather_no_grad(batch), off, n)
            terms = terms * bias.exp()  # exp(-inf) = 0 drops, exp(log w) = w down-weights
        return terms.sum() / n


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets; masked (-inf) logits with zero target contribute 0."""
    logp = F.log_softmax(logits, dim=1)
    terms = torch.where(targets > 0, targets * logp, torch.zeros_like(logp))
    return -terms.sum(dim=1).mean()


@LOSSES.register("cwcl")
class CwclLoss(_Contrastive):
    """Continuously weighted contrastive loss (CWCL, Srinivasa et al. 2023).

    Instead of one positive per row, every pair (i, j) counts as positive with weight
    ``w_ij = (1 + cos(x_i, x_j)) / 2`` from the intra-modal similarity of a reference modality
    (``weights_from``: ``"a"``, ``"b"``, or features passed as ``reference=``), so spots with
    similar expression are not pushed apart as negatives.
    """

    def __init__(self, weights_from: str = "b", **kwargs) -> None:
        super().__init__(**kwargs)
        if weights_from not in ("a", "b"):
            raise ConfigError(f"weights_from={weights_from!r}: expected 'a' or 'b'")
        self.weights_from = weights_from

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        batch: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, off = len(a), rank_offset(len(a))
        a_all, b_all = gather_with_grad(a), gather_with_grad(b)
        ref = reference if reference is not None else (a if self.weights_from == "a" else b)
        ref = F.normalize(ref.detach().float(), dim=-1)
        ref_all = gather_no_grad(ref)
        w = (1.0 + ref @ ref_all.T) / 2.0
        w = w / w.sum(dim=1, keepdim=True)
        la, lb = self.scale * a @ b_all.T, self.scale * b @ a_all.T
        bias = self._batch_bias(batch, gather_no_grad(batch) if batch is not None else None, off, n)
        if bias is not None:
            la, lb = la + bias, lb + bias
            w = w * bias.exp()
            w = w / w.sum(dim=1, keepdim=True)
        return 0.5 * (_soft_ce(la, w) + _soft_ce(lb, w))


@LOSSES.register("soft_clip")
class SoftClipLoss(_Contrastive):
    """Soft-target CLIP (BLEEP, Xie et al. 2023): targets are the softmax of the mean of both
    modalities' intra-modal similarities, so near-duplicate spots share probability mass."""

    def __init__(self, target_temperature: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target_temperature = target_temperature

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, *, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        a_all, b_all = gather_with_grad(a), gather_with_grad(b)
        with torch.no_grad():
            sim = (a @ a_all.T + b @ b_all.T) / 2.0
            targets = F.softmax(sim / self.target_temperature, dim=1)
        la, lb = self.scale * a @ b_all.T, self.scale * b @ a_all.T
        bias = self._batch_bias(
            batch, gather_no_grad(batch) if batch is not None else None, rank_offset(len(a)), len(a)
        )
        if bias is not None:
            la, lb = la + bias, lb + bias
            targets = F.softmax(sim / self.target_temperature + bias, dim=1)
        return 0.5 * (_soft_ce(la, targets) + _soft_ce(lb, targets))


@LOSSES.register("symile")
class SymileLoss(_Contrastive):
    """Symile (Saporta et al. 2024) for two or more modalities.

    Scores are multilinear inner products ``MIP(x, y, z) = sum_d x_d y_d z_d``. Each modality in
    turn is the anchor: anchor row i is scored against the element-wise product of the other
    modalities at every row j (the O(N) negative sampling of the paper), cross-entropy with the
    diagonal as positive, averaged over anchors. With two modalities this is CLIP.
    """

    def forward(self, *embeddings: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        if len(embeddings) < 2:
            raise ConfigError("symile needs at least two modalities")
        n, off = len(embeddings[0]), rank_offset(len(embeddings[0]))
        gathered = [gather_with_grad(e) for e in embeddings]
        labels = torch.arange(n, device=embeddings[0].device) + off
        bias = self._batch_bias(batch, gather_no_grad(batch) if batch is not None else None, off, n)
        total = embeddings[0].new_zeros(())
        for m, anchor in enumerate(embeddings):
            prod = None
            for k, g in enumerate(gathered):
                if k != m:
                    prod = g if prod is None else prod * g
            logits = self.scale * anchor @ prod.T
            if bias is not None:
                logits = logits + bias
            total = total + F.cross_entropy(logits, labels)
        return total / len(embeddings)
