"""GMIM cross-correlation loss (Barlow-Twins style) between online and target projections.

Paper: Qi et al., GMIM (Grid Masked Image Modeling), Computers in Biology and Medicine, 2024. GMIM adds a Barlow-Twins-like term
``L_cc`` between the online branch's and the stop-gradient target branch's bottleneck projections, computed per
sample over its tokens: ``C = Zx^T Zy / n``, ``L = sum_i (1 - C_ii)^2 + lambda * sum_{i!=j} C_ij^2`` with
``lambda = 0.005`` (**paper**). Barlow Twins itself: Zbontar, Jing, Misra, LeCun, Deny, ICML 2021.

Inputs and standardisation:

* ``(B, N, D)``: per sample ``N`` tokens/voxels of ``D`` features; or ``(B, D, X, Y[, Z])``: a dense projection,
  flattened to ``(B, N, D)`` with ``N = X*Y[*Z]``. Each feature is standardised along ``N`` within its sample
  (mean 0, biased variance 1: ``(z - mean) / sqrt(var + eps)``, the BatchNorm convention), then
  ``C_b = Za_b^T Zb_b / N`` (``D x D``) and the loss is the mean over the batch of the per-sample losses.
* ``(B, D)`` or ``(B, 1, D)``, i.e. ``N == 1`` (pooled vectors, e.g. from
  :class:`nnunet_ssl.methods.heads.GlobalProjector`): a single vector per sample cannot be standardised, so the classic
  Barlow Twins form is used instead: standardise each feature across the batch, ``C = Za^T Zb / B`` and one loss
  for the batch. Needs ``B >= 2`` and is very noisy at nnU-Net's usual batch size of 2; prefer dense inputs.

Inputs are not detached; the target branch's stop-gradient is the caller's job. Computed in float32 with autocast
disabled.

Example::

    loss_cc = CrossCorrelationLoss()(online_projection, target_projection)   # (B, D, X, Y, Z) each
"""
import torch
from torch import nn

__all__ = ["CrossCorrelationLoss"]


def _as_tokens(z: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``(B, N, D)``; ``N == 1`` means pooled vectors."""
    if z.dim() == 2:
        return z.unsqueeze(1)
    if z.dim() == 3:
        return z
    if z.dim() in (4, 5):
        return z.flatten(2).transpose(1, 2)
    raise ValueError(
        f"{name} must be (B, D), (B, N, D) or (B, D, X, Y[, Z]); got shape {tuple(z.shape)}"
    )


class CrossCorrelationLoss(nn.Module):
    """``sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i!=j} C_ij^2`` on the standardised cross-correlation matrix.

    ``forward(za, zb)`` with matching shapes ``(B, N, D)``, ``(B, D, *spatial)`` or pooled ``(B, D)`` (see the
    module docstring for how each is standardised). Defaults: ``lambda_offdiag = 0.005`` (**paper**, GMIM and
    Barlow Twins), ``eps = 1e-5`` added to the variance (**choice**, BatchNorm's default).
    """

    def __init__(self, lambda_offdiag: float = 0.005, eps: float = 1e-5):
        super().__init__()
        if lambda_offdiag < 0:
            raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.lambda_offdiag = float(lambda_offdiag)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"lambda_offdiag={self.lambda_offdiag}, eps={self.eps}"

    def _standardise(self, z: torch.Tensor, dim: int) -> torch.Tensor:
        mean = z.mean(dim=dim, keepdim=True)
        var = z.var(dim=dim, unbiased=False, keepdim=True)
        return (z - mean) / torch.sqrt(var + self.eps)

    def _from_correlation(self, c: torch.Tensor) -> torch.Tensor:
        """``c``: ``(..., D, D)`` -> ``(...)`` loss."""
        d = c.shape[-1]
        diag = c.diagonal(dim1=-2, dim2=-1)
        on_diag = (1.0 - diag).pow(2).sum(dim=-1)
        off_mask = ~torch.eye(d, dtype=torch.bool, device=c.device)
        off_diag = (c.pow(2) * off_mask).sum(dim=(-2, -1))
        return on_diag + self.lambda_offdiag * off_diag

    def forward(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        if za.shape != zb.shape:
            raise ValueError(f"za and zb must have the same shape, got {tuple(za.shape)} and {tuple(zb.shape)}")
        ta, tb = _as_tokens(za, "za"), _as_tokens(zb, "zb")
        batch, n_tokens, _ = ta.shape
        with torch.autocast(device_type=za.device.type, enabled=False):
            ta, tb = ta.float(), tb.float()
            if n_tokens == 1:
                if batch < 2:
                    raise ValueError(
                        "pooled vectors (N == 1) are standardised across the batch (classic Barlow Twins), "
                        f"which needs a batch of at least 2; got shape {tuple(za.shape)}. Pass dense "
                        "(B, D, *spatial) projections instead."
                    )
                va = self._standardise(ta[:, 0], dim=0)  # (B, D)
                vb = self._standardise(tb[:, 0], dim=0)
                return self._from_correlation(va.t() @ vb / batch)
            sa = self._standardise(ta, dim=1)  # (B, N, D)
            sb = self._standardise(tb, dim=1)
            c = torch.bmm(sa.transpose(1, 2), sb) / n_tokens  # (B, D, D)
            return self._from_correlation(c).mean()
