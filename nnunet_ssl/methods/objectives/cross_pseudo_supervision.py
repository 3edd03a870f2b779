"""IDEAL bidirectional consistency: each decoder's hard prediction supervises the other decoder.

Paper: Basak, Gupta, Jaiswal, Yin, Ha, "IDEAL: Improved DEnse locAL Contrastive Learning for Semi-Supervised
Medical Image Segmentation", ICASSP 2023, arXiv 2210.15075: during semi-supervised fine-tuning one shared encoder
feeds two decoders; on unlabeled data each decoder's thresholded, stop-gradient prediction supervises the other
("bidirectional consistency regularisation"). The same scheme is known as cross pseudo supervision (Chen, Yuan,
Zeng, Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision", CVPR 2021).

Here: ``loss = CE(la, argmax softmax(lb)) + CE(lb, argmax softmax(la))``. Pseudo-labels are computed under
``torch.no_grad`` from detached logits, so ``la`` receives gradient only from its own CE term (and likewise
``lb``). "Thresholded" is read as hard (argmax) labels; optionally only voxels where the OTHER decoder's maximum
softmax probability is ``>= confidence_threshold`` are kept. The module's default is 0.0 = every voxel;
``IDEALSemiSupervisedTrainer`` passes 0.9 (**choice**, measured: README). Each CE term
is averaged over its kept voxels; a term with no kept voxel is 0 (with a zero gradient path).

Optionally (``dice``: a callable ``dice(logits, labels (B, 1, *spatial), loss_mask (B, 1, *spatial))``, e.g. nnU-Net's
``MemoryEfficientSoftDiceLoss`` without background) each term also adds that Dice loss against the same kept
pseudo-labels, so a pseudo-label teaches like nnU-Net's Dice + CE teaches a label: CE alone averages over the kept
voxels, mostly background where the structures are small, while Dice weighs each class alike (the ACDC
cross-pseudo-supervision baselines of the semi-supervised literature supervise pseudo-labels with Dice).

Deep supervision: nnU-Net networks return a list of logits (full resolution first) when deep supervision is on.
``forward`` accepts such lists for both decoders: with ``weights=None`` only the first (full-resolution) entry is
used; otherwise the result is ``sum_s weights[s] * loss(la[s], lb[s])`` (scales with weight 0 are skipped, the
weights are not renormalised; pass nnU-Net's deep-supervision weights, which already sum to 1). The consistency
weight and its ramp-up are the trainer's job.

Example::

    cps = CrossPseudoSupervisionLoss()
    loss_u = cps(decoder_a_logits, decoder_b_logits)                    # tensors (B, K, *spatial)
    loss_u = cps(outs_a, outs_b, weights=trainer_ds_weights)            # deep-supervision lists
"""
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossPseudoSupervisionLoss"]

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target, reduction="none")  # (B, *spatial)
    w = keep.to(ce.dtype)
    return torch.where(keep, ce, torch.zeros_like(ce)).sum() / w.sum().clamp_min(1.0)


class CrossPseudoSupervisionLoss(nn.Module):
    """Cross-entropy of each decoder's logits against the other decoder's stop-gradient argmax.

    ``forward(la, lb, weights=None)``: ``la``, ``lb`` logits ``(B, K, *spatial)`` (2d or 3d) of equal shape, or
    equally long lists of them (deep supervision, see module docstring). Returns a scalar.
    """

    def __init__(self, confidence_threshold: float = 0.0, dice: Optional[Callable[..., torch.Tensor]] = None):
        super().__init__()
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.confidence_threshold = float(confidence_threshold)
        self.dice = dice

    def extra_repr(self) -> str:
        return f"confidence_threshold={self.confidence_threshold}, dice={self.dice is not None}"

    def _term(self, logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        loss = _masked_ce(logits, labels, keep)
        if self.dice is not None:
            loss = loss + self.dice(logits.float(), labels[:, None], keep[:, None].to(torch.float32))
        return loss

    def _single(self, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        if la.shape != lb.shape:
            raise ValueError(f"la and lb must have the same shape, got {tuple(la.shape)} and {tuple(lb.shape)}")
        if la.dim() not in (4, 5):
            raise ValueError(f"logits must be (B, K, X, Y) or (B, K, X, Y, Z), got shape {tuple(la.shape)}")
        with torch.no_grad():
            conf_a, label_a = torch.softmax(la.detach().float(), dim=1).max(dim=1)
            conf_b, label_b = torch.softmax(lb.detach().float(), dim=1).max(dim=1)
            keep_for_a = conf_b >= self.confidence_threshold  # voxels where b is confident enough to teach a
            keep_for_b = conf_a >= self.confidence_threshold
        return self._term(la, label_b, keep_for_a) + self._term(lb, label_a, keep_for_b)

    def forward(self, la: Logits, lb: Logits, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
        a_is_list = isinstance(la, (list, tuple))
        if a_is_list != isinstance(lb, (list, tuple)):
            raise ValueError("la and lb must both be tensors or both be deep-supervision lists")
        if not a_is_list:
            if weights is not None:
                raise ValueError("weights are only meaningful for deep-supervision lists of logits")
            return self._single(la, lb)
        if len(la) != len(lb) or len(la) == 0:
            raise ValueError(f"deep-supervision lists must be non-empty and equally long, got {len(la)} and {len(lb)}")
        if weights is None:
            return self._single(la[0], lb[0])
        if len(weights) != len(la):
            raise ValueError(f"got {len(weights)} weights for {len(la)} deep-supervision outputs")
        total = None
        for w, a, b in zip(weights, la, lb):
            if float(w) == 0.0:
                continue
            term = float(w) * self._single(a, b)
            total = term if total is None else total + term
        if total is None:
            return (la[0].sum() + lb[0].sum()).float() * 0.0
        return total
