"""GMIM's entropy-adaptive grid: cell geometry, per-cell intensity entropies, the choice of grid, per-cell ratios.

Method: GMIM - Grid Masked Image Modeling (Qi et al., Computers in Biology and Medicine, 2024; see
``docs/methods.md``).
:mod:`nnunet_ssl.methods.gmim_maskers` puts these pieces and :mod:`nnunet_ssl.methods.block_masks` together.
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
  (default :data:`MIN_CELL_SIZE` = 4) voxels along the smallest spatial axis, i.e. when ``G > min(spatial) //
  min_cell_size``. This keeps small 3d patches and anisotropic / 2d patches meaningful: a cell holds at least two
  masking units of 2 voxels per axis (:mod:`~nnunet_ssl.methods.block_masks`), and its entropy comes from at
  least 64 voxels in 3d (the reference's cells at G=16 of a 96-voxel crop are 6 voxels wide; a 40x56x40
  hippocampus patch would get 2-voxel cells at G=16). If every candidate is dropped, ``G = max(1, min(spatial) //
  min_cell_size)`` is used.
* Std (**choice**): population standard deviation (``unbiased=False``) over the ``K`` cells; if ``mean(H) <= 1e-12``
  the score is 0 (ties between candidates go to the first candidate in ``candidates`` order).
* Ratios (**paper**): cell ``k`` gets ``base * linspace(1 - s, 1 + s, K)[rank(H_k)]`` (ascending rank: the highest
  entropy cell gets the highest ratio), ``base = 0.5``, ``s = 0.3``, clipped to ``[0, 1]``. **choice**: cells with
  tied entropy (e.g. several perfectly flat cells) share the *average* of the ratios of the ranks they occupy, so
  identical cells are treated identically and the mean ratio stays ``base``. With ``K == 1`` the ratio is ``base``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

MIN_CELL_SIZE = 4  # voxels per axis a grid cell must have on the smallest axis (see the module doc)

__all__ = [
    "cell_bounds",
    "cell_index_map",
    "cell_entropies",
    "grid_scores",
    "choose_grid",
    "valid_grids",
    "argmax_grids",
    "adaptive_cell_ratios",
]

_EPS = 1e-12


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
                min_cell_size: int = MIN_CELL_SIZE) -> List[int]:
    """Candidates with cells at least ``min_cell_size`` voxels wide on the smallest axis (see module doc)."""
    limit = max(1, min(int(s) for s in shape_spatial) // max(1, int(min_cell_size)))
    kept = [int(g) for g in candidates if 1 <= int(g) <= limit]
    return kept if kept else [limit]


def grid_scores(x: torch.Tensor, candidates: Sequence[int] = (4, 8, 16), bins: int = 32, exponent: float = 0.1,
                min_cell_size: int = MIN_CELL_SIZE) -> Tuple[Dict[int, torch.Tensor], Dict[int, torch.Tensor]]:
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
                min_cell_size: int = MIN_CELL_SIZE) -> Tuple[List[int], Dict[int, torch.Tensor]]:
    """Per sample, the candidate ``G`` maximising ``G**-exponent * std(H) / mean(H)``.

    Candidates with cells narrower than ``min_cell_size`` voxels on the smallest axis are dropped (see module doc).
    Returns ``(grids, scores)``: a list of ``B`` ints and a dict ``G -> (B,)`` scores of the valid candidates.
    Ties go to the earliest candidate.
    """
    scores, _ = grid_scores(x, candidates, bins, exponent, min_cell_size)
    return argmax_grids(scores, x.shape[0]), scores


def argmax_grids(scores: Dict[int, torch.Tensor], batch: int) -> List[int]:
    """Per sample, the grid with the highest score in ``scores`` (``G -> (B,)``); ties go to the earliest ``G``."""
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
