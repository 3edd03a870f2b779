"""GMIM masking for CNN inputs: entropy-adaptive grid masks, hierarchical feature masks, fixed-grid MAE masks.

Method: GMIM - Grid Masked Image Modeling (Qi et al., Computers in Biology and Medicine, 2024; see
``docs/methods.md``).
Pure torch, 2d ``(B, C, X, Y)`` and 3d ``(B, C, X, Y, Z)`` tensors; no nnunetv2 import.

The grid, its cells, their entropies and ratios: :mod:`nnunet_ssl.methods.adaptive_grid`; the block units and the
exact count of masked units per cell: :mod:`nnunet_ssl.methods.block_masks` (each states what follows the paper and
what is our choice). Here:

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

from nnunet_ssl.methods.adaptive_grid import (MIN_CELL_SIZE, adaptive_cell_ratios, argmax_grids, cell_entropies,
                                              grid_scores, valid_grids)
from nnunet_ssl.methods.block_masks import MIN_UNIT, grid_block_mask

__all__ = ["MaskResult", "GMIMMasker", "HierarchicalFeatureMasker"]


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
    (bins 32, ``min_cell_size`` 4, unit = cell // 4 but at least 2 voxels where the cell allows; see
    :mod:`~nnunet_ssl.methods.adaptive_grid` and :mod:`~nnunet_ssl.methods.block_masks`). ``fixed_grid``: use this
    ``G`` for every sample (clamped to the valid range of the patch); ``fixed_ratio``: the same ratio in every cell
    (no entropy ranking). ``GMIMMasker.mae()`` = fixed grid 8, fixed ratio 0.75.

    ``masker(x, generator=None) -> (masked_x, mask)``; ``masker.mask(x, generator=None) -> MaskResult``.
    """
    candidates: Tuple[int, ...] = (4, 8, 16)
    exponent: float = 0.1
    base_ratio: float = 0.5
    spread: float = 0.3
    bins: int = 32
    min_cell_size: int = MIN_CELL_SIZE
    unit_divisor: int = 4
    min_unit: int = MIN_UNIT
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
        return argmax_grids(scores, x.shape[0]), scores, ents

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
                                   device=x.device, unit_divisor=self.unit_divisor, min_unit=self.min_unit)
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
