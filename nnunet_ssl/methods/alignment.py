"""Overlap of two views and RoI-aligned resampling of feature maps (pure torch, differentiable w.r.t. features).

Geometry follows "View geometry" in docs/ARCHITECTURE.md: a view is the box ``(B, 2, ndim)`` of the case
(continuous voxel coordinates, voxel ``k`` spans ``[k, k + 1)``) resampled onto the patch grid of ``P`` voxels and
then mirrored where ``flip`` ``(B, ndim)`` is True; view voxel ``i`` sits at ``lo + (i + 0.5) * (hi - lo) / P``
(before flipping).

Where the cells of a feature map computed from a view sit depends on how the map was computed:

- **network features** (:class:`CellGeometry`): a convolution with kernel ``k``, stride ``s``, padding ``p`` and
  dilation ``d`` centres output cell ``j`` on input position ``j * s + d * (k - 1) / 2 - p``. Chained over every
  convolution and pooling of the path, cell ``j`` of a level along an axis is centred on input voxel
  ``offset + j * stride`` (continuous voxel index of the view, i.e. at view coordinate ``offset + j * stride +
  0.5``). :func:`encoder_cell_geometry` / :func:`decoder_cell_geometry` read ``offset`` and ``stride`` from an
  nnU-Net network (nnU-Net's kernel-3, padding-1 convolutions: ``offset = 0``, ``stride`` = the product of the
  stage strides; cell ``j`` sits on input voxel ``stride * j``, not in the middle of the ``stride`` voxels it
  "covers");
- **default** (``geometry=None``): the cells tile the view evenly, cell ``j`` of ``F`` is centred at
  ``lo + (j + 0.5) * (hi - lo) / F`` (true for the views themselves, for average pooling with kernel = stride and
  for resized maps; wrong for strided convolutions by ``(stride - 1) / 2`` input voxels, with the opposite sign
  on a flipped view).

``roi_align`` samples such a feature map at the cell centres of a RoI grid given in case coordinates, undoing the
flips, with ``grid_sample`` (trilinear/bilinear, ``align_corners=False``): for axis-aligned boxes this is 3D
RoIAlign with one sample per bin. PGL (Xie et al., arXiv 2011.12640) aligns the shared region of two views this
way; IDEAL's dense contrastive loss uses the same correspondence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import (_AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd, _AvgPoolNd, _LPPoolNd,
                                      _MaxPoolNd)

from nnunet_ssl.weights.network_parts import unwrap


# ============================================================================================= cell geometry
@dataclass(frozen=True)
class CellGeometry:
    """Where the cells of a feature map sit in the network input, per spatial axis.

    Cell ``j`` along axis ``d`` is centred on input voxel ``offset[d] + j * stride[d]`` (a continuous voxel index:
    voxel ``i`` of the input is centred at index ``i``). The identity (the input itself) is ``offset 0, stride 1``.
    """
    offset: Tuple[float, ...]
    stride: Tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "offset", tuple(float(o) for o in self.offset))
        object.__setattr__(self, "stride", tuple(float(s) for s in self.stride))
        if len(self.offset) != len(self.stride):
            raise ValueError(f"offset {self.offset} and stride {self.stride} differ in dimensionality")
        if any(s <= 0 for s in self.stride):
            raise ValueError(f"strides must be positive, got {self.stride}")

    @classmethod
    def identity(cls, ndim: int) -> "CellGeometry":
        return cls((0.0,) * ndim, (1.0,) * ndim)

    @property
    def ndim(self) -> int:
        return len(self.stride)

    def then(self, kernel, stride, padding, dilation=1) -> "CellGeometry":
        """Geometry after one more sliding-window layer (convolution or pooling) applied to this map."""
        n = self.ndim
        k, s, p, d = (_per_axis(v, n) for v in (kernel, stride, padding, dilation))
        return CellGeometry(tuple(o + st * (di * (ki - 1) / 2.0 - pi)
                                  for o, st, ki, pi, di in zip(self.offset, self.stride, k, p, d)),
                            tuple(st * si for st, si in zip(self.stride, s)))


def _per_axis(v, ndim: int) -> Tuple[float, ...]:
    if isinstance(v, (int, float)):
        return (float(v),) * ndim
    v = tuple(float(i) for i in v)
    if len(v) == 1:
        return v * ndim
    if len(v) != ndim:
        raise ValueError(f"{v} does not match {ndim} spatial dimensions")
    return v


def _conv_padding(conv: _ConvNd) -> Tuple[float, ...]:
    if conv.padding == "valid":
        return (0.0,) * len(conv.kernel_size)
    if conv.padding == "same":  # torch pads (total // 2) before, the rest after
        return tuple(float((d * (k - 1)) // 2) for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(float(p) for p in conv.padding)


# Children that are not on a residual block's main path (dynamic_network_architectures: BasicBlockD/BottleneckD
# "skip" = shortcut (average pooling + 1x1 conv when strided), "squeeze_excitation" = channel gating).
_OFF_PATH_CHILDREN = ("skip", "squeeze_excitation")


def _walk(module: nn.Module, geometry: CellGeometry, seen: set) -> CellGeometry:
    """Geometry after ``module``'s spatial path. Children are visited in registration order, which is the forward
    order in dynamic_network_architectures' blocks; a module reached twice (``ConvDropoutNormReLU`` registers its
    conv as ``conv`` and inside ``all_modules``) counts once; residual shortcuts are left out."""
    if id(module) in seen:
        return geometry
    seen.add(id(module))
    if isinstance(module, _ConvNd):
        if module.transposed:
            raise ValueError(f"{type(module).__name__} on an encoder path: cell geometry is only defined for "
                             f"convolutions and pooling")
        return geometry.then(module.kernel_size, module.stride, _conv_padding(module), module.dilation)
    if isinstance(module, (_MaxPoolNd, _AvgPoolNd, _LPPoolNd)):
        kernel = module.kernel_size
        stride = module.stride if module.stride else kernel
        return geometry.then(kernel, stride, getattr(module, "padding", 0), getattr(module, "dilation", 1))
    if isinstance(module, (_AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd)):
        raise ValueError("adaptive pooling on an encoder path has no fixed cell geometry")
    for name, child in module.named_children():
        if name not in _OFF_PATH_CHILDREN:
            geometry = _walk(child, geometry, seen)
    return geometry


def _ndim_of(encoder: nn.Module) -> int:
    conv = next((m for m in encoder.modules() if isinstance(m, _ConvNd)), None)
    if conv is None:
        raise ValueError("the encoder has no convolution: cannot tell its dimensionality")
    return len(conv.kernel_size)


def encoder_cell_geometry(network: nn.Module) -> List[CellGeometry]:
    """Cell geometry of every encoder stage output (the encoder's skip list: highest resolution first, bottleneck
    last) of an nnU-Net network (PlainConvUNet, ResidualEncoderUNet; wrapped by DDP/compile or not) or of its
    encoder, read from the modules: ``stem`` (if any), then each of ``stages``, accumulating every convolution's
    and pooling layer's kernel, stride, padding and dilation. In residual blocks only the main path counts (the
    shortcut's average pooling would centre cells half an input cell later; nnU-Net adds both). Checked against
    the encoder's ``strides`` when it has them."""
    net = unwrap(network)
    encoder = getattr(net, "encoder", net)
    ndim = _ndim_of(encoder)
    geometry = CellGeometry.identity(ndim)
    seen: set = set()
    if getattr(encoder, "stem", None) is not None:
        geometry = _walk(encoder.stem, geometry, seen)
    out = []
    for stage in encoder.stages:
        geometry = _walk(stage, geometry, seen)
        out.append(geometry)
    strides = getattr(encoder, "strides", None)
    if strides is not None:
        expected = np.cumprod(np.array([_per_axis(s, ndim) for s in strides]), axis=0)
        found = np.array([g.stride for g in out])
        if expected.shape != found.shape or not np.allclose(expected, found):
            raise ValueError(f"cell strides read from the encoder's modules {found.tolist()} disagree with its "
                             f"strides {expected.tolist()}: unknown encoder structure")
    return out


