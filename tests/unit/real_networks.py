"""Real nnU-Net networks turned into probes of where their feature cells sit (helpers for the geometry tests).

Networks are built by nnU-Net's own ``get_network_from_plans`` from the ``architecture`` entry of a small plans
dict. :func:`make_linear` then makes one linear, translation-equivariant map of it: norms and nonlinearities
become identities, every convolution gets the same separable, symmetric spatial kernel (averaged over the input
channels, so all channels carry the same map), biases are zero, residual shortcuts that pool or project give zero
(the main path defines the geometry; identity shortcuts stay) and the decoder's transposed convolutions are zero
(decoder stages then only see their skip). Two kernels:

- ``"delta"``: 1 at the kernel centre: the network subsamples its input, cell j of a level holds the input voxel
  at the cell's centre (exact everywhere, no zero-padding effects);
- ``"hat"``: ``[1, 2, 1] / 4`` per axis of a 3-tap kernel: a strided convolution with it reproduces linear
  functions, so the centroid of an impulse's response at any level, computed with the true cell centres, is the
  impulse's position (as long as the response does not reach the zero padding).
"""
import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

# hippocampus 3d_fullres as nnU-Net 2.8.1 plans it (Dataset004, 200 cases): patch 40 x 56 x 40
HIPPOCAMPUS_3D = dict(strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], kernels=[[3, 3, 3]] * 4,
                      features=[32, 64, 128, 256], n_conv=2, patch=(40, 56, 40))


def architecture(arch: str, strides, kernels=None, features=None, n_conv: int = 2) -> dict:
    """The ``architecture`` entry of a plans configuration (as nnU-Net's planners write it)."""
    ndim = len(strides[0])
    n = len(strides)
    kernels = kernels or [[3] * ndim] * n
    features = list(features or [4] * n)
    kwargs = {"n_stages": n, "features_per_stage": features, "conv_op": f"torch.nn.modules.conv.Conv{ndim}d",
              "kernel_sizes": kernels, "strides": strides, "n_conv_per_stage_decoder": [n_conv] * (n - 1),
              "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d",
              "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs["n_conv_per_stage" if arch == PLAIN else "n_blocks_per_stage"] = [n_conv if arch == PLAIN else 1] * n
    return {"network_class_name": arch, "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def build(entry: dict, input_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """nnU-Net's own network builder on a plans ``architecture`` entry."""
    return get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"],
                                  input_channels, num_classes, allow_init=True, deep_supervision=False)


def _taps(k: int, kernel: str) -> torch.Tensor:
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    if kernel == "hat" and k == 3:
        return torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    assert k % 2 == 1, k
    t = torch.zeros(k, dtype=torch.float64)
    t[k // 2] = 1.0
    return t


def _is_norm_or_nonlin(m: nn.Module) -> bool:
    from torch.nn.modules.batchnorm import _NormBase
    return isinstance(m, (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LeakyReLU, nn.ReLU, nn.GELU, nn.ELU, nn.PReLU))


class _Zero(nn.Module):
    def forward(self, x):
        return torch.zeros((), dtype=x.dtype, device=x.device)


@torch.no_grad()
def make_linear(network: nn.Module, kernel: str = "delta") -> nn.Module:
    """Turn a PlainConvUNet / ResidualEncoderUNet into the linear probe described in the module docstring, in
    place (float64); returns it."""
    for parent in list(network.modules()):  # a module can sit under two parents (ConvDropoutNormReLU.all_modules)
        for name, child in list(parent._modules.items()):
            if child is not None and _is_norm_or_nonlin(child):
                setattr(parent, name, nn.Identity())
    for block in list(network.modules()):  # residual shortcuts with pooling / projection contribute nothing
        if isinstance(getattr(block, "skip", None), nn.Module):
            block.skip = _Zero()
    for m in network.modules():
        if not isinstance(m, _ConvNd):
            continue
        if m.bias is not None:
            m.bias.zero_()
        if m.transposed:
            m.weight.zero_()
            continue
        spatial = torch.ones(())
        for k in m.kernel_size:
            spatial = spatial[..., None] * _taps(k, kernel)
        w = spatial.expand(*m.weight.shape) / m.weight.shape[1]
        m.weight.copy_(w)
    return network.double().eval()


def ramp_views(boxes, flips, patch, coefficients) -> torch.Tensor:
    """``(B, 1, *patch)`` float64 network inputs: each view voxel holds ``coefficients . c`` where ``c`` is the
    case coordinate of the voxel's centre (view geometry of ``nnunet_ssl.methods.views``, flips applied)."""
    from nnunet_ssl.methods.views import view_cell_centres
    a = torch.as_tensor(np.asarray(coefficients, dtype=np.float64))
    maps = [torch.einsum("d,d...->...", a, view_cell_centres(b, f, patch)) for b, f in zip(boxes, flips)]
    return torch.stack(maps)[:, None]
