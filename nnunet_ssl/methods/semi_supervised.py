"""Semi-supervised objective of IDEAL's fine-tuning stage (two decoders, bidirectional consistency).

Paper: Basak et al., "IDEAL", ICASSP 2023 (arXiv 2210.15075); the consistency term is cross pseudo supervision
(Chen et al., CVPR 2021), see :mod:`nnunet_ssl.methods.objectives.cross_pseudo_supervision`.

One step::

    loss = L_sup(outputs_a(labeled), target) + L_sup(outputs_b(labeled), target)
           + w(epoch) * CPS(outputs_a(unlabeled), outputs_b(unlabeled))

* ``L_sup`` is nnU-Net's own loss (Dice + CE with deep supervision): both decoders are fully supervised (summed,
  as in CPS).
* ``w(epoch) = consistency_weight * exp(-5 (1 - t)^2)``, ``t = min(epoch / rampup_epochs, 1)``: the sigmoid-shaped
  ramp-up of Laine & Aila (ICLR 2017) / mean teacher. **Our choice** (the paper gives no values): maximum weight
  1.0, ramp-up over :func:`default_rampup_epochs`: 10 % of the epochs (100 of nnU-Net's 1000), but at least the
  epochs of the first ``MIN_RAMPUP_ITERATIONS`` iterations and at most half of the training. The floor is for short
  schedules: nnU-Net predicts only background for its first few hundred iterations, and cross pseudo supervision at
  full weight in that phase rewards the two decoders for agreeing on background (measured: README, benchmarks).
* Labeled and unlabeled batches go through the network in ONE forward (concatenated along the batch axis; nnU-Net's
  instance norm keeps samples independent), then the outputs are split again.
* With ``w == 0`` (``consistency_weight=0``, or no unlabeled batch) the unlabeled batch is not used at all: the
  step is exactly the supervised step. The ramp itself starts at ``exp(-5)`` = 0.0067, not at 0.
"""
import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

__all__ = ["MIN_RAMPUP_ITERATIONS", "default_rampup_epochs", "sigmoid_rampup", "consistency_weight_at",
           "split_outputs", "two_decoder_semi_supervised_loss"]

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]


MIN_RAMPUP_ITERATIONS = 2000


def default_rampup_epochs(num_epochs: int, iterations_per_epoch: int,
                          min_iterations: int = MIN_RAMPUP_ITERATIONS) -> int:
    """Ramp-up length in epochs: ``max(num_epochs // 10, ceil(min_iterations / iterations_per_epoch))``, capped at
    ``num_epochs // 2``, at least 1.

    nnU-Net's 1000 epochs x 250 iterations: 100 epochs (the 10 %); 40 epochs x 50 iterations: 20 (the cap);
    16 x 50: 8 (the cap)."""
    if num_epochs < 1 or iterations_per_epoch < 1:
        raise ValueError(f"num_epochs={num_epochs} and iterations_per_epoch={iterations_per_epoch} must be >= 1")
    floor = math.ceil(min_iterations / iterations_per_epoch)
    return max(1, min(max(num_epochs // 10, floor), num_epochs // 2))


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(current / rampup_length, 0, 1)``; 1.0 if ``rampup_length <= 0``."""
    if rampup_length <= 0:
        return 1.0
    t = min(max(float(current) / float(rampup_length), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight_at(epoch: float, max_weight: float, rampup_epochs: float) -> float:
    return float(max_weight) * sigmoid_rampup(epoch, rampup_epochs)


def split_outputs(outputs: Outputs, n_first: int) -> Tuple[Outputs, Outputs]:
    """Split network outputs (tensor or deep-supervision list) along the batch axis after ``n_first`` samples."""
    if isinstance(outputs, (list, tuple)):
        return [o[:n_first] for o in outputs], [o[n_first:] for o in outputs]
    return outputs[:n_first], outputs[n_first:]


def two_decoder_semi_supervised_loss(
        forward_both: Callable[[torch.Tensor], Tuple[Outputs, Outputs]],
        supervised_loss: Callable[[Outputs, object], torch.Tensor],
        consistency_loss: Callable[..., torch.Tensor],
        data: torch.Tensor, target, data_unlabeled: Optional[torch.Tensor], weight: float,
        ds_weights: Optional[Sequence[float]] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss of one step and its parts (``sup_loss``, ``cps_loss`` or None), see module doc.

    ``forward_both(x) -> (outputs_a, outputs_b)``; ``supervised_loss(outputs, target)`` is nnU-Net's loss;
    ``consistency_loss(a, b, weights=ds_weights)`` is :class:`CrossPseudoSupervisionLoss`.
    """
    use_unlabeled = data_unlabeled is not None and float(weight) != 0.0
    n = data.shape[0]
    x = torch.cat((data, data_unlabeled.to(data.device, data.dtype)), 0) if use_unlabeled else data
    out_a, out_b = forward_both(x)
    if use_unlabeled:
        (la, ua), (lb, ub) = split_outputs(out_a, n), split_outputs(out_b, n)
    else:
        la, lb = out_a, out_b
    sup = supervised_loss(la, target) + supervised_loss(lb, target)
    if not use_unlabeled:
        return sup, {"sup_loss": sup.detach(), "cps_loss": None}
    if isinstance(ua, (list, tuple)):
        cps = consistency_loss(ua, ub, weights=ds_weights)
    else:
        cps = consistency_loss(ua, ub)
    return sup + float(weight) * cps, {"sup_loss": sup.detach(), "cps_loss": cps.detach()}
