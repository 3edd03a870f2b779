"""Which samples of a batch have any intensity variation at all.

A sample without (a constant image; nnU-Net's z-score turns it into zeros) makes every feature map of nnU-Net's
network constant, so each InstanceNorm divides by ``sqrt(0 + eps)`` and scales the backward pass by about 316 per
norm layer: ~1e45 through a 5-stage U-Net, infinite in float32. Such a sample has nothing to learn from; objectives
leave it out of every term that would backpropagate through those norms (masked reconstruction, GMIM's
cross-correlation), so its contribution and gradient are exactly 0.
"""
import torch


def varying_samples(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: True where sample ``b`` of ``x`` (``(B, ...)``) is not constant."""
    flat = x.detach().flatten(1)
    return flat.amax(dim=1) > flat.amin(dim=1)
