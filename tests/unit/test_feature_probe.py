"""The dense linear probe (nnunet_ssl.weights.feature_probe): features, sampling, fit and Dice."""
import math

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_ssl.weights.feature_probe import (LinearProbe, confusion, dense_features, probe_dice, sample_voxels,
                                              total_stride)


def _unet(dim):
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (4, 8, 16), conv, 3, (1, 2, 2), 2, 3, (1, 1), conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=False)


@pytest.mark.parametrize("dim,shape", [(2, (2, 1, 13, 18)), (3, (1, 1, 9, 10, 7))])
def test_dense_features_are_at_the_input_resolution(dim, shape):
    net = _unet(dim)
    assert total_stride(net) == [4] * dim
    x = torch.randn(shape)  # not a multiple of the stride: padded for the network, cropped back
    enc = dense_features(net, x, "encoder")
    dec = dense_features(net, x, "decoder")
    both = dense_features(net, x, "both")
    assert enc.shape == (shape[0], 4 + 8 + 16, *shape[2:])
    assert dec.shape == (shape[0], 4, *shape[2:])
    assert torch.equal(both, torch.cat([enc, dec], 1))
    with pytest.raises(ValueError):
        dense_features(net, x, "bottleneck")


def test_sample_voxels_caps_each_class():
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, :2] = 1  # 20 voxels of class 1, 80 of class 0, no class 2
    feats = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10)
    x, y = sample_voxels(feats, labels, 30, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(y, minlength=3).tolist() == [30, 20, 0]
    assert torch.equal(x[y == 1, 0].sort().values, torch.arange(20, dtype=torch.float32))  # features of those voxels
    assert (x[y == 0, 0] >= 20).all()


def test_probe_separates_informative_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    noise = torch.randn(2, 6, 16, 16, generator=g)
    informative = noise.clone()
    informative[:, 0] += 3.0 * (labels == 1)  # channel 0 says class 1, channel 1 says class 2
    informative[:, 1] += 3.0 * (labels == 2)
    scores = {}
    for name, feats in (("informative", informative), ("noise", noise)):
        x, y = sample_voxels(feats[:1], labels[:1], 200, 3, g)  # fitted on the first image, scored on the second
        probe = LinearProbe(3).fit(x, y)
        pred = probe.predict(feats[1:])
        assert pred.shape == labels[1:].shape
        scores[name] = probe_dice([confusion(pred, labels[1:], 3)])["mean"]
    assert scores["informative"] > 0.85 and scores["noise"] < 0.5


def test_probe_dice_follows_nnunet_conventions():
    pred = torch.tensor([[0, 1, 1, 2]])
    ref = torch.tensor([[0, 1, 2, 2]])
    c = confusion(pred, ref, 3)
    assert c.tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    empty = confusion(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), 3)
    r = probe_dice([c, empty])  # the second case has neither class: left out, not counted as 0 or 1
    assert r["per_class"] == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    assert r["mean"] == pytest.approx(2 / 3)
    assert math.isnan(probe_dice([empty])["mean"])
    assert np.isclose(probe_dice([confusion(ref, ref, 3)])["mean"], 1.0)
