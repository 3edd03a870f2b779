"""Random view geometry and view extraction (pure numpy / torch, no nnunetv2).

A *view* of a preprocessed case is the resampling of an axis-aligned box of the case onto the patch grid,
optionally mirrored afterwards (see "View geometry" in docs/ARCHITECTURE.md):

- coordinates are continuous case voxel coordinates: voxel ``k`` spans ``[k, k + 1)``, so the value of voxel
  ``k`` sits at coordinate ``k + 0.5``;
- ``box`` has shape ``(2, ndim)``: ``box[0]`` lower corner, ``box[1]`` upper corner;
- output voxel ``i`` of ``P`` along an axis samples the case at ``lo + (i + 0.5) * (hi - lo) / P`` (linear
  interpolation, zero outside the case), then the axes marked in ``flips`` are mirrored.

Used by the two-view loader (PGL, IDEAL) and by the alignment code that maps features of two views onto each
other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_ssl.methods.alignment import cell_fractions


PLACEMENTS = ("inside", "centre")  # the first is the default


@dataclass
class ViewSamplingConfig:
    """How two views of one case are drawn.

    - ``scale_range``: box side = patch side * s, s drawn uniformly from this range, independently per view
      (s < 1 zooms in, s > 1 zooms out). Default (0.7, 1.4) = nnU-Net's scaling range (our choice for PGL/IDEAL).
    - ``p_synchronize``: probability that a view uses the same s on all axes (else one s per axis), like
      nnU-Net's ``p_synchronize_scaling_across_axes`` (default 1: always isotropic scaling).
    - ``placement``: where a box may lie (:func:`place_box`). ``"inside"`` (default), like nnU-Net's patch
      sampler: along an axis where the box fits into the case it lies inside the case; where it is longer than
      the case it contains the case, the padding split at random. ``"centre"``: the centre lies anywhere inside
      the case, so up to half the box may be zero padding (IDEAL's default, with which it was benchmarked).
    - ``min_overlap``: the two boxes must share at least this fraction of the volume of box 1. Pairs are redrawn
      up to ``max_tries`` times; then box 2 becomes a shifted copy of box 1 that satisfies the bound.
    - ``flip_axes``: spatial axes that may be mirrored (None = all axes of the view).
    - ``p_flip``: probability of mirroring per allowed axis, independently per view.
    """
    scale_range: Tuple[float, float] = (0.7, 1.4)
    min_overlap: float = 0.3
    flip_axes: Optional[Tuple[int, ...]] = None
    p_flip: float = 0.5
    p_synchronize: float = 1.0
    max_tries: int = 50
    placement: str = PLACEMENTS[0]

    def __post_init__(self):
        lo, hi = (float(i) for i in self.scale_range)
        if not (0 < lo <= hi):
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        self.scale_range = (lo, hi)
        if not (0.0 <= self.min_overlap <= 1.0):
            raise ValueError(f"min_overlap must lie in [0, 1], got {self.min_overlap}")
        if not (0.0 <= self.p_flip <= 1.0):
            raise ValueError(f"p_flip must lie in [0, 1], got {self.p_flip}")
        if self.flip_axes is not None:
            self.flip_axes = tuple(int(a) for a in self.flip_axes)
        if self.max_tries < 1:
            raise ValueError("max_tries must be >= 1")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")


def _rng(rng):
    """Anything with ``uniform`` and ``random`` (np.random module, RandomState, Generator); None = np.random."""
    return np.random if rng is None else rng


def overlap_fraction(box1: np.ndarray, box2: np.ndarray) -> float:
    """Volume of the intersection of two boxes ``(2, ndim)`` divided by the volume of ``box1``."""
    box1 = np.asarray(box1, dtype=np.float64)
    box2 = np.asarray(box2, dtype=np.float64)
    inter = np.clip(np.minimum(box1[1], box2[1]) - np.maximum(box1[0], box2[0]), 0, None)
    vol1 = np.prod(box1[1] - box1[0])
    return float(np.prod(inter) / vol1) if vol1 > 0 else 0.0


def _draw_scale(ndim: int, cfg: ViewSamplingConfig, rng) -> np.ndarray:
    lo, hi = cfg.scale_range
    if rng.random() < cfg.p_synchronize:
        return np.full(ndim, rng.uniform(lo, hi))
    return np.array([rng.uniform(lo, hi) for _ in range(ndim)])


def _lower_corner_range(shape: np.ndarray, side: np.ndarray, placement: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per axis, the interval the lower corner of a box of ``side`` may take under ``placement``."""
    if placement == "inside":
        free = shape - side  # < 0 where the box is longer than the case: then the case lies inside the box
        return np.minimum(free, 0.0), np.maximum(free, 0.0)
    return -side / 2, shape - side / 2  # "centre": the centre anywhere in [0, shape]


def place_box(box: np.ndarray, case_shape_spatial: Sequence[int], placement: str) -> np.ndarray:
    """``box`` ``(2, ndim)`` moved (size unchanged) by the least amount per axis that satisfies ``placement``
    (see :class:`ViewSamplingConfig`). For two boxes of the same size, one of them placed, placing the other
    never moves it away from the first (the clamp is 1-Lipschitz and fixes the placed box), so an overlap bound
    between them survives it."""
    box = np.asarray(box, dtype=np.float64)
    side = box[1] - box[0]
    lo_min, lo_max = _lower_corner_range(np.asarray(case_shape_spatial, dtype=np.float64), side, placement)
    lo = np.clip(box[0], lo_min, lo_max)
    return np.stack((lo, lo + side))


def _random_box(shape: np.ndarray, side: np.ndarray, placement: str, rng) -> np.ndarray:
    lo_min, lo_max = _lower_corner_range(shape, side, placement)
    lo = np.array([rng.uniform(a, b) for a, b in zip(lo_min, lo_max)])
    return np.stack((lo, lo + side))


def sample_box(case_shape_spatial: Sequence[int], patch_size: Sequence[int], cfg: ViewSamplingConfig,
               rng=None) -> np.ndarray:
    """One random box ``(2, ndim)``: side = patch * s, placed uniformly as ``cfg.placement`` allows."""
    rng = _rng(rng)
    shape = np.asarray(case_shape_spatial, dtype=np.float64)
    patch = np.asarray(patch_size, dtype=np.float64)
    assert len(shape) == len(patch), (case_shape_spatial, patch_size)
    return _random_box(shape, patch * _draw_scale(len(patch), cfg, rng), cfg.placement, rng)


def sample_two_boxes(case_shape_spatial: Sequence[int], patch_size: Sequence[int], cfg: ViewSamplingConfig,
                     rng=None) -> Tuple[np.ndarray, np.ndarray]:
    """Two random boxes (float64 arrays ``(2, ndim)``) in case voxel coordinates.

    Box sides are ``patch_size * s`` with s from ``cfg.scale_range`` per view; both boxes satisfy
    ``cfg.placement`` (:func:`place_box`). ``overlap_fraction(box1, box2) >= cfg.min_overlap`` is guaranteed: box
    2's centre is drawn around box 1's, box 2 is moved into its placement and the pair is redrawn until the
    overlap bound holds; after ``cfg.max_tries`` failures box 2 is a copy of box 1 shifted by at most ``1 -
    min_overlap ** (1 / ndim)`` of its side per axis (then placed, which only brings it closer to box 1).

    ``rng``: ``np.random`` (default, the global state that nnU-Net's loader workers seed), a ``RandomState`` or a
    ``Generator``.
    """
    rng = _rng(rng)
    shape = np.asarray(case_shape_spatial, dtype=np.float64)
    patch = np.asarray(patch_size, dtype=np.float64)
    ndim = len(patch)
    if len(shape) != ndim:
        raise ValueError(f"case shape {tuple(case_shape_spatial)} and patch size {tuple(patch_size)} differ in "
                         f"dimensionality")
    # shift range: with (1 - min_overlap) of the half-sum of the sides most draws satisfy the bound
    shift_factor = 1.0 - cfg.min_overlap if cfg.min_overlap > 0 else 1.0
    box1 = None
    for _ in range(cfg.max_tries):
        box1 = _random_box(shape, patch * _draw_scale(ndim, cfg, rng), cfg.placement, rng)
        w1 = box1[1] - box1[0]
        w2 = patch * _draw_scale(ndim, cfg, rng)
        c1 = (box1[0] + box1[1]) / 2
        r = shift_factor * (w1 + w2) / 2
        c2 = c1 + np.array([rng.uniform(-ri, ri) for ri in r])
        box2 = place_box(np.stack((c2 - w2 / 2, c2 + w2 / 2)), shape, cfg.placement)
        if overlap_fraction(box1, box2) >= cfg.min_overlap:
            return box1, box2
    # fallback: shifted copy of the last box 1; per-axis overlap >= f, so the volume fraction is >= f ** ndim
    w1 = box1[1] - box1[0]
    f = cfg.min_overlap ** (1.0 / ndim)
    r = (1.0 - f) * w1
    lo2 = box1[0] + np.array([rng.uniform(-ri, ri) for ri in r])
    return box1, place_box(np.stack((lo2, lo2 + w1)), shape, cfg.placement)


def sample_flips(ndim: int, cfg: ViewSamplingConfig, rng=None) -> np.ndarray:
    """Bool array ``(ndim,)``: True = mirror that axis (only axes in ``cfg.flip_axes``, each with ``p_flip``)."""
    rng = _rng(rng)
    axes = range(ndim) if cfg.flip_axes is None else cfg.flip_axes
    flips = np.zeros(ndim, dtype=bool)
    for a in axes:
        if not 0 <= a < ndim:
            raise ValueError(f"flip axis {a} does not exist for a {ndim}d view")
        flips[a] = rng.random() < cfg.p_flip
    return flips


def _as_numpy_box(box) -> np.ndarray:
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu().numpy()
    return np.asarray(box, dtype=np.float64)


def extract_view(image, box, flips, patch_size: Sequence[int]) -> torch.Tensor:
    """Resample ``box`` of ``image`` onto the patch grid, then mirror the ``flips`` axes.

    ``image``: ``(C, *case_spatial)``, a torch tensor, a numpy array or anything sliceable that numpy can convert
    (nnU-Net's blosc2 arrays: only the needed region plus one voxel is read). ``box``: ``(2, ndim)``; ``flips``:
    ``(ndim,)`` bools or None. Returns a float32 tensor ``(C, *patch_size)`` whose voxel ``i`` along each axis is
    the linear interpolation of the case at ``lo + (i + 0.5) * (hi - lo) / P`` (voxel ``k``'s value sits at
    ``k + 0.5``, zeros outside the case), before flipping.
    """
    box = _as_numpy_box(box)
    patch_size = tuple(int(p) for p in patch_size)
    ndim = len(patch_size)
    if box.shape != (2, ndim):
        raise ValueError(f"box must have shape (2, {ndim}), got {box.shape}")
    if len(image.shape) != ndim + 1:
        raise ValueError(f"image must be (C, *spatial) with {ndim} spatial axes, got shape {tuple(image.shape)}")
    shape = [int(s) for s in image.shape[1:]]
    num_channels = int(image.shape[0])

    # read only the region the interpolation touches (plus a one voxel margin)
    start = [max(0, int(np.floor(box[0, d])) - 1) for d in range(ndim)]
    end = [min(shape[d], int(np.ceil(box[1, d])) + 1) for d in range(ndim)]
    if any(e <= s for s, e in zip(start, end)):
        return torch.zeros((num_channels, *patch_size), dtype=torch.float32)
    region = image[(slice(None),) + tuple(slice(s, e) for s, e in zip(start, end))]
    if isinstance(region, torch.Tensor):
        region = region.float()
    else:
        region = torch.from_numpy(np.ascontiguousarray(np.asarray(region), dtype=np.float32))

    # grid_sample (align_corners=False): normalised x = 2 * c / W - 1 maps continuous coordinate c in [0, W]
    # onto the region (pixel k's centre at c = k + 0.5)
    axes = []
    for d in range(ndim):
        lo, hi, p = box[0, d], box[1, d], patch_size[d]
        c = lo + (np.arange(p, dtype=np.float64) + 0.5) * (hi - lo) / p - start[d]
        axes.append(torch.from_numpy(2.0 * c / (end[d] - start[d]) - 1.0))
    mesh = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack(mesh[::-1], dim=-1).to(torch.float32)[None]  # grid_sample wants (x=last axis, ..., first)
    out = F.grid_sample(region[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]

    if flips is not None:
        flips = np.asarray(flips.detach().cpu() if isinstance(flips, torch.Tensor) else flips, dtype=bool)
        dims = [d + 1 for d in range(ndim) if flips[d]]
        if dims:
            out = torch.flip(out, dims)
    return out.contiguous()


def view_cell_centres(box, flips, size: Sequence[int], geometry=None, input_size: Sequence[int] = None
                      ) -> torch.Tensor:
    """Case coordinates of the cells of a grid of ``size`` computed from a view: ``(ndim, *size)`` float64.

    Cell ``j`` (after the view's flips) along axis d sits at ``lo + t_j * (hi - lo)`` where ``t_j`` is the cell's
    fraction of the view (:func:`nnunet_ssl.methods.alignment.cell_fractions`): ``(j + 0.5) / size[d]`` by default, or
    where a :class:`~nnunet_ssl.methods.alignment.CellGeometry` ``geometry`` of a network level puts it in a view of
    ``input_size`` voxels; mirrored (``1 - t_j``) on flipped axes. Handy for tests and debugging.
    """
    box = _as_numpy_box(box)
    ndim = len(size)
    flips = np.zeros(ndim, bool) if flips is None else np.asarray(flips, dtype=bool)
    axes = []
    for d, t in enumerate(cell_fractions(tuple(int(s) for s in size), geometry, input_size)):
        if flips[d]:
            t = 1.0 - t
        axes.append(torch.from_numpy(box[0, d] + t * (box[1, d] - box[0, d])))
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))
