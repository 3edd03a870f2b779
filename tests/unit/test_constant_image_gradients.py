"""GMIM/MAE on constant images (issue 24 item 6): no infinite gradient.


Cause: an all-zero sample (a constant image after nnU-Net's z-score normalisation, or masked to zero) makes every
feature map of nnU-Net's network exactly constant, so each InstanceNorm divides by sqrt(0 + eps): the backward pass
multiplies the reconstruction gradient by 1/sqrt(1e-5) ~ 316 per norm layer, ~316^18 ~ 1e45 through the 18 norm
layers of a 5-stage U-Net: inf in float32, and the step is skipped. A sample without any intensity variation has
nothing to reconstruct: the masker leaves it unmasked, so its reconstruction term and gradient are exactly 0.
"""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ssl.methods.gmim_maskers import GMIMMasker
from nnunet_ssl.methods.objectives.masked_reconstruction import MaskedMSELoss


def _unet():
    torch.manual_seed(0)
    net = PlainConvUNet(1, 5, [4, 8, 16, 32, 64], nn.Conv3d, 3, [1, 2, 2, 2, 2], 2, 1, 2, True, nn.InstanceNorm3d,
                        {"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    with torch.no_grad():  # as after a first optimizer step on zero images: tiny biases (~1e-14 in a real run)
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 1e-30)
    return net


@pytest.mark.parametrize("masker", [GMIMMasker(), GMIMMasker.mae()], ids=["gmim", "mae"])
@pytest.mark.parametrize("value", [0.0, 2.0])
def test_constant_samples_give_finite_gradients(one_thread, masker, value):
    net = _unet()
    x = torch.full((2, 1, 32, 32, 32), value)
    x[1] = torch.randn(1, 32, 32, 32)  # one constant and one textured sample in the batch
    res = masker.mask(x)
    loss = MaskedMSELoss("all")(net(res.masked), x, res.mask)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    # what the trainer's guard checks: the total norm nnU-Net's gradient clipping computes
    assert torch.isfinite(torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0))
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the textured sample still trains


def test_an_all_constant_batch_is_a_zero_gradient_not_an_infinite_one(one_thread):
    net = _unet()
    x = torch.zeros(2, 1, 32, 32, 32)
    res = GMIMMasker().mask(x)
    loss = MaskedMSELoss("all")(net(res.masked), x, res.mask)
    loss.backward()
    assert torch.isfinite(torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0))
    assert float(loss) == 0.0


@pytest.mark.parametrize("constant_view", ["data_v1", "data_v2"])
def test_gmim_cross_correlation_term_gives_finite_gradients_on_constant_samples(one_thread, constant_view):
    """The Siamese cross-correlation term standardises each projection over its voxels: a constant sample's
    projection has zero variance, so its gradient is scaled by 1/sqrt(eps) before it even reaches the InstanceNorms.
    A sample without intensity variation in either view is left out of that term."""
    from nnunet_ssl.methods.masked_modeling import GMIMObjective
    from nnunet_ssl.methods.objective import NetworkInfo
    net = _unet()
    objective = GMIMObjective(net, NetworkInfo.of(net, (32, 32, 32), 1), device=torch.device("cpu"),
                              hierarchical_probability=0.0)
    with torch.no_grad():  # the heads as tiny-biased as the network's (see _unet)
        for name, p in objective.modules.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 1e-30)
    torch.manual_seed(1)
    batch = {"data_v1": torch.randn(2, 1, 32, 32, 32), "data_v2": torch.randn(2, 1, 32, 32, 32)}
    batch[constant_view][0] = 0.0
    loss, curves = objective.loss(batch, net, train=True)
    loss.backward()
    params = list(net.parameters()) + list(objective.modules.parameters())
    assert torch.isfinite(torch.nn.utils.clip_grad_norm_(params, 12.0))
    assert curves["cc_loss"] > 0  # the textured sample still has the term
