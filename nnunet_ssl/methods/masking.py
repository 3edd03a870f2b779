"""GMIM masking for CNN inputs: entropy-adaptive grid masks, hierarchical feature masks, fixed-grid MAE masks.

Method: GMIM - Grid Masked Image Modeling (Qi et al., Computers in Biology and Medicine, 2024; see
``docs/methods.md``).
Pure torch, 2d ``(B, C, X, Y)`` and 3d ``(B, C, X, Y, Z)`` tensors; no nnunetv2 import.

What follows the paper (**paper**) and what is our reading of it for CNNs (**choice**):

* Grid (**paper**): per sample, try ``G`` in ``(4, 8, 16)`` cells per axis, compute the Shannon entropy ``H_k`` of
  the intensities of every cell and keep the ``G`` maximising ``G**-0.1 * std(H) / mean(H)``.
* Cells (**choice**): ``G`` need not divide the size. Along an axis of ``S`` voxels the cell boundaries are
  ``floor(i * S / G)``, ``i = 0..G`` (:func:`cell_bounds`), so every voxel belongs to exactly one cell and cell
  lengths differ by at most one voxel. Cells are numbered row-major (last axis fastest), ``K = G**ndim`` cells.
* Entropy (**choice**): one histogram per cell with ``bins=32`` equal bins over the *sample's* global intensity
  range (min..max over all channels and voxels); all channels of a cell are pooled into that one histogram.
  Entropy in bits, ``0 log 0 = 0``. A constant sample has entropy 0 everywhere.
* Grid candidates (**choice**): a candidate is dropped when a cell would be narrower than ``min_cell_size``
  (default 2) voxels along the smallest spatial axis, i.e. when ``G > min(spatial) // min_cell_size``. This keeps
  small 3d patches and anisotropic / 2d patches meaningful (a 1-voxel cell has no entropy to speak of). If every
  candidate is dropped, ``G = max(1, min(spatial) // min_cell_size)`` is used.
* Std (**choice**): population standard deviation (``unbiased=False``) over the ``K`` cells; if ``mean(H) <= 1e-12``
  the score is 0 (ties between candidates go to the first candidate in ``candidates`` order).
* Ratios (**paper**): cell ``k`` gets ``base * linspace(1 - s, 1 + s, K)[rank(H_k)]`` (ascending rank: the highest
  entropy cell gets the highest ratio), ``base = 0.5``, ``s = 0.3``, clipped to ``[0, 1]``. **choice**: cells with
  tied entropy (e.g. several perfectly flat cells) share the *average* of the ratios of the ranks they occupy, so
  identical cells are treated identically and the mean ratio stays ``base``. With ``K == 1`` the ratio is ``base``.
* Masking unit (**choice**, the official code masks Swin tokens): inside each cell the unit is an axis-aligned voxel
  block; by default ``unit = max(1, (S // G) // 4)`` voxels per axis (about 4 units per axis per cell, i.e. 64 units
  per cell in 3d, 16 in 2d). Units tile each cell from its lower corner; the last unit of a cell may be cut by the
  cell boundary. In each cell exactly ``round(ratio * n_units_in_cell)`` units (Python / torch round-half-to-even)
  are chosen uniformly at random and zeroed (no mask token). Mask convention: float, ``1 = masked``.
* Hierarchical masks (**paper**): fresh masks on the outputs of the first encoder stages, each applied with
  probability 0.3, with ratios 0.5x, 0.25x, 0.125x the cell ratio. **choice**: the "cell ratio" of a sample is the
  mean of its requested cell ratios (:attr:`MaskResult.mean_cell_ratio`, = ``base`` unless clipping happened); the
  feature mask is one cell covering the whole feature map, with block units of ``max(1, size // 16)`` feature
  voxels per axis (a constant block size in input voxels across stages); the coin is flipped once per call and
  stage (the whole batch is masked or not).
* MAE baseline (**choice**): :meth:`GMIMMasker.mae` - fixed grid 8 (clamped like the candidates), fixed ratio 0.75
  in every cell, same block units; no entropy is computed.

Typical use in a trainer::

    masker = GMIMMasker()
    res = masker.mask(x)                    # MaskResult: masked, mask, grids, cell_ratios, mean_cell_ratio
    hier = HierarchicalFeatureMasker()
    ctx = {"ratio": res.mean_cell_ratio}    # set to None for the target branch / validation
    handles = [stage.register_forward_hook(hier.forward_hook(i, lambda: ctx["ratio"]))
               for i, stage in enumerate(encoder.stages[:len(hier.ratio_factors)])]
    recon = network(res.masked)
    loss = MaskedMSELoss()(recon, x, res.mask)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "cell_bounds",
    "cell_index_map",
    "cell_entropies",
    "grid_scores",
    "choose_grid",
    "valid_grids",
    "adaptive_cell_ratios",
    "default_unit",
    "grid_block_mask",
    "MaskResult",
    "GMIMMasker",
    "HierarchicalFeatureMasker",
]

_EPS = 1e-12
IntOrSeq = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------------------------------- cell geometry
def cell_bounds(size: int, grid: int, device=None) -> torch.Tensor:
    """Integer cell boundaries along one axis: ``floor(i * size / grid)`` for ``i = 0..grid`` (length ``grid + 1``).

    Cell ``i`` is ``[b[i], b[i+1])``. Every cell is non-empty when ``grid <= size``.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    return torch.div(torch.arange(grid + 1, device=device) * int(size), int(grid), rounding_mode="floor")


