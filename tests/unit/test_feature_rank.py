"""Effective rank of encoder features (nnunet_ssl.weights.feature_rank)."""
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ssl.weights.feature_rank import effective_rank, encoder_effective_ranks


def test_effective_rank_counts_the_directions_the_channels_use():
    torch.manual_seed(0)
    independent = torch.randn(4, 8, 16, 16)
    assert 7.0 < effective_rank(independent) <= 8.0
    one_signal = torch.randn(4, 1, 16, 16) * torch.arange(1, 9.0).view(1, 8, 1, 1)  # every channel a multiple
    assert abs(effective_rank(one_signal) - 1.0) < 1e-6
    a, b = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    two = torch.cat([a.expand(4, 4, 16, 16), b.expand(4, 4, 16, 16)], dim=1)  # two signals of equal energy
    assert 1.9 < effective_rank(two) < 2.0 + 1e-6
    assert effective_rank(torch.ones(2, 3, 4, 4)) == 0.0


def test_encoder_effective_ranks_one_per_stage_and_collapse_is_seen():
    torch.manual_seed(0)
    net = PlainConvUNet(1, 3, [8, 16, 16], nn.Conv2d, 3, [1, 2, 2], 2, 2, 2, True, nn.InstanceNorm2d,
                        {"affine": True}, nonlin=nn.LeakyReLU)
    x = torch.randn(4, 1, 32, 32)
    ranks = encoder_effective_ranks(net, x)
    assert [c for _, c in ranks] == [8, 16, 16] and all(r > 2.0 for r, _ in ranks)
    with torch.no_grad():  # every filter of the first conv the same: stage 0 carries one signal
        w = net.encoder.stages[0][0].convs[0].conv.weight
        w.copy_(w[:1].expand_as(w))
        net.encoder.stages[0][0].convs[1].conv.weight.zero_()
    assert encoder_effective_ranks(net, x)[0][0] < 1.5
