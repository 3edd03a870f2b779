"""Projection and prediction heads for the SSL objectives (2d and 3d).

* :class:`DenseProjector`: ``1x1 conv -> InstanceNorm (affine) -> LeakyReLU -> 1x1 conv``; keeps the spatial size.
  PGL's local structure-aware projector (Xie et al., arXiv 2011.12640: projector that keeps spatial dims) and
  IDEAL's 1x1-convolution projection head (Basak et al., ICASSP 2023, arXiv 2210.15075: a 1x1 conv instead of an
  MLP so the projection stays dense).
* :class:`DensePredictor`: the same block used as BYOL's predictor on the online branch (Grill et al., NeurIPS 2020;
  PGL).
* :class:`GlobalProjector`: global average pool -> ``Linear -> BatchNorm1d -> ReLU -> Linear``, the Barlow Twins
  projector shape (Zbontar et al., ICML 2021) for a pooled GMIM target (Qi et al., Comput. Biol. Med. 2024).

Layer choices (**choice**): InstanceNorm + LeakyReLU(0.01) in the dense heads, as nnU-Net's own conv blocks use;
the first layer has no bias because a normalisation follows it. Widths are set by the caller (no paper gives them
for nnU-Net backbones). InstanceNorm needs more than one spatial element per map in training mode and BatchNorm1d
more than one sample per batch.
"""
from torch import nn

__all__ = ["conv_for", "DenseProjector", "DensePredictor", "GlobalProjector"]


def _check_ndim(ndim: int) -> int:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3 (number of spatial axes), got {ndim}")
    return ndim


def conv_for(ndim: int) -> type:
    """``nn.Conv2d`` for ``ndim == 2``, ``nn.Conv3d`` for ``ndim == 3``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_ndim(ndim)]


def _instance_norm_for(ndim: int) -> type:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[_check_ndim(ndim)]


class DenseProjector(nn.Module):
    """``(B, in_ch, *spatial) -> (B, out_ch, *spatial)`` by ``1x1 conv -> InstanceNorm -> LeakyReLU -> 1x1 conv``."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, ndim: int):
        super().__init__()
        conv = conv_for(ndim)
        self.ndim = ndim
        self.net = nn.Sequential(
            conv(in_ch, hidden, kernel_size=1, bias=False),
            _instance_norm_for(ndim)(hidden, affine=True),
            nn.LeakyReLU(negative_slope=0.01, inplace=True),
            conv(hidden, out_ch, kernel_size=1, bias=True),
        )

    def forward(self, x):
        if x.dim() != self.ndim + 2:
            raise ValueError(f"{type(self).__name__} built for {self.ndim}d expects (B, C, *spatial) with "
                             f"{self.ndim} spatial axes, got shape {tuple(x.shape)}")
        return self.net(x)


class DensePredictor(DenseProjector):
    """BYOL / PGL predictor on the online branch; same layers as :class:`DenseProjector`, spatial size kept."""


class GlobalProjector(nn.Module):
    """``(B, in_ch, *spatial) -> (B, out_ch)``: global average pool, then ``Linear -> BatchNorm1d -> ReLU ->
    Linear``."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, ndim: int):
        super().__init__()
        self.ndim = _check_ndim(ndim)
        self.mlp = nn.Sequential(
            nn.Linear(in_ch, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_ch, bias=True),
        )

    def forward(self, x):
        if x.dim() != self.ndim + 2:
            raise ValueError(f"GlobalProjector built for {self.ndim}d expects (B, C, *spatial) with {self.ndim} "
                             f"spatial axes, got shape {tuple(x.shape)}")
        return self.mlp(x.flatten(2).mean(dim=2))