def _axis_cell_of(size: int, grid: int, device=None) -> torch.Tensor:
    """Cell index of every coordinate ``0..size-1`` along one axis."""
    b = cell_bounds(size, grid, device=device)
    return torch.bucketize(torch.arange(size, device=device), b[1:], right=True)


def cell_index_map(shape_spatial: Sequence[int], grid: int, device=None) -> torch.Tensor:
    """Long tensor of shape ``shape_spatial`` with the row-major cell id (``0..grid**ndim - 1``) of every voxel."""
    ids = None
    for size in shape_spatial:
        c = _axis_cell_of(int(size), grid, device=device)
        ids = c if ids is None else ids.unsqueeze(-1) * grid + c
    return ids


# ------------------------------------------------------------------------------------------------------------ entropy
def _bin_indices(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, C, *spatial) -> long bin index per element, bins over each sample's global min..max (all channels)."""
    b = x.shape[0]
    xf = x.detach().reshape(b, -1).float()
    mn = xf.min(dim=1, keepdim=True).values
    mx = xf.max(dim=1, keepdim=True).values
    rng = mx - mn
    scale = torch.where(rng > 0, bins / rng.clamp_min(1e-30), torch.zeros_like(rng))
    idx = torch.floor((xf - mn) * scale).long().clamp_(0, bins - 1)
    return idx.reshape(x.shape)