def decoder_cell_geometry(network: nn.Module) -> List[CellGeometry]:
    """Cell geometry of every decoder stage output (coarsest first, as
    :func:`nnunet_ssl.weights.network_parts.decoder_features` returns them). A decoder stage concatenates the transposed
    convolution's upsampled map with the encoder skip of the same resolution and convolves them; the skip is the
    part with a well-defined position (the upsampled map repeats each coarse cell ``stride`` times), so a decoder
    stage's cells sit where its skip's cells sit, moved by the stage's own convolutions (none for nnU-Net's
    kernel-3, padding-1, stride-1 convolutions)."""
    net = unwrap(network)
    skips = encoder_cell_geometry(net)
    out = []
    seen: set = set()
    for s, stage in enumerate(net.decoder.stages):
        out.append(_walk(stage, skips[-(s + 2)], seen))
    return out


# ============================================================================================= sampling
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


def _cell_index_map(size: Sequence[int], geometry: Optional[CellGeometry],
                    input_size: Optional[Sequence[int]]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(a, b)`` per axis such that the cell index (continuous) at fraction ``t`` of the view, measured in the
    view's own (possibly flipped) orientation, is ``a * t + b``."""
    ndim = len(size)
    if geometry is None:
        return tuple(float(f) for f in size), (-0.5,) * ndim
    if input_size is None:
        raise ValueError("input_size (the view's size in voxels, i.e. the network input's spatial shape) is needed "
                         "with a cell geometry")
    if geometry.ndim != ndim:
        raise ValueError(f"cell geometry is {geometry.ndim}d, the feature map {ndim}d")
    input_size = _per_axis(tuple(int(i) for i in input_size), ndim)
    a = tuple(p / s for p, s in zip(input_size, geometry.stride))
    b = tuple(-(0.5 + o) / s for o, s in zip(geometry.offset, geometry.stride))
    return a, b


def cell_fractions(size: Sequence[int], geometry: Optional[CellGeometry] = None,
                   input_size: Optional[Sequence[int]] = None) -> List[np.ndarray]:
    """Per axis, the position of each cell centre of a ``size`` feature map as a fraction of the view (0 = the
    view's first voxel edge, 1 = its last, in the view's own orientation): ``(j + 0.5) / size`` by default,
    ``(offset + j * stride + 0.5) / input_size`` with a :class:`CellGeometry`."""
    a, b = _cell_index_map(size, geometry, input_size)
    return [(np.arange(n, dtype=np.float64) - b[d]) / a[d] for d, n in enumerate(size)]


def roi_align(features: torch.Tensor, view_box: torch.Tensor, view_flip: torch.Tensor, roi_box: torch.Tensor,
              out_size: Union[int, Sequence[int]], padding_mode: str = "zeros",
              geometry: Optional[CellGeometry] = None, input_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Resample a view's feature map at a RoI given in case coordinates.

    ``features`` ``(B, C, *F)`` computed from views with geometry ``view_box`` ``(B, 2, ndim)`` and
    ``view_flip`` ``(B, ndim)``; ``roi_box`` ``(B, 2, ndim)`` in case coordinates. Returns ``(B, C, *out_size)``
    where output cell ``j`` along an axis holds the feature at case coordinate
    ``roi_lo + (j + 0.5) * (roi_hi - roi_lo) / out`` (in case orientation: the view's flips are undone).
    ``geometry`` (a :class:`CellGeometry`, e.g. from :func:`encoder_cell_geometry`) with ``input_size`` (the
    views' size in voxels, the network input's spatial shape) says where the feature cells sit in the view; None:
    cells tile the view evenly (see the module docstring). Linear interpolation between cell centres;
    ``padding_mode`` of ``grid_sample`` ("zeros" by default) only matters outside the outermost cell centres.
    Differentiable w.r.t. ``features``.
    """
    ndim = features.ndim - 2
    if ndim not in (2, 3):
        raise ValueError(f"features must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(features.shape)}")
    out_size = _normalise_out_size(out_size, ndim)
    fsize = tuple(int(s) for s in features.shape[2:])
    a, b = _cell_index_map(fsize, geometry, input_size)
    device = features.device
    view_box = _as_box(view_box, device)
    roi_box = _as_box(roi_box, device)
    view_flip = torch.as_tensor(view_flip, device=device).to(torch.bool)
    B = features.shape[0]
    for name, t, shape in (("view_box", view_box, (B, 2, ndim)), ("roi_box", roi_box, (B, 2, ndim)),
                           ("view_flip", view_flip, (B, ndim))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")

    # case coordinate c -> fraction t of the view (mirrored on flipped axes) -> cell index a * t + b -> normalised
    # grid_sample coordinate (2 * index + 1) / F - 1 (align_corners=False)
    vlo, vhi = view_box[:, 0], view_box[:, 1]  # (B, ndim)
    rlo, rhi = roi_box[:, 0], roi_box[:, 1]
    axes = []
    for d in range(ndim):
        j = torch.arange(out_size[d], device=device, dtype=torch.float64)
        c = rlo[:, d:d + 1] + (j[None] + 0.5) * (rhi[:, d:d + 1] - rlo[:, d:d + 1]) / out_size[d]  # (B, out_d)
        t = (c - vlo[:, d:d + 1]) / (vhi[:, d:d + 1] - vlo[:, d:d + 1])
        t = torch.where(view_flip[:, d:d + 1], 1.0 - t, t)
        axes.append((2.0 * (a[d] * t + b[d]) + 1.0) / fsize[d] - 1.0)
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
                out_size: Union[int, Sequence[int]], padding_mode: str = "zeros",
                geometry: Optional[CellGeometry] = None, input_size: Optional[Sequence[int]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample the shared region of two views from both feature maps on one common grid.

    ``f1`` / ``f2``: ``(B, C, *F1)`` / ``(B, C, *F2)`` feature maps of views 1 and 2 (resolutions may differ);
    boxes ``(B, 2, ndim)``, flips ``(B, ndim)``. ``geometry`` / ``input_size``: where the cells of both maps sit
    in their (equally sized) views, see :func:`roi_align` (network features: pass the level's
    :class:`CellGeometry` and the patch size). Returns ``(a1, a2, valid)``: ``a1``, ``a2`` ``(B, C, *out_size)``
    with ``a1[b, :, v]`` and ``a2[b, :, v]`` describing the same case location (cell ``v`` of the overlap box,
    case orientation), and ``valid`` ``(B,)`` bool, False where the views do not overlap (those samples hold
    meaningless values and must be masked out of any loss).
    """
    roi, valid = overlap_box(torch.as_tensor(box1, device=f1.device), torch.as_tensor(box2, device=f1.device))
    a1 = roi_align(f1, box1, flip1, roi, out_size, padding_mode, geometry, input_size)
    a2 = roi_align(f2, torch.as_tensor(box2, device=f2.device), torch.as_tensor(flip2, device=f2.device),
                   roi.to(f2.device), out_size, padding_mode, geometry, input_size)
    return a1, a2, valid
