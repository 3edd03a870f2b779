"""Unit tests for nnunet_ssl.methods.teachers (EMA / stop-gradient targets) and nnunet_ssl.methods.heads."""
import math

import pytest
import torch
from torch import nn

from nnunet_ssl.methods.heads import DensePredictor, DenseProjector, GlobalProjector, conv_for
from nnunet_ssl.methods.teachers import EMATeacher, StopGradientCopy, cosine_momentum, unwrap_module


def _net():
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(), nn.Conv3d(4, 1, 1))


def _perturb_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
        for name, b in module.named_buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
            else:
                b.add_(7)


# ---------------------------------------------------------------- EMA teacher

def test_ema_teacher_is_frozen_copy():
    torch.manual_seed(0)
    online = _net()
    teacher = EMATeacher(online)
    assert all(not p.requires_grad for p in teacher.parameters())
    for (n1, p1), (n2, p2) in zip(online.named_parameters(), teacher.module.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
    x = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad
    (online(x).sum() + out.sum()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in online.parameters())


def test_ema_update_matches_formula_and_copies_buffers():
    torch.manual_seed(1)
    online = _net()
    teacher = EMATeacher(online)
    _perturb_(teacher.module)  # make teacher and online differ
    _perturb_(online)
    before = {n: p.clone() for n, p in teacher.module.named_parameters()}
    m = 0.9
    teacher.update(online, m)
    for n, p in online.named_parameters():
        expected = m * before[n] + (1 - m) * p.detach()
        assert torch.allclose(teacher.module.get_parameter(n), expected, atol=1e-6)
    for n, b in online.named_buffers():
        assert torch.equal(teacher.module.get_buffer(n), b)
    assert all(not p.requires_grad for p in teacher.parameters())
    # momentum 1 leaves the parameters alone
    snapshot = {n: p.clone() for n, p in teacher.module.named_parameters()}
    teacher.update(online, 1.0)
    assert all(torch.equal(snapshot[n], p) for n, p in teacher.module.named_parameters())
    with pytest.raises(ValueError):
        teacher.update(online, 1.5)


def test_ema_update_rejects_other_architecture():
    teacher = EMATeacher(_net())
    with pytest.raises(ValueError):
        teacher.update(nn.Sequential(nn.Conv3d(2, 4, 3)), 0.5)


def test_teacher_state_dict_roundtrip():
    torch.manual_seed(2)
    online = _net()
    teacher = EMATeacher(online)
    _perturb_(teacher.module)
    other = EMATeacher(_net())
    other.load_state_dict(teacher.state_dict())
    for (n, a), b in zip(teacher.state_dict().items(), other.state_dict().values()):
        assert n.startswith("module.") and torch.equal(a, b)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.99)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.995)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)  # clamped
    assert cosine_momentum(0, 10, base=0.9, final=0.99) == pytest.approx(0.9)
    assert cosine_momentum(3, 10, base=0.9, final=0.99) == pytest.approx(
        0.99 - 0.09 * (math.cos(math.pi * 0.3) + 1) / 2)
    values = [cosine_momentum(s, 20) for s in range(21)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        cosine_momentum(0, 0)


def test_stop_gradient_copy_refresh_is_exact():
    torch.manual_seed(3)
    online = _net()
    target = StopGradientCopy(online)
    _perturb_(online)
    target.refresh(online)
    for (n, a), b in zip(online.state_dict().items(), target.module.state_dict().values()):
        assert torch.equal(a, b), n
    assert all(not p.requires_grad for p in target.parameters())


def test_unwrap_module_and_wrapped_online():
    torch.manual_seed(4)
    online = _net()
    compiled = torch.compile(online)  # wrapping only, nothing is compiled until called
    wrapped = nn.DataParallel(compiled)
    assert unwrap_module(compiled) is online
    assert unwrap_module(wrapped) is online
    assert unwrap_module(online) is online
    teacher = EMATeacher(wrapped)
    assert isinstance(teacher.module, nn.Sequential)
    _perturb_(online)
    teacher.update(wrapped, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), teacher.module.parameters()))


# ---------------------------------------------------------------- heads

@pytest.mark.parametrize("ndim,spatial", [(2, (7, 5)), (3, (3, 5, 4))])
@pytest.mark.parametrize("cls", [DenseProjector, DensePredictor])
def test_dense_heads_keep_spatial_size(cls, ndim, spatial):
    head = cls(in_ch=6, hidden=8, out_ch=4, ndim=ndim)
    x = torch.randn(2, 6, *spatial, requires_grad=True)
    y = head(x)
    assert y.shape == (2, 4, *spatial)
    y.sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError):
        head(torch.randn(2, 6, *spatial, 2) if ndim == 2 else torch.randn(2, 6, 3, 3))


def test_dense_projector_is_pointwise():
    # dense heads only mix channels (1x1 kernels); InstanceNorm with learnable affine as in nnU-Net's blocks
    head = DenseProjector(3, 5, 2, ndim=3)
    assert all(m.kernel_size == (1, 1, 1) for m in head.modules() if isinstance(m, nn.Conv3d))
    assert any(isinstance(m, nn.InstanceNorm3d) and m.affine for m in head.modules())


@pytest.mark.parametrize("ndim,spatial", [(2, (6, 6)), (3, (4, 4, 2))])
def test_global_projector_shape(ndim, spatial):
    head = GlobalProjector(in_ch=6, hidden=16, out_ch=8, ndim=ndim)
    assert head(torch.randn(3, 6, *spatial)).shape == (3, 8)


def test_conv_for():
    assert conv_for(2) is nn.Conv2d and conv_for(3) is nn.Conv3d
    with pytest.raises(ValueError):
        conv_for(1)