def _entropies_from_bins(idx: torch.Tensor, grid: int, bins: int) -> torch.Tensor:
    """idx (B, C, *spatial) long -> entropies (B, grid**ndim) in bits."""
    b, c = idx.shape[:2]
    spatial = idx.shape[2:]
    k = grid ** len(spatial)
    cells = cell_index_map(spatial, grid, device=idx.device)  # (*spatial)
    combined = cells.unsqueeze(0).unsqueeze(0) * bins + idx  # (B, C, *spatial)
    combined = combined + (torch.arange(b, device=idx.device) * (k * bins)).view(b, *([1] * (idx.ndim - 1)))
    counts = torch.bincount(combined.reshape(-1), minlength=b * k * bins).view(b, k, bins).double()
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    ent = -(torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(-1)
    return ent.float()


def cell_entropies(x: torch.Tensor, grid: int, bins: int = 32) -> torch.Tensor:
    """Shannon entropy (bits) of the intensities of each of the ``grid**ndim`` cells of every sample.

    ``x``: ``(B, C, *spatial)``. Histogram with ``bins`` equal bins over the sample's global min..max (all channels
    pooled into one histogram per cell). Returns float32 ``(B, grid**ndim)``, cells in row-major order
    (:func:`cell_index_map`). No gradient.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    with torch.no_grad():
        return _entropies_from_bins(_bin_indices(x, bins), grid, bins)


def _score(h: torch.Tensor, grid: int, exponent: float) -> torch.Tensor:
    mean = h.mean(-1)
    std = h.std(-1, unbiased=False) if h.shape[-1] > 1 else torch.zeros_like(mean)
    ratio = torch.where(mean > _EPS, std / mean.clamp_min(_EPS), torch.zeros_like(mean))
    return float(grid) ** (-exponent) * ratio


def valid_grids(shape_spatial: Sequence[int], candidates: Sequence[int] = (4, 8, 16),
                min_cell_size: int = 2) -> List[int]:
    """Candidates with cells at least ``min_cell_size`` voxels wide on the smallest axis (see module doc)."""
    limit = max(1, min(int(s) for s in shape_spatial) // max(1, int(min_cell_size)))
    kept = [int(g) for g in candidates if 1 <= int(g) <= limit]
    return kept if kept else [limit]


def grid_scores(x: torch.Tensor, candidates: Sequence[int] = (4, 8, 16), bins: int = 32, exponent: float = 0.1,
                min_cell_size: int = 2) -> Tuple[Dict[int, torch.Tensor], Dict[int, torch.Tensor]]:
    """Scores ``G**-exponent * std(H) / mean(H)`` and entropies for every valid candidate.

    Returns ``(scores, entropies)``: dicts ``G -> (B,)`` and ``G -> (B, G**ndim)``.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    grids = valid_grids(x.shape[2:], candidates, min_cell_size)
    scores, ents = {}, {}
    with torch.no_grad():
        idx = _bin_indices(x, bins)
        for g in grids:
            h = _entropies_from_bins(idx, g, bins)
            ents[g] = h
            scores[g] = _score(h, g, exponent)
    return scores, ents


def choose_grid(x: torch.Tensor, candidates: Sequence[int] = (4, 8, 16), bins: int = 32, exponent: float = 0.1,
                min_cell_size: int = 2) -> Tuple[List[int], Dict[int, torch.Tensor]]:
    """Per sample, the candidate ``G`` maximising ``G**-exponent * std(H) / mean(H)``.

    Candidates with cells narrower than ``min_cell_size`` voxels on the smallest axis are dropped (see module doc).
    Returns ``(grids, scores)``: a list of ``B`` ints and a dict ``G -> (B,)`` scores of the valid candidates.
    Ties go to the earliest candidate.
    """
    scores, _ = grid_scores(x, candidates, bins, exponent, min_cell_size)
    return _argmax_grids(scores, x.shape[0]), scores


def _argmax_grids(scores: Dict[int, torch.Tensor], batch: int) -> List[int]:
    gs = list(scores.keys())
    stacked = torch.stack([scores[g] for g in gs], dim=1)  # (B, n)
    best = stacked.max(dim=1, keepdim=True).values
    first = [int(row.nonzero()[0]) for row in (stacked >= best)]  # first maximum wins
    return [gs[i] for i in first][:batch]


# ------------------------------------------------------------------------------------------------------------- ratios
def adaptive_cell_ratios(h: torch.Tensor, base: float = 0.5, spread: float = 0.3) -> torch.Tensor:
    """Per-cell masking ratio ``base * linspace(1 - spread, 1 + spread, K)[rank(H_k)]`` clipped to ``[0, 1]``.

    ``h``: ``(..., K)`` entropies. Ascending rank, so higher entropy -> higher ratio. Tied entropies get the mean
    of the linspace values of the ranks they occupy (= the value at their average rank). ``K == 1`` -> ``base``.
    """
    k = h.shape[-1]
    if k == 1:
        return torch.full_like(h, float(base)).clamp(0.0, 1.0)
    hs, _ = torch.sort(h.contiguous(), dim=-1)
    lo = torch.searchsorted(hs, h.contiguous(), right=False)  # number of cells with smaller entropy
    hi = torch.searchsorted(hs, h.contiguous(), right=True)  # number of cells with smaller or equal entropy
    avg_rank = (lo + hi - 1).to(torch.float64) / 2.0
    r = base * (1.0 - spread + 2.0 * spread * avg_rank / (k - 1))
    return r.clamp(0.0, 1.0).to(h.dtype if h.is_floating_point() else torch.float32)


# --------------------------------------------------------------------------------------------------------- block mask
def default_unit(shape_spatial: Sequence[int], grid: int, divisor: int = 4) -> Tuple[int, ...]:
    """Default masking unit: ``max(1, (size // grid) // divisor)`` voxels per axis."""
    return tuple(max(1, (int(s) // int(grid)) // int(divisor)) for s in shape_spatial)


def _axis_units(size: int, grid: int, unit: int, device):
    """Per axis: unit index of every coordinate (global along the axis), and the cell of every unit."""
    b = cell_bounds(size, grid, device=device)
    lengths = b[1:] - b[:-1]
    n_units = torch.div(lengths + unit - 1, unit, rounding_mode="floor")  # ceil
    offsets = torch.cumsum(n_units, 0) - n_units
    coord = torch.arange(size, device=device)
    cell_of = torch.bucketize(coord, b[1:], right=True)
    unit_of_coord = offsets[cell_of] + torch.div(coord - b[cell_of], unit, rounding_mode="floor")
    cell_of_unit = torch.repeat_interleave(torch.arange(grid, device=device), n_units)
    return unit_of_coord, cell_of_unit


def _rand(n: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    if generator is not None:
        return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).to(device)
    return torch.rand(n, device=device, dtype=torch.float64)


def _single_block_mask(shape_spatial: Sequence[int], grid: int, ratios: torch.Tensor, unit: Sequence[int],
                       generator: Optional[torch.Generator], device) -> torch.Tensor:
    ndim = len(shape_spatial)
    k = grid ** ndim
    ratios = torch.as_tensor(ratios, dtype=torch.float64, device=device).reshape(-1)
    if ratios.numel() == 1 and k > 1:
        ratios = ratios.expand(k)
    if ratios.numel() != k:
        raise ValueError(f"grid {grid} in {ndim}d has {k} cells but {ratios.numel()} cell ratios were given")
    per_axis = [_axis_units(int(s), grid, int(u), device) for s, u in zip(shape_spatial, unit)]
    # cell id of every unit of the unit grid (U_0, ..., U_{n-1}), row-major like cell_index_map
    cell_of_unit = None
    for _, cu in per_axis:
        cell_of_unit = cu if cell_of_unit is None else cell_of_unit.unsqueeze(-1) * grid + cu
    unit_shape = cell_of_unit.shape
    cid = cell_of_unit.reshape(-1)
    n_units_cell = torch.bincount(cid, minlength=k)
    n_mask_cell = torch.round(ratios.clamp(0.0, 1.0) * n_units_cell.double()).long()
    # random order inside each cell: sort by (cell, uniform) and take the rank within the cell
    key = cid.double() + _rand(cid.numel(), generator, device)
    order = torch.argsort(key)
    starts = torch.cumsum(n_units_cell, 0) - n_units_cell
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device) - starts[cid[order]]
    unit_mask = (rank < n_mask_cell[cid]).reshape(unit_shape)
    # expand units to voxels
    out = unit_mask
    for axis, (uc, _) in enumerate(per_axis):
        out = out.index_select(axis, uc)
    return out


def grid_block_mask(shape_spatial: Sequence[int], grid: IntOrSeq, cell_ratios, unit=None,
                    generator: Optional[torch.Generator] = None, device=None, unit_divisor: int = 4) -> torch.Tensor:
    """Random block mask, exactly ``round(ratio_k * n_units_k)`` masked units in every cell ``k``.

    - ``shape_spatial``: spatial size ``(X, Y[, Z])``.
    - ``grid``: one int for all samples or a sequence of ``B`` ints (different ``G`` per sample).
    - ``cell_ratios``: tensor ``(B, K)`` (same grid for all samples), or a sequence of ``B`` tensors of length
      ``G_b**ndim`` (or scalars: same ratio in every cell). ``B`` is taken from it.
    - ``unit``: ``None`` -> :func:`default_unit` per sample (depends on its ``G``), an int (cube), a tuple per axis,
      or a sequence of ``B`` tuples.
    - ``generator``: optional ``torch.Generator`` (its device is used for drawing, the mask goes to ``device``).

    Returns float32 ``(B, 1, *shape_spatial)``, 1 = masked.
    """
    shape_spatial = tuple(int(s) for s in shape_spatial)
    ndim = len(shape_spatial)
    if ndim not in (2, 3):
        raise ValueError(f"shape_spatial must have 2 or 3 entries, got {shape_spatial}")
    ratios_list = list(cell_ratios)  # rows of a (B, K) tensor or a list of per-sample ratios
    b = len(ratios_list)
    grids = [int(grid)] * b if isinstance(grid, int) else [int(g) for g in grid]
    if len(grids) != b:
        raise ValueError(f"{len(grids)} grids given for {b} samples")
    if device is None:
        device = ratios_list[0].device if b and isinstance(ratios_list[0], torch.Tensor) else torch.device("cpu")
    masks = []
    for i in range(b):
        g = grids[i]
        if unit is None:
            u = default_unit(shape_spatial, g, unit_divisor)
        elif isinstance(unit, int):
            u = (unit,) * ndim
        elif len(unit) == b and not isinstance(unit[0], int):
            u = tuple(unit[i])
        else:
            u = tuple(unit)
        if len(u) != ndim or min(u) < 1:
            raise ValueError(f"unit must have {ndim} positive entries, got {u}")
        masks.append(_single_block_mask(shape_spatial, g, ratios_list[i], u, generator, device))
    return torch.stack(masks).unsqueeze(1).float()


# ------------------------------------------------------------------------------------------------------------- masker
@dataclass
class MaskResult:
    """Output of :meth:`GMIMMasker.mask`.

    - ``masked``: input with masked units zeroed, same shape/dtype as the input.
    - ``mask``: float ``(B, 1, *spatial)``, 1 = masked (feed to ``MaskedMSELoss``).
    - ``grids``: chosen ``G`` per sample; ``cell_ratios``: requested ratio per cell, one tensor per sample.
    - ``mean_cell_ratio``: ``(B,)`` mean requested cell ratio (what :class:`HierarchicalFeatureMasker` scales).
    - ``scores``: ``G -> (B,)`` grid scores (``None`` with a fixed grid).
    """
    masked: torch.Tensor
    mask: torch.Tensor
    grids: List[int]
    cell_ratios: List[torch.Tensor]
    mean_cell_ratio: torch.Tensor
    scores: Optional[Dict[int, torch.Tensor]] = None


@dataclass
class GMIMMasker:
    """GMIM input masking (adaptive grid + entropy-adaptive ratios) or, with fixed settings, the MAE baseline.

    Defaults are the paper's (candidates 4/8/16, exponent 0.1, base 0.5, spread 0.3) plus our choices
    (bins 32, ``min_cell_size`` 2, unit = cell // 4; see the module doc). ``fixed_grid``: use this ``G`` for every
    sample (clamped to the valid range of the patch); ``fixed_ratio``: the same ratio in every cell (no entropy
    ranking). ``GMIMMasker.mae()`` = fixed grid 8, fixed ratio 0.75.

    ``masker(x, generator=None) -> (masked_x, mask)``; ``masker.mask(x, generator=None) -> MaskResult``.
    """
    candidates: Tuple[int, ...] = (4, 8, 16)
    exponent: float = 0.1
    base_ratio: float = 0.5
    spread: float = 0.3
    bins: int = 32
    min_cell_size: int = 2
    unit_divisor: int = 4
    unit: Optional[Tuple[int, ...]] = None
    fixed_grid: Optional[int] = None
    fixed_ratio: Optional[float] = None

    @classmethod
    def mae(cls, grid: int = 8, ratio: float = 0.75, **kwargs) -> "GMIMMasker":
        """MAE-style baseline: fixed grid, the same ``ratio`` in every cell (defaults 8 and 0.75)."""
        return cls(fixed_grid=grid, fixed_ratio=ratio, **kwargs)

    def _grids(self, x: torch.Tensor):
        if self.fixed_grid is not None:
            limit = valid_grids(x.shape[2:], (), self.min_cell_size)[0]
            g = max(1, min(int(self.fixed_grid), limit))
            return [g] * x.shape[0], None, None
        scores, ents = grid_scores(x, self.candidates, self.bins, self.exponent, self.min_cell_size)
        return _argmax_grids(scores, x.shape[0]), scores, ents

    def mask(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> MaskResult:
        if x.ndim not in (4, 5):
            raise ValueError(f"expected (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        b, ndim = x.shape[0], x.ndim - 2
        grids, scores, ents = self._grids(x)
        ratios = []
        with torch.no_grad():
            if self.fixed_ratio is None and ents is None:  # fixed grid, adaptive ratio
                ents = {grids[0]: cell_entropies(x, grids[0], self.bins)}
            for i, g in enumerate(grids):
                k = g ** ndim
                if self.fixed_ratio is not None:
                    r = torch.full((k,), float(self.fixed_ratio), device=x.device).clamp(0.0, 1.0)
                else:
                    r = adaptive_cell_ratios(ents[g][i], self.base_ratio, self.spread)
                ratios.append(r.float())
            mask = grid_block_mask(x.shape[2:], grids, ratios, unit=self.unit, generator=generator,
                                   device=x.device, unit_divisor=self.unit_divisor)
            mean_ratio = torch.stack([r.mean() for r in ratios])
        masked = x * (1.0 - mask).to(x.dtype)
        return MaskResult(masked, mask, grids, ratios, mean_ratio, scores)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        res = self.mask(x, generator)
        return res.masked, res.mask


# ---------------------------------------------------------------------------------------------- hierarchical masking
RatioLike = Union[float, torch.Tensor]


@dataclass
class HierarchicalFeatureMasker:
    """GMIM hierarchical masking of early encoder feature maps (fresh masks, zeroing).

    Stage ``i < len(ratio_factors)`` is masked with probability ``probability`` (one coin per call and stage);
    sample ``b`` then gets ``round(ratio_factors[i] * cell_ratio[b] * n_units)`` random units zeroed, units being
    blocks of ``max(1, size // unit_divisor)`` feature voxels per axis (one cell = the whole map). Later stages
    pass through. New randomness on every call (global RNG unless a generator is given).
    """
    probability: float = 0.3
    ratio_factors: Tuple[float, ...] = (0.5, 0.25, 0.125)
    unit_divisor: int = 16
    last_masked: Dict[int, bool] = field(default_factory=dict, repr=False, compare=False)

    def stage_mask(self, shape_spatial: Sequence[int], stage: int, cell_ratio: RatioLike, batch: int,
                   generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """The (always drawn) mask ``(B, 1, *shape_spatial)`` for ``stage``; 1 = masked."""
        if not 0 <= stage < len(self.ratio_factors):
            raise ValueError(f"stage {stage} has no ratio factor (ratio_factors={self.ratio_factors})")
        r = torch.as_tensor(cell_ratio, dtype=torch.float64).detach().cpu().reshape(-1)
        if r.numel() == 1:
            r = r.expand(batch)
        if r.numel() != batch:
            raise ValueError(f"cell_ratio has {r.numel()} entries for a batch of {batch}")
        r = (r * float(self.ratio_factors[stage])).clamp(0.0, 1.0)
        unit = tuple(max(1, int(s) // int(self.unit_divisor)) for s in shape_spatial)
        return grid_block_mask(shape_spatial, 1, [ri.reshape(1) for ri in r], unit=unit, generator=generator,
                               device=device)

    def mask_stage(self, feature: torch.Tensor, stage: int, cell_ratio: RatioLike,
                   generator: Optional[torch.Generator] = None, force: Optional[bool] = None):
        """Returns ``(feature_out, mask_or_None)``; ``force`` True/False overrides the coin flip."""
        if stage >= len(self.ratio_factors) or cell_ratio is None:
            return feature, None
        if force is None:
            coin = torch.rand((), generator=generator, device=generator.device if generator is not None else "cpu")
            apply = bool(coin.item() < self.probability)
        else:
            apply = bool(force)
        if not apply:
            return feature, None
        mask = self.stage_mask(feature.shape[2:], stage, cell_ratio, feature.shape[0], generator, feature.device)
        return feature * (1.0 - mask).to(feature.dtype), mask

    def __call__(self, features: Sequence[torch.Tensor], cell_ratio: RatioLike,
                 generator: Optional[torch.Generator] = None) -> Tuple[List[torch.Tensor], List[bool]]:
        """Mask a list of stage outputs; returns ``(features_out, masked_flags)`` (one flag per stage)."""
        outs, flags = [], []
        for i, f in enumerate(features):
            o, m = self.mask_stage(f, i, cell_ratio, generator)
            outs.append(o)
            flags.append(m is not None)
        return outs, flags

    def forward_hook(self, stage: int, ratio_getter: Callable[[], Optional[RatioLike]],
                     generator: Optional[torch.Generator] = None, only_in_training: bool = True):
        """A ``register_forward_hook`` function for encoder stage ``stage``.

        ``ratio_getter()`` returns the per-sample cell ratio of the current batch (``MaskResult.mean_cell_ratio``)
        or ``None`` to disable masking (target branch, validation). ``self.last_masked[stage]`` records whether the
        last call masked.
        """
        def hook(module, inputs, output):
            if only_in_training and not module.training:
                self.last_masked[stage] = False
                return None
            ratio = ratio_getter()
            if ratio is None or not isinstance(output, torch.Tensor):
                self.last_masked[stage] = False
                return None
            out, m = self.mask_stage(output, stage, ratio, generator)
            self.last_masked[stage] = m is not None
            return out

        return hook
