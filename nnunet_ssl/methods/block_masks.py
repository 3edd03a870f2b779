"""Random block masks on a grid of cells: exactly ``round(ratio_k * n_units_k)`` masked units in every cell ``k``.

GMIM's masking unit on a CNN (:mod:`nnunet_ssl.methods.gmim_maskers` uses it for input and feature masks); cells
are those of :func:`~nnunet_ssl.methods.adaptive_grid.cell_bounds`.
Pure torch, 2d ``(B, C, X, Y)`` and 3d ``(B, C, X, Y, Z)`` tensors; no nnunetv2 import.

* Masking unit (**choice**, the official code masks Swin tokens of 2x2x2 voxels): inside each cell the unit is an
  axis-aligned voxel block; by default ``unit = max((S // G) // 4, min(MIN_UNIT, S // G), 1)`` voxels per axis
  (about 4 units per axis per cell, i.e. 64 units per cell in 3d, 16 in 2d, but never thinner than the
  reference's 2-voxel token where the cell is that wide: on small patches (hippocampus, 40x56x40) ``(S // G) //
  4`` is 1, and masking single voxels leaves a hole a CNN's first 3x3x3 convolution fills in from its
  neighbours). Units tile each cell from its lower corner; the last unit of a cell may be cut by the
  cell boundary. In each cell exactly ``round(ratio * n_units_in_cell)`` units (Python / torch round-half-to-even)
  are chosen uniformly at random and zeroed (no mask token). Mask convention: float, ``1 = masked``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from nnunet_ssl.methods.adaptive_grid import cell_bounds

__all__ = ["MIN_UNIT", "default_unit", "grid_block_mask"]

IntOrSeq = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------------------- block mask
MIN_UNIT = 2  # voxels per axis: the reference's Swin token (patch size 2)


def default_unit(shape_spatial: Sequence[int], grid: int, divisor: int = 4, min_unit: int = 1) -> Tuple[int, ...]:
    """Default masking unit per axis: ``(size // grid) // divisor`` voxels, at least ``min_unit`` where the cell
    (``size // grid``) is that wide, at least 1."""
    cells = [int(s) // int(grid) for s in shape_spatial]
    return tuple(max(1, c // int(divisor), min(int(min_unit), c)) for c in cells)


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
                    generator: Optional[torch.Generator] = None, device=None, unit_divisor: int = 4,
                    min_unit: int = 1) -> torch.Tensor:
    """Random block mask, exactly ``round(ratio_k * n_units_k)`` masked units in every cell ``k``.

    - ``shape_spatial``: spatial size ``(X, Y[, Z])``.
    - ``grid``: one int for all samples or a sequence of ``B`` ints (different ``G`` per sample).
    - ``cell_ratios``: tensor ``(B, K)`` (same grid for all samples), or a sequence of ``B`` tensors of length
      ``G_b**ndim`` (or scalars: same ratio in every cell). ``B`` is taken from it.
    - ``unit``: ``None`` -> :func:`default_unit` per sample (depends on its ``G``; ``unit_divisor``, ``min_unit``),
      an int (cube), a tuple per axis, or a sequence of ``B`` tuples.
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
            u = default_unit(shape_spatial, g, unit_divisor, min_unit)
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
