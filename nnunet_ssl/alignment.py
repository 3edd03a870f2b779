"""Overlap of two views and RoI-aligned resampling of feature maps (pure torch, differentiable w.r.t. features).

Geometry follows "View geometry" in docs/ARCHITECTURE.md: a view is the box ``(B, 2, ndim)`` of the case
(continuous voxel coordinates, voxel ``k`` spans ``[k, k + 1)``) resampled onto the patch grid and then mirrored
where ``flip`` ``(B, ndim)`` is True. A feature map with ``F`` cells along an axis, computed from the view, covers
the same box: cell ``j`` (before flipping) is centred at ``lo + (j + 0.5) * (hi - lo) / F``.

``roi_align`` samples such a feature map at the cell centres of a RoI grid given in case coordinates, undoing the
flips, with ``grid_sample`` (trilinear/bilinear, ``align_corners=False``): for axis-aligned boxes this is 3D
RoIAlign with one sample per bin. PGL (Xie et al., arXiv 2011.12640) aligns the shared region of two views this
way; IDEAL's dense contrastive loss uses the same correspondence.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F


def _as_box(box, device, dtype=torch.float64) -> torch.Tensor:
    box = torch.as_tensor(box, device=device)
    return box.to(dtype)


def overlap_box(box1: torch.Tensor, box2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intersection of two batches of boxes ``(B, 2, ndim)``.

    Returns ``(box, valid)``: ``box`` ``(B, 2, ndim)`` (where the boxes do not overlap the upper corner is clamped
    to the lower one, i.e. an empty box) and ``valid`` ``(B,)`` bool, True where the intersection has positive
    volume.
    """
    box1 = torch.as_tensor(box1)
    box2 = torch.as_tensor(box2, device=box1.device)
    dtype = torch.promote_types(box1.dtype, box2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    box1, box2 = box1.to(dtype), box2.to(dtype)
    lo = torch.maximum(box1[:, 0], box2[:, 0])
    hi = torch.minimum(box1[:, 1], box2[:, 1])
    valid = (hi > lo).all(dim=1)
    hi = torch.maximum(hi, lo)
    return torch.stack((lo, hi), dim=1), valid


def _normalise_out_size(out_size: Union[int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
    if isinstance(out_size, int):
        return (out_size,) * ndim
    out_size = tuple(int(i) for i in out_size)
    if len(out_size) != ndim:
        raise ValueError(f"out_size {out_size} does not match {ndim} spatial dimensions")
    return out_size


def roi_align(features: torch.Tensor, view_box: torch.Tensor, view_flip: torch.Tensor, roi_box: torch.Tensor,
              out_size: Union[int, Sequence[int]], padding_mode: str = "zeros") -> torch.Tensor:
    """Resample a view's feature map at a RoI given in case coordinates.

    ``features`` ``(B, C, *F)`` computed from views with geometry ``view_box`` ``(B, 2, ndim)`` and
    ``view_flip`` ``(B, ndim)``; ``roi_box`` ``(B, 2, ndim)`` in case coordinates. Returns ``(B, C, *out_size)``
    where output cell ``j`` along an axis holds the feature at case coordinate
    ``roi_lo + (j + 0.5) * (roi_hi - roi_lo) / out`` (in case orientation: the view's flips are undone).
    Linear interpolation between cell centres; ``padding_mode`` of ``grid_sample`` ("zeros" by default) only
    matters in the outer half cell of the feature map. Differentiable w.r.t. ``features``.
    """
    ndim = features.ndim - 2
    if ndim not in (2, 3):
        raise ValueError(f"features must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(features.shape)}")
    out_size = _normalise_out_size(out_size, ndim)
    device = features.device
    view_box = _as_box(view_box, device)
    roi_box = _as_box(roi_box, device)
    view_flip = torch.as_tensor(view_flip, device=device).to(torch.bool)
    B = features.shape[0]
    for name, t, shape in (("view_box", view_box, (B, 2, ndim)), ("roi_box", roi_box, (B, 2, ndim)),
                           ("view_flip", view_flip, (B, ndim))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")

    # normalised grid_sample coordinate of case coordinate c along axis d (align_corners=False):
    #   x = 2 * (c - lo) / (hi - lo) - 1, negated on flipped axes (independent of the feature resolution)
    vlo, vhi = view_box[:, 0], view_box[:, 1]  # (B, ndim)
    rlo, rhi = roi_box[:, 0], roi_box[:, 1]
    sign = 1.0 - 2.0 * view_flip.to(torch.float64)  # (B, ndim)
    axes = []
    for d in range(ndim):
        j = torch.arange(out_size[d], device=device, dtype=torch.float64)
        c = rlo[:, d:d + 1] + (j[None] + 0.5) * (rhi[:, d:d + 1] - rlo[:, d:d + 1]) / out_size[d]  # (B, out_d)
        x = 2.0 * (c - vlo[:, d:d + 1]) / (vhi[:, d:d + 1] - vlo[:, d:d + 1]) - 1.0
        axes.append(x * sign[:, d:d + 1])
    # broadcast to (B, *out_size) per axis, then stack in grid_sample's order (last spatial axis first)
    comps = []
    for d in range(ndim):
        view_shape = [B] + [1] * ndim
        view_shape[1 + d] = out_size[d]
        comps.append(axes[d].reshape(view_shape).expand(B, *out_size))
    grid = torch.stack(comps[::-1], dim=-1).to(features.dtype)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def align_views(f1: torch.Tensor, box1: torch.Tensor, flip1: torch.Tensor,
                f2: torch.Tensor, box2: torch.Tensor, flip2: torch.Tensor,
                out_size: Union[int, Sequence[int]], padding_mode: str = "zeros"
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample the shared region of two views from both feature maps on one common grid.

    ``f1`` / ``f2``: ``(B, C, *F1)`` / ``(B, C, *F2)`` feature maps of views 1 and 2 (resolutions may differ);
    boxes ``(B, 2, ndim)``, flips ``(B, ndim)``. Returns ``(a1, a2, valid)``: ``a1``, ``a2`` ``(B, C, *out_size)``
    with ``a1[b, :, v]`` and ``a2[b, :, v]`` describing the same case location (cell ``v`` of the overlap box,
    case orientation), and ``valid`` ``(B,)`` bool, False where the views do not overlap (those samples hold
    meaningless values and must be masked out of any loss).
    """
    roi, valid = overlap_box(torch.as_tensor(box1, device=f1.device), torch.as_tensor(box2, device=f1.device))
    a1 = roi_align(f1, box1, flip1, roi, out_size, padding_mode)
    a2 = roi_align(f2, torch.as_tensor(box2, device=f2.device), torch.as_tensor(flip2, device=f2.device),
                   roi.to(f2.device), out_size, padding_mode)
    return a1, a2, valid
