"""Mean squared error on masked units only (masked image modeling).

Used by GMIM (Qi et al., GMIM - Grid Masked Image Modeling, Computers in Biology and Medicine, 2024: reconstruction
term weighted 1.0, **paper**) and by the plain MAE-style baseline (He et al., "Masked Autoencoders Are Scalable
Vision Learners", CVPR 2022, which also computes the loss on masked patches only).

Visible units never contribute; the two normalisations differ in what the sum of squared errors is divided by:

* ``"masked"``: by the number of masked elements, i.e. the mean over masked units. MAE's form (He et al. average
  the per-patch loss over the removed patches) and the class default.
* ``"all"``: by the number of ALL elements of ``pred`` (masked or not), i.e. ``sum(mask * (pred - x)^2) / numel``.
  This is what the official GMIM code computes (github mobiletomb/Gmim, pre-training with ``--invis_patches``: the
  visible units of prediction and input are zeroed, then a plain mean squared error over every voxel), and it sets
  the scale that GMIM's 1 : 0.005 weighting with the cross-correlation term was tuned for. With masking ratio ``m``
  it is ``m`` times the ``"masked"`` value (about half at GMIM's base ratio 0.5). GMIM's default.

A sample whose target has no intensity variation at all (a constant image; nnU-Net's z-score turns it into zeros)
has nothing to reconstruct and is left out (**choice**): on such an input every feature map of nnU-Net's network is
constant, each InstanceNorm divides by ``sqrt(0 + eps)`` and scales the gradient by ``1/sqrt(1e-5) ~ 316`` per norm
layer on the way back, so a 4-5 stage U-Net's gradient norm overflows float32 and the trainer skips the step (found
with GMIM on constant images, issue 24). Left out, the sample's term and gradient are exactly 0; the normalisation
still counts its elements (``"all"``), so the other samples' scale is unchanged.

Example::

    loss = MaskedMSELoss()(reconstruction, original_image, mask)   # mask (B, 1, *spatial), 1 = masked
    loss = MaskedMSELoss("all")(reconstruction, original_image, mask)   # GMIM reference normalisation
"""
import torch
from torch import nn

from nnunet_ssl.methods.sample_variation import varying_samples

__all__ = ["MaskedMSELoss", "RECON_NORMALISATIONS"]

_EPS = 1e-12

RECON_NORMALISATIONS = ("masked", "all")


class MaskedMSELoss(nn.Module):
    """``sum(mask * (pred - target)^2) / sum(mask)`` (``normalisation="masked"``, default) or ``/ pred.numel()``
    (``"all"``) over all voxels and channels.

    ``forward(pred, target, mask)``: ``pred`` and ``target`` ``(B, C, *spatial)`` (2d or 3d) of equal shape;
    ``mask`` bool or float, broadcastable to ``pred`` (typically ``(B, 1, *spatial)``), 1 / True = masked (to be
    reconstructed), 0 = visible (ignored). A float mask acts as per-unit weights. Visible units contribute neither
    to the value nor to the gradient, nor do samples with a constant target (see the module doc). Returns 0 with a
    zero gradient path when nothing is masked. ``target`` is not
    detached (it is normally the input image, which has no gradient). Computed in float32.
    """

    def __init__(self, normalisation: str = "masked"):
        super().__init__()
        if normalisation not in RECON_NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {RECON_NORMALISATIONS}, got {normalisation!r}")
        self.normalisation = normalisation

    def extra_repr(self) -> str:
        return f"normalisation={self.normalisation!r}"

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        try:
            w = mask.to(device=pred.device, dtype=torch.float32).expand(pred.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} cannot be broadcast to pred of shape {tuple(pred.shape)}; "
                f"expected e.g. (B, 1, *spatial)"
            ) from None
        varies = varying_samples(target).view(-1, *([1] * (pred.ndim - 1)))
        w = w * varies.to(w.dtype)
        sq = (pred.float() - target.float()).pow(2)
        weighted = torch.where(w > 0, sq * w, torch.zeros_like(sq))
        if self.normalisation == "all":
            return weighted.sum() / pred.numel()
        # clamp instead of a branch: no host sync; with nothing masked this is 0 / tiny = 0 with a zero gradient
        return weighted.sum() / w.sum().clamp_min(_EPS)
