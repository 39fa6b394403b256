"""CLIP/InfoNCE, SigLIP, CWCL, soft-target CLIP (BLEEP) and Symile.

Conventions: inputs are L2-normalized embeddings ``(n, d)``; row i of each modality is the same
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

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal.errors import ConfigError
from histoxmodal.losses.distributed import gather_no_grad, gather_with_grad, rank_offset
from histoxmodal.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")

_NEGATIVES = ("keep", "mask", "downweight")


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss by name (``list_losses()`` lists them)."""
    return LOSSES.get(name)(**kwargs)


def list_losses(pattern: str = "*") -> list[str]:
    """Registered loss names matching a shell-style ``pattern``."""
    return LOSSES.list(pattern)


def describe_loss(name: str) -> dict:
    """What a registered loss is: its summary line and the options its constructor takes."""
    import inspect

    info = LOSSES.describe(name)
    sig = inspect.signature(LOSSES.get(name))
    info["options"] = {
        p.name: p.default
        for p in sig.parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    return info


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


_SYMILE_SAMPLING = ("n", "n_squared", "matched")


@LOSSES.register("symile")
class SymileLoss(_Contrastive):
    """Symile (Saporta et al. 2024) for two or more modalities.

    Scores are multilinear inner products ``MIP(x, y, z) = sum_d x_d y_d z_d``, which capture
    information held only jointly by the modalities (pairwise dot products cannot). Each modality
    in turn is the anchor; its positive is the true tuple, cross-entropy over the candidates,
    averaged over anchors. Negatives (``negative_sampling``):

    - ``"n"`` (the paper's O(N) default): the other modalities' rows are permuted independently
      and multiplied, so each anchor meets ``N - 1`` *mixed* tuples ``(y_p(j), z_q(j))``: this
      is what teaches the model that the combination matters. Permutations come from a generator
      seeded by ``seed`` and the step, the same on every process, so results do not depend on
      the number of GPUs.
    - ``"n_squared"``: every combination ``(y_j, z_k)`` (three modalities at most).
    - ``"matched"``: the other rows' true tuples ``(y_j, z_j)``; with two modalities every mode
      is exactly CLIP.

    Missing modalities: ``present`` ``(n, n_modalities)`` bool; a row whose anchor modality is
    missing adds no anchor term (the model replaces a missing embedding by a learned one before
    the loss, as in the paper's missing-data experiments).
    """

    def __init__(self, negative_sampling: str = "n", seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if negative_sampling not in _SYMILE_SAMPLING:
            raise ConfigError(
                f"negative_sampling={negative_sampling!r}: expected one of {_SYMILE_SAMPLING}"
            )
        self.negative_sampling, self.seed = negative_sampling, seed
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)

    def permutations(self, n: int, k: int, step: int) -> list[torch.Tensor]:
        """The ``k`` row permutations of step ``step`` (identical on every process)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return [torch.randperm(n, generator=g) for _ in range(k)]

    def forward(
        self,
        *embeddings: torch.Tensor,
        batch: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if len(embeddings) < 2:
            raise ConfigError("symile needs at least two modalities")
        mode = "matched" if len(embeddings) == 2 else self.negative_sampling
        if mode == "n_squared" and len(embeddings) > 3:
            raise ConfigError("negative_sampling='n_squared' takes at most three modalities")
        if self.batch_aware and mode != "matched":
            raise ConfigError("batch-aware negatives need negative_sampling='matched'")
        n, off = len(embeddings[0]), rank_offset(len(embeddings[0]))
        gathered = [gather_with_grad(e) for e in embeddings]
        n_all = len(gathered[0])
        labels = torch.arange(n, device=embeddings[0].device) + off
        bias = self._batch_bias(batch, gather_no_grad(batch) if batch is not None else None, off, n)
        perms = self.permutations(n_all, len(embeddings), int(self.step)) if mode == "n" else None
        if self.training:
            self.step += 1
        total = embeddings[0].new_zeros(())
        n_terms = embeddings[0].new_zeros(())
        for m, anchor in enumerate(embeddings):
            others = [g for k, g in enumerate(gathered) if k != m]
            positive = anchor
            for k, g in enumerate(gathered):
                if k != m:
                    positive = positive * g[off : off + n]
            positive = positive.sum(dim=1)
            if mode == "matched":
                prod = others[0]
                for g in others[1:]:
                    prod = prod * g
                logits = anchor @ prod.T
            elif mode == "n":
                prod = others[0][perms[m]]
                for j, g in enumerate(others[1:], start=1):
                    prod = prod * g[perms[(m + j) % len(perms)]]
                logits = anchor @ prod.T
            else:  # n_squared: (n, n_all * n_all) over every (y_j, z_k)
                logits = torch.einsum("id,jd,kd->ijk", anchor, others[0], others[1]).flatten(1)
                labels_m = labels * n_all + labels
            if mode != "n_squared":
                # the diagonal holds the true tuple (under "n" it is replaced by it)
                logits = logits.scatter(1, labels[:, None], positive[:, None])
                labels_m = labels
            logits = self.scale * logits
            if bias is not None:
                logits = logits + bias
            terms = F.cross_entropy(logits, labels_m, reduction="none")
            if present is not None:
                w = present[:, m].to(terms.dtype)
                total, n_terms = total + (terms * w).sum(), n_terms + w.sum()
            else:
                total, n_terms = total + terms.sum(), n_terms + n
        return total / n_terms.clamp(min=1)


@LOSSES.register("clip_pairwise")
class PairwiseClipLoss(_Contrastive):
    """CLIP over every pair of two or more modalities, averaged over pairs (the baseline Symile
    is compared with). With ``present`` ``(n, n_modalities)`` bool, each pair uses only the rows
    where both modalities are present, as anchors and as candidates."""

    def forward(
        self,
        *embeddings: torch.Tensor,
        batch: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if len(embeddings) < 2:
            raise ConfigError("clip_pairwise needs at least two modalities")
        n, off = len(embeddings[0]), rank_offset(len(embeddings[0]))
        gathered = [gather_with_grad(e) for e in embeddings]
        labels = torch.arange(n, device=embeddings[0].device) + off
        bias = self._batch_bias(batch, gather_no_grad(batch) if batch is not None else None, off, n)
        pres_all = gather_no_grad(present) if present is not None else None
        total = embeddings[0].new_zeros(())
        n_pairs = 0
        for i, j in itertools.combinations(range(len(embeddings)), 2):
            both = None if present is None else present[:, i] & present[:, j]
            both_all = None if pres_all is None else pres_all[:, i] & pres_all[:, j]
            pair = embeddings[0].new_zeros(())
            for a, b_all in ((embeddings[i], gathered[j]), (embeddings[j], gathered[i])):
                logits = self.scale * a @ b_all.T
                if bias is not None:
                    logits = logits + bias
                if both_all is not None:
                    logits = logits.masked_fill(~both_all[None, :], float("-inf"))
                terms = F.cross_entropy(logits, labels, reduction="none")
                if both is not None:
                    terms = torch.where(both, terms, torch.zeros_like(terms))
                    pair = pair + 0.5 * terms.sum() / both.sum().clamp(min=1)
                else:
                    pair = pair + 0.5 * terms.mean()
            total, n_pairs = total + pair, n_pairs + 1
        return total / n_pairs
