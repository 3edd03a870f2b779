"""Dense (voxel-level) InfoNCE between two aligned views, with sampled negatives (IDEAL pre-training).

Paper: Basak, Gupta, Jaiswal, Yin, Ha, "IDEAL: Improved DEnse locAL Contrastive Learning for Semi-Supervised
Medical Image Segmentation", ICASSP 2023, arXiv 2210.15075: dense contrastive pre-training on two views with a
1x1-convolution projection head. The exact form below is the project's reading (``METHODS.md``, **choice**):

* ``q`` (query branch) and ``k`` (key branch) are feature maps of the two views resampled onto the grid of their
  shared region (``nnunet_ssl.alignment``), so ``q[b, :, v]`` and ``k[b, :, v]`` show the same anatomy (positive
  pair). Both are L2-normalised along the channel axis.
* Per sample, up to ``num_samples`` valid voxel positions are drawn at random without replacement (all of them if
  there are fewer). For anchor ``i`` the positive is ``k_i``; the negatives are the other sampled voxels of BOTH
  views, ``k_j`` and ``q_j`` for ``j != i``. Memory is ``O(num_samples^2)`` per sample.
* ``loss_i = -log( e^{q_i.k_i/t} / (e^{q_i.k_i/t} + sum_{j!=i} e^{q_i.k_j/t} + sum_{j!=i} e^{q_i.q_j/t}) )``,
  computed with ``logsumexp``; the result is the mean over all anchors of all samples. Samples with fewer than
  two valid voxels have no negatives and are skipped.

Defaults: temperature 0.1 (**choice**, METHODS.md), ``num_samples`` 1024 (**choice**: bounds memory to two
1024 x 1024 similarity matrices per sample).

The key branch is usually an EMA teacher; stop-gradient on ``k`` is the caller's job (this module does not
detach it). The loss is not symmetrised; call it twice with swapped views for a symmetric version.

Example::

    loss_fn = DenseInfoNCELoss()
    loss = loss_fn(q_aligned, k_aligned.detach(), valid=overlap_mask)
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ssl.objectives.local_consistency import spatial_weights

__all__ = ["DenseInfoNCELoss"]


class DenseInfoNCELoss(nn.Module):
    """Voxel-level InfoNCE; positives are corresponding voxels, negatives other sampled voxels of both views.

    ``forward(q, k, valid=None, generator=None)``: ``q``, ``k`` ``(B, C, *spatial)`` (2d or 3d), ``valid`` optional
    bool/float mask ``(B, 1, *spatial)`` or ``(B, *spatial)`` (non-zero = usable voxel), ``generator`` an optional
    ``torch.Generator`` for the voxel sampling (reproducible tests). Returns a scalar; 0 with a zero gradient path
    if no sample has two valid voxels. Computed in float32 with autocast disabled.
    """

    def __init__(self, temperature: float = 0.1, num_samples: int = 1024):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(num_samples) < 2:
            raise ValueError(f"num_samples must be >= 2 (one positive and at least one negative), got {num_samples}")
        self.temperature = float(temperature)
        self.num_samples = int(num_samples)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, num_samples={self.num_samples}"

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

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        if q.shape != k.shape:
            raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
        if q.dim() not in (4, 5):
            raise ValueError(f"q and k must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(q.shape)}")
        batch = q.shape[0]
        mask = None if valid is None else (spatial_weights(valid, q).flatten(1) > 0)  # (B, N)

        with torch.autocast(device_type=q.device.type, enabled=False):
            qf = F.normalize(q.float().flatten(2), dim=1)  # (B, C, N)
            kf = F.normalize(k.float().flatten(2), dim=1)
            n_vox = qf.shape[2]
            total = qf.new_zeros(())
            count = 0
            for b in range(batch):
                idx = self._positions(None if mask is None else mask[b], n_vox, q.device, generator)
                n = idx.numel()
                if n < 2:
                    continue
                qs = qf[b][:, idx].t()  # (n, C)
                ks = kf[b][:, idx].t()
                qk = qs @ ks.t() / self.temperature  # (n, n); diagonal = positives
                qq = qs @ qs.t() / self.temperature
                self_pair = torch.eye(n, dtype=torch.bool, device=qq.device)
                qq = qq.masked_fill(self_pair, float("-inf"))  # an anchor is not its own negative
                log_denominator = torch.logsumexp(torch.cat([qk, qq], dim=1), dim=1)
                total = total + (log_denominator - qk.diagonal()).sum()
                count += n
            if count == 0:
                return (q.sum() + k.sum()).float() * 0.0
            return total / count
