"""Dense (voxel-level) InfoNCE between two aligned views, with sampled negatives (IDEAL pre-training).

Paper: Basak, Gupta, Jaiswal, Yin, Ha, "IDEAL: Improved DEnse locAL Contrastive Learning for Semi-Supervised
Medical Image Segmentation", ICASSP 2023, arXiv 2210.15075: dense contrastive pre-training on two views with a
1x1-convolution projection head. The exact form below is the project's reading (``METHODS.md``, **choice**):

* ``q`` (query branch) and ``k`` (key branch) are feature maps of the two views resampled onto the grid of their
  shared region (``nnunet_ssl.methods.alignment``), so ``q[b, :, v]`` and ``k[b, :, v]`` show the same anatomy (positive
  pair). Both are L2-normalised along the channel axis.
* Per sample, up to ``num_samples`` valid voxel positions are drawn at random without replacement (all of them if
  there are fewer). For anchor ``i`` the positive is ``k_i``; the negatives are the other sampled voxels of BOTH
  views, ``k_j`` and ``q_j`` for ``j != i``, except the excluded ones (next point). Memory is
  ``O(num_samples^2)`` per sample (``O(num_samples^2 * B)`` with cross-case negatives).
* Exclusion of near-copies (``negative_exclusion_radius`` r, **choice**): the aligned maps are interpolations of
  coarser feature maps, so cells closer together than one feature cell mix the same features and are near-copies
  of the anchor and of its positive. A negative ``j`` is dropped when it belongs to the same case as the anchor and
  ``|pos_i - pos_j| < r`` (Euclidean distance of the cells' coordinates ``coords``; a relative tolerance of 1e-6
  keeps a cell lying exactly at distance r, i.e. the next, distinct feature cell). ``coords`` are the aligned
  cells' case voxel coordinates (the IDEAL trainer passes them, with r = one feature cell of the level by
  default); without ``coords`` the grid's own cell indices are used (r in aligned cells). ``r = 0`` (this module's
  default) excludes nothing: the previous behaviour, bit for bit.
* Cross-case negatives (``cross_case_negatives``, **choice**, off by default): the sampled voxels (both views) of
  the other samples of the batch are negatives as well. Samples with the same ``case_ids`` entry (nnU-Net draws
  cases with replacement, so a batch may hold one case twice) share a coordinate frame and the radius applies
  between them.
* ``loss_i = -log( e^{q_i.k_i/t} / (e^{q_i.k_i/t} + sum_{j in N_i} e^{q_i.k_j/t} + sum_{j in N_i} e^{q_i.q_j/t}) )``,
  computed with ``logsumexp``; the result is the mean over all anchors of all samples. Anchors left without any
  negative (e.g. a sample with fewer than two valid voxels) are skipped.

Defaults: temperature 0.1 (**choice**, METHODS.md), ``num_samples`` 1024 (**choice**: bounds memory to two
1024 x 1024 similarity matrices per sample).

The key branch is usually an EMA teacher; stop-gradient on ``k`` is the caller's job (this module does not
detach it). The loss is not symmetrised; call it twice with swapped views for a symmetric version.

Example::

    loss_fn = DenseInfoNCELoss()
    loss = loss_fn(q_aligned, k_aligned.detach(), valid=overlap_mask, coords=cell_centres, radius=feature_cell)
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ssl.methods.objectives.local_consistency import spatial_weights

__all__ = ["DenseInfoNCELoss", "exclusion_mask"]

# a candidate at exactly the radius (the next feature cell, up to rounding) is kept
_RADIUS_RTOL = 1e-6

RadiusLike = Union[float, torch.Tensor]


def exclusion_mask(anchors: torch.Tensor, candidates: torch.Tensor, radius: RadiusLike) -> torch.Tensor:
    """``(n_a, n_c)`` bool, True where candidate ``j`` lies closer than ``radius`` to anchor ``i``.

    ``anchors`` ``(n_a, ndim)``, ``candidates`` ``(n_c, ndim)`` (same coordinate frame), ``radius`` a float or an
    ``(n_a,)`` tensor. Euclidean distance in float64; a candidate at the radius (relative tolerance 1e-6) is kept,
    so radius 0 excludes nothing.
    """
    r = torch.as_tensor(radius, dtype=torch.float64, device=anchors.device)
    r = r.expand(anchors.shape[0]) if r.dim() == 0 else r.reshape(-1)
    dist = torch.cdist(anchors.to(torch.float64), candidates.to(device=anchors.device, dtype=torch.float64))
    return dist < (r * (1.0 - _RADIUS_RTOL)).unsqueeze(1)


def _cell_indices(like: torch.Tensor) -> torch.Tensor:
    """``(B, ndim, *spatial)`` float64 cell indices of the grid of ``like`` (the coordinates without ``coords``)."""
    axes = [torch.arange(s, dtype=torch.float64, device=like.device) for s in like.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(like.shape[0], *grid.shape)


class DenseInfoNCELoss(nn.Module):
    """Voxel-level InfoNCE; positives are corresponding voxels, negatives other sampled voxels of both views.

    ``__init__(temperature=0.1, num_samples=1024, negative_exclusion_radius=0.0, cross_case_negatives=False)``.

    ``forward(q, k, valid=None, generator=None, coords=None, radius=None, case_ids=None)``: ``q``, ``k``
    ``(B, C, *spatial)`` (2d or 3d), ``valid`` optional bool/float mask ``(B, 1, *spatial)`` or ``(B, *spatial)``
    (non-zero = usable voxel), ``generator`` an optional ``torch.Generator`` for the voxel sampling (reproducible
    tests), ``coords`` optional ``(B, ndim, *spatial)`` coordinates of the cells (case voxel coordinates of the
    aligned grid), ``radius`` the exclusion radius in the units of ``coords`` (a float or one value per sample
    ``(B,)``; None = ``negative_exclusion_radius``), ``case_ids`` optional ``(B,)`` case identifiers (ints; None =
    every sample its own case). Returns a scalar; 0 with a zero gradient path if no anchor has a negative.
    Computed in float32 (distances in float64) with autocast disabled.
    """

    def __init__(self, temperature: float = 0.1, num_samples: int = 1024, negative_exclusion_radius: float = 0.0,
                 cross_case_negatives: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(num_samples) < 2:
            raise ValueError(f"num_samples must be >= 2 (one positive and at least one negative), got {num_samples}")
        if not float(negative_exclusion_radius) >= 0:
            raise ValueError(f"negative_exclusion_radius must be >= 0, got {negative_exclusion_radius}")
        self.temperature = float(temperature)
        self.num_samples = int(num_samples)
        self.negative_exclusion_radius = float(negative_exclusion_radius)
        self.cross_case_negatives = bool(cross_case_negatives)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, num_samples={self.num_samples}, "
                f"negative_exclusion_radius={self.negative_exclusion_radius}, "
                f"cross_case_negatives={self.cross_case_negatives}")

    def _positions(self, mask_row: Optional[torch.Tensor], n_vox: int, device, generator) -> torch.Tensor:
        if mask_row is None:
            idx = torch.arange(n_vox, device=device)
        else:
            idx = torch.nonzero(mask_row, as_tuple=False).flatten()
        n = idx.numel()
        if n > self.num_samples:
            perm_device = generator.device if generator is not None else idx.device
            perm = torch.randperm(n, generator=generator, device=perm_device)[: self.num_samples]
            idx = idx[perm.to(idx.device)]
        return idx

    def _radii(self, radius: Optional[RadiusLike], batch: int) -> List[float]:
        r = self.negative_exclusion_radius if radius is None else radius
        r = torch.as_tensor(r, dtype=torch.float64).detach().cpu().reshape(-1)
        if r.numel() == 1:
            r = r.expand(batch)
        if r.numel() != batch or not bool((r >= 0).all()):
            raise ValueError(f"radius must be one value >= 0 or one per sample ({batch}), got {radius}")
        return [float(v) for v in r]

    @staticmethod
    def _case_ids(case_ids: Optional[Sequence[int]], batch: int) -> List[int]:
        if case_ids is None:
            return list(range(batch))
        ids = [int(i) for i in torch.as_tensor(case_ids).reshape(-1).tolist()]
        if len(ids) != batch:
            raise ValueError(f"case_ids has {len(ids)} entries for a batch of {batch}")
        return ids

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        coords: Optional[torch.Tensor] = None,
        radius: Optional[RadiusLike] = None,
        case_ids: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        if q.shape != k.shape:
            raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
        if q.dim() not in (4, 5):
            raise ValueError(f"q and k must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(q.shape)}")
        batch = q.shape[0]
        if coords is not None and tuple(coords.shape) != (batch, q.dim() - 2, *q.shape[2:]):
            raise ValueError(f"coords must be (B, ndim, *spatial) = {(batch, q.dim() - 2, *q.shape[2:])}, got "
                             f"{tuple(coords.shape)}")
        radii = self._radii(radius, batch)
        ids = self._case_ids(case_ids, batch)
        mask = None if valid is None else (spatial_weights(valid, q).flatten(1) > 0)  # (B, N)
        pos = None
        if any(r > 0 for r in radii):
            pos = (_cell_indices(q) if coords is None else coords).to(device=q.device, dtype=torch.float64).flatten(2)

        with torch.autocast(device_type=q.device.type, enabled=False):
            qf = F.normalize(q.float().flatten(2), dim=1)  # (B, C, N)
            kf = F.normalize(k.float().flatten(2), dim=1)
            n_vox = qf.shape[2]
            idx = [self._positions(None if mask is None else mask[b], n_vox, q.device, generator)
                   for b in range(batch)]
            qs = [qf[b][:, i].t() for b, i in enumerate(idx)]  # (n_b, C)
            ks = [kf[b][:, i].t() for b, i in enumerate(idx)]
            total = qf.new_zeros(())
            count = 0
            for b in range(batch):
                n = idx[b].numel()
                others = [s for s in range(batch) if s != b and idx[s].numel()] if self.cross_case_negatives else []
                if n == 0 or (n == 1 and not others):
                    continue
                sources = [b] + others  # candidate blocks; the anchor's own sample first
                qk = qs[b] @ torch.cat([ks[s] for s in sources]).t() / self.temperature  # (n, M); [:, :n] diag = +
                qq = qs[b] @ torch.cat([qs[s] for s in sources]).t() / self.temperature
                own = torch.zeros(qk.shape, dtype=torch.bool, device=qk.device)
                own[:, :n] = torch.eye(n, dtype=torch.bool, device=qk.device)  # positive in qk, the anchor in qq
                qq = qq.masked_fill(own, float("-inf"))  # an anchor is not its own negative
                dropped = own
                if radii[b] > 0:
                    near = torch.cat([exclusion_mask(pos[b][:, idx[b]].t(), pos[s][:, idx[s]].t(), radii[b])
                                      if ids[s] == ids[b] else
                                      torch.zeros((n, idx[s].numel()), dtype=torch.bool, device=qk.device)
                                      for s in sources], dim=1)
                    qk = qk.masked_fill(near & ~own, float("-inf"))  # the positive itself stays
                    qq = qq.masked_fill(near, float("-inf"))
                    dropped = dropped | near
                log_denominator = torch.logsumexp(torch.cat([qk, qq], dim=1), dim=1)
                per_anchor = log_denominator - qk[:, :n].diagonal()
                if dropped is own and qk.shape[1] > 1:  # nothing excluded: every anchor has negatives
                    total = total + per_anchor.sum()
                    count += n
                else:
                    has_negative = (~dropped).any(dim=1)
                    total = total + per_anchor[has_negative].sum()
                    count += int(has_negative.sum())
            if count == 0:
                return (q.sum() + k.sum()).float() * 0.0
            return total / count
