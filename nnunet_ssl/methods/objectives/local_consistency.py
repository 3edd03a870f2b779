"""PGL local consistency loss: per-voxel ``2 - 2 cos(p, z)`` between aligned feature maps.

Paper: Xie, Zhang, Liao, Xia, Shen, "PGL: Prior-Guided Local Self-supervised Learning for 3D Medical Image
Segmentation", arXiv 2011.12640. The online branch's prediction ``p`` of one view and the target branch's
projection ``z`` of the other view are resampled onto the grid of the views' shared region (see
``nnunet_ssl.methods.alignment``); the loss minimises the voxel-wise discrepancy between them. The exact per-voxel form
``2 - 2 cos`` (the BYOL normalised-MSE) and the symmetrisation over both views are the project's reading of the
paper (``METHODS.md``, **choice**).

Stop-gradient: this module does NOT detach ``z``. The caller passes the target branch's output, which normally
comes from an :class:`nnunet_ssl.methods.teachers.EMATeacher` (computed under ``no_grad``) or is detached explicitly.

Example::

    loss_fn = LocalConsistencyLoss()
    loss = symmetric_local_consistency(p1_aligned, z2_aligned.detach(), p2_aligned, z1_aligned.detach(), valid)
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalConsistencyLoss", "symmetric_local_consistency", "spatial_weights"]

_EPS = 1e-12


def spatial_weights(valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Turn a validity mask into float weights of shape ``(B, *spatial)`` matching ``like`` ``(B, C, *spatial)``.

    ``valid`` may be bool or float, shaped ``(B, 1, *spatial)`` or ``(B, *spatial)`` (anything broadcastable to
    that, e.g. ``(1, 1, *spatial)``). Float values act as weights (0 = ignore).
    """
    batch, spatial = like.shape[0], tuple(like.shape[2:])
    v = valid
    if v.dim() == like.dim():
        if v.shape[1] != 1:
            raise ValueError(
                f"valid mask has {v.shape[1]} channels (shape {tuple(valid.shape)}); expected a single channel "
                f"(B, 1, *spatial) or no channel axis (B, *spatial) for features of shape {tuple(like.shape)}"
            )
        v = v[:, 0]
    try:
        v = v.expand(batch, *spatial)
    except RuntimeError:
        raise ValueError(
            f"valid mask of shape {tuple(valid.shape)} does not match features of shape {tuple(like.shape)}; "
            f"expected (B, 1, *spatial) or (B, *spatial)"
        ) from None
    return v.to(device=like.device, dtype=torch.float32)


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() not in (4, 5):
        raise ValueError(f"{names} must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(a.shape)}")


class LocalConsistencyLoss(nn.Module):
    """Mean over valid voxels of ``2 - 2 cos(p_v, z_v)``, cosine taken along the channel axis (PGL).

    ``forward(p, z, valid=None)``: ``p``, ``z`` are ``(B, C, *spatial)`` (2d or 3d) aligned feature maps; ``valid``
    is an optional bool/float mask ``(B, 1, *spatial)`` or ``(B, *spatial)`` (float = per-voxel weight). Returns a
    scalar in ``[0, 4]``; 0 when every valid ``p_v`` points in the direction of ``z_v``. If no voxel is valid the
    result is 0 and still has a (zero) gradient path. Computed in float32. ``z`` is not detached here.
    """

    def forward(self, p: torch.Tensor, z: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        _check_pair(p, z, "p and z")
        pn = F.normalize(p.float(), dim=1, eps=_EPS)
        zn = F.normalize(z.float(), dim=1, eps=_EPS)
        per_voxel = 2.0 - 2.0 * (pn * zn).sum(dim=1)  # (B, *spatial)
        if valid is None:
            return per_voxel.mean()
        w = spatial_weights(valid, p)
        weighted = torch.where(w > 0, per_voxel * w, torch.zeros_like(per_voxel))
        # clamp instead of a branch: no host sync, and 0 / tiny = 0 keeps a zero gradient when nothing is valid
        return weighted.sum() / w.sum().clamp_min(_EPS)


_DEFAULT_LOSS = LocalConsistencyLoss()


def symmetric_local_consistency(
    p1: torch.Tensor, z2: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Symmetrised PGL loss: ``0.5 * (L(p1, z2) + L(p2, z1))``.

    ``p1`` is the online prediction from view 1 and ``z2`` the target projection from view 2, both resampled onto
    the shared-region grid (and vice versa for ``p2``, ``z1``), so one ``valid`` mask applies to both directions.
    Targets ``z1``, ``z2`` must already carry no gradient (teacher output or ``.detach()``).
    """
    return 0.5 * (_DEFAULT_LOSS(p1, z2, valid) + _DEFAULT_LOSS(p2, z1, valid))
