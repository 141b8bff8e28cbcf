"""CADEL stage-1 objective: the cascade confidence-bin weighted loss, its annealing and per-batch input mixup.

Every exit's loss mixes its plain loss with a per-sample re-weighted one. A sample's weight grows with how crowded its
confidence bin is, where the confidence is the target probability averaged over the exits up to and including the
current one (the "cascade"). Everything is computed on the device in float32 without host syncs, and the weights carry
no gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_MODES = ("per_sample", "batch_scalar_legacy")
# ce / bce: the original's per-exit losses (CNN / ViT). The others balance the base loss itself (beyond the paper):
# logit_adjusted: CE on z + tau*log(prior) (Menon et al., ICLR 2021; tau = 1 in training);
# balanced_softmax: CE on z + log(n_c) (Ren et al., NeurIPS 2020): the same function as logit_adjusted at tau = 1, since
# log(n_c) and log(prior) differ by a constant that softmax ignores;
# balanced_bce: one-hot BCE on z + log(prior) - log(1 - prior), summed over classes (LiVT's Bal-BCE, for ViTs).
BASE_LOSSES = ("ce", "bce", "logit_adjusted", "balanced_softmax", "balanced_bce")
BALANCED_LOSSES = ("logit_adjusted", "balanced_softmax", "balanced_bce")


def annealing_T(epoch: int, epochs: int) -> float:
    """Share of the plain (unweighted) loss in epoch ``epoch`` (1-indexed): moves linearly from 1 - 1/E to 0."""
    if epochs < 1 or not 1 <= epoch <= epochs:
        raise ValueError(f"annealing_T needs 1 <= epoch <= epochs (epoch is 1-indexed), got epoch={epoch}, "
                         f"epochs={epochs}")
    return 1.0 - epoch / epochs


def mixup_batch(
    x: Tensor, y: Tensor, alpha: float, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor, Optional[Tensor], float]:
    """Mix each input with a randomly permuted partner using one lam ~ Beta(alpha, alpha) per batch.

    Returns ``(x_mixed, y_a, y_b, lam)``; ``alpha <= 0`` turns mixup off and returns ``(x, y, None, 1.0)``.
    lam and the permutation are drawn on ``generator``'s device (the default CPU generator when None), so a seeded
    generator reproduces them; a CPU generator keeps reading lam free of device syncs.
    """
    if alpha <= 0:
        return x, y, None, 1.0
    rng_device = generator.device if generator is not None else torch.device("cpu")
    concentration = torch.full((2,), float(alpha), dtype=torch.float64, device=rng_device)
    # Beta(a, a) is the first coordinate of Dirichlet(a, a); the Dirichlet sampler guards against gamma underflow.
    lam = torch._sample_dirichlet(concentration, generator=generator)[0].item()
    perm = torch.randperm(x.shape[0], generator=generator, device=rng_device).to(x.device, non_blocking=True)
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    return x_mixed, y, y[perm], lam


def confidence_bin_weights(m: Tensor, bins: int, gamma: float, base_weight: float) -> Tensor:
    """Per-sample weight ``base_weight + gamma * n_bin(i) / B``: samples in crowded confidence bins weigh more.

    Bins are ``[j/bins, (j+1)/bins)``, the top one closed so that m = 1 falls in it; ``n_bin(i)`` counts the batch
    samples sharing sample i's bin.
    """
    edges = torch.arange(bins + 1, dtype=m.dtype, device=m.device) / bins
    bin_index = (torch.bucketize(m, edges, right=True) - 1).clamp_(max=bins - 1)  # m >= 0: only m = 1 needs it
    in_bin = bin_index[:, None] == torch.arange(bins, device=m.device)
    bin_counts = in_bin.sum(0).to(m.dtype)
    return base_weight + gamma * bin_counts[bin_index] / m.shape[0]


class CascadeLoss(nn.Module):
    """Sum over exits (shallow to deep) of the annealed, cascade-weighted loss of docs/method.md

    ``weight_mode="batch_scalar_legacy"`` reproduces the original CNN code, whose broadcasting bug turns the
    per-sample weights into the batch scalar ``mean(w)``. ``base_loss="bce"`` is the ViT's one-hot BCE summed over
    classes, computed with ``logsigmoid`` so that large logits stay finite. The balanced base losses
    (``BALANCED_LOSSES``) need ``class_counts``; their confidences (which place samples in the weighting's bins) are
    the probabilities of the adjusted logits the loss itself uses. A single exit with ``gamma=0, base_weight=1`` is
    the plain loss: the baselines are this class too.
    After each forward, ``last_mean_weight`` holds the detached mean weight per exit (mixup-averaged over targets).
    """

    def __init__(
        self,
        bins: int = 8,
        gamma: float = 1.0,
        base_weight: float = 2.0,
        weight_mode: str = "per_sample",
        base_loss: str = "ce",
        class_counts: Optional[Sequence[int]] = None,
        la_tau: float = 1.0,
    ):
        super().__init__()
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
        if base_loss not in BASE_LOSSES:
            raise ValueError(f"base_loss must be one of {BASE_LOSSES}, got {base_loss!r}")
        if bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        if base_loss in BALANCED_LOSSES and not class_counts:
            raise ValueError(f"base_loss {base_loss!r} needs the training images per class (class_counts)")
        self.bins = bins
        self.gamma = gamma
        self.base_weight = base_weight
        self.weight_mode = weight_mode
        self.base_loss = base_loss
        self.la_tau = la_tau
        self.last_mean_weight: Optional[Tensor] = None
        if base_loss in BALANCED_LOSSES:
            counts = torch.as_tensor(class_counts, dtype=torch.float64)
            prior = counts / counts.sum()
            if base_loss == "balanced_bce":
                offset = torch.log(prior) - torch.log1p(-prior)
            elif base_loss == "balanced_softmax":
                offset = torch.log(counts)
            else:
                offset = la_tau * torch.log(prior)
            self.register_buffer("logit_offset", offset.float(), persistent=False)
        else:
            self.logit_offset = None

    @classmethod
    def from_config(cls, cfg, class_counts: Optional[Sequence[int]]) -> CascadeLoss:
        """The loss a run config asks for (``base_loss="auto"`` resolved for its backbone)."""
        return cls(cfg.bins, cfg.gamma, cfg.base_weight, cfg.weight_mode, cfg.resolved_base_loss(),
                   class_counts=class_counts)

    def extra_repr(self) -> str:
        return (
            f"bins={self.bins}, gamma={self.gamma}, base_weight={self.base_weight}, "
            f"weight_mode={self.weight_mode!r}, base_loss={self.base_loss!r}"
            + (f", la_tau={self.la_tau}" if self.base_loss == "logit_adjusted" else "")
        )

    def _loss_and_confidence(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample base loss and the detached predicted probability of the target class."""
        target = target[:, None]
        if self.logit_offset is not None:
            logits = logits + self.logit_offset.to(logits.device)
        if self.base_loss in ("ce", "logit_adjusted", "balanced_softmax"):
            loss = -F.log_softmax(logits, dim=1).gather(1, target).squeeze(1)
            confidence = logits.detach().softmax(dim=1).gather(1, target).squeeze(1)
        else:
            is_target = torch.arange(logits.shape[1], device=logits.device)[None, :] == target
            # log(1 - sigmoid(z)) == logsigmoid(-z), finite for any float32 logit.
            loss = -torch.where(is_target, F.logsigmoid(logits), F.logsigmoid(-logits)).sum(dim=1)
            confidence = logits.detach().gather(1, target).squeeze(1).sigmoid()
        return loss, confidence

    def _annealed(self, loss: Tensor, weights: Tensor, T: float) -> Tensor:
        if self.weight_mode == "per_sample":
            return T * loss.mean() + (1.0 - T) * (weights * loss).mean()
        return loss.mean() * (T + (1.0 - T) * weights.mean())

    def forward(
        self,
        exit_logits: Sequence[Tensor],
        y_a: Tensor,
        y_b: Optional[Tensor] = None,
        lam: float = 1.0,
        T: float = 0.0,
    ) -> Tensor:
        """Total loss over ``exit_logits`` ([B, C] each, shallow to deep) for targets ``y_a`` (and mixup ``y_b``)."""
        if len(exit_logits) == 0:
            raise ValueError("exit_logits is empty; pass the logits of every exit, shallow to deep")
        targets = [(y_a, lam)] + ([(y_b, 1.0 - lam)] if y_b is not None else [])
        histories: list[list[Tensor]] = [[] for _ in targets]
        total = exit_logits[0].new_zeros((), dtype=torch.float32)
        mean_weights = []
        for logits in exit_logits:
            logits = logits.float()
            exit_mean_weight = total.new_zeros(())
            for (target, coef), history in zip(targets, histories):
                loss, confidence = self._loss_and_confidence(logits, target)
                history.append(confidence)
                cascade_confidence = torch.stack(history).mean(dim=0)
                weights = confidence_bin_weights(cascade_confidence, self.bins, self.gamma, self.base_weight)
                total = total + coef * self._annealed(loss, weights, T)
                exit_mean_weight = exit_mean_weight + coef * weights.mean()
            mean_weights.append(exit_mean_weight)
        self.last_mean_weight = torch.stack(mean_weights).detach()
        return total
