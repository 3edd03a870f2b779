"""The mixed-precision paths of ReFs, run on the CPU (issue 20): fish and the cosine mode's double backward under
autocast, the static loss scale and a GradScaler.

On a GPU nnU-Net trains under float16 autocast with a GradScaler. Here the same code runs under
``torch.autocast('cpu', dtype=torch.bfloat16)`` with ``torch.amp.GradScaler('cpu')`` (this torch has a CPU
GradScaler): the loss scale must follow "mixed precision with a scaler is on", not "the device is CUDA".
"""
import contextlib

import pytest
import torch
from torch.nn import functional as F

from nnunet_ssl.methods.gradient_matching import FishGradientMatcher, cosine_matching_penalty
from test_gradient_matching import TinyNet
from test_refs_randomness import refs_env, refs_trainer  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _setup():
    torch.manual_seed(0)
    net = TinyNet()  # float32, as nnU-Net's networks under autocast
    g = torch.Generator().manual_seed(1)
    x_u, x_r = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    y_r = torch.randint(0, 3, (2, 8, 8), generator=g)
    return net, x_u, x_r, y_r


def _loss_fns(x_u, x_r, y_r, autocast: bool):
    def ctx():
        return torch.autocast(**BF16) if autocast else contextlib.nullcontext()

    def ssl(m):
        with ctx():
            return F.mse_loss(m(x_u, "ssl").float(), x_u.flip(-1))

    def ref(m):
        with ctx():
            return F.cross_entropy(m(x_r, "ref").float(), y_r)

    return ssl, ref


def _pseudo_grads(net):
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def _cos(a, b):
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def test_fish_under_bf16_autocast_with_the_static_loss_scale():
    grads = {}
    for autocast, scale in ((False, 1.0), (True, 1.0), (True, 1024.0)):
        net, *data = _setup()
        ssl, ref = _loss_fns(*data, autocast)
        matcher = FishGradientMatcher(inner_lr=0.05, apply="grad", loss_scale=scale)
        res = matcher.step(net, [n for n, _ in net.named_parameters() if n.startswith("encoder.")], ssl, ref)
        assert not res["skipped"] and -1.0 <= res["cosine"] <= 1.0
        grads[autocast, scale] = (_pseudo_grads(net), res["cosine"])
    exact, cos_exact = grads[False, 1.0]
    for key in ((True, 1.0), (True, 1024.0)):
        g, cos = grads[key]
        assert torch.isfinite(g).all()
        assert _cos(g, exact) > 0.999 and float(g.norm() / exact.norm()) == pytest.approx(1.0, rel=0.02)
        assert cos == pytest.approx(cos_exact, abs=0.02)
    # a power-of-two loss scale is undone exactly
    torch.testing.assert_close(grads[True, 1024.0][0], grads[True, 1.0][0], rtol=1e-6, atol=1e-9)


def test_cosine_penalty_double_backward_under_bf16_autocast_and_loss_scale():
    results = {}
    for autocast, scale in ((False, 1.0), (True, 1.0), (True, 1024.0)):
        net, *data = _setup()
        ssl, ref = _loss_fns(*data, autocast)
        l_s, l_r = ssl(net), ref(net)
        penalty, cos = cosine_matching_penalty(l_s, l_r, list(net.encoder.parameters()), 0.5, loss_scale=scale)
        (l_s + l_r + penalty).backward()
        results[autocast, scale] = (_pseudo_grads(net), float(cos), float(penalty.detach()))
    exact = results[False, 1.0]
    for key in ((True, 1.0), (True, 1024.0)):
        g, cos, pen = results[key]
        assert torch.isfinite(g).all()
        assert _cos(g, exact[0]) > 0.999
        assert cos == pytest.approx(exact[1], abs=0.02) and pen == pytest.approx(exact[2], abs=0.01)
    # the loss scale leaves the penalty and its gradient unchanged (cos is scale-invariant)
    torch.testing.assert_close(results[True, 1024.0][0], results[True, 1.0][0], rtol=1e-4, atol=1e-7)
    assert results[True, 1024.0][1] == pytest.approx(results[True, 1.0][1], abs=1e-6)


@pytest.mark.parametrize("cls_name", ["ReFsTrainer", "ReFsTrainer_cosine", "ReFsTrainer_noMatching"])
def test_refs_steps_under_cpu_bf16_autocast_with_a_grad_scaler(refs_env, cls_name):
    """The GPU configuration (autocast + GradScaler + fish loss scale) run on the CPU, every matching mode."""
    trainer, batch = refs_trainer(refs_env, cls_name, "cosine_every=1")
    trainer.grad_scaler = torch.amp.GradScaler("cpu")
    refs_env.mp.setattr(trainer, "autocast_context", lambda: torch.autocast(**BF16))
    dtypes = []
    trainer.network.encoder.register_forward_hook(lambda m, i, o: dtypes.append(o[-1].dtype))
    before = [p.detach().clone() for p in trainer.trainable_parameters()]
    scales = []
    for _ in range(2):
        out = trainer.train_step(batch)
        scales.append(trainer.matcher.loss_scale)
        assert out["skipped_steps"] == 0.0
        for k in ("ssl_loss", "ref_loss", "grad_cosine"):
            assert torch.isfinite(torch.tensor(out[k])), k
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    if cls_name == "ReFsTrainer":
        assert scales == [1024.0, 1024.0]  # mixed precision with a scaler is on: fish scales its losses
    changed = [not torch.equal(a, p.detach()) for a, p in zip(before, trainer.trainable_parameters())]
    assert any(changed[:len(list(trainer.network.encoder.parameters()))])


def test_no_loss_scale_without_a_grad_scaler(refs_env):
    trainer, batch = refs_trainer(refs_env, "ReFsTrainer")
    assert trainer.grad_scaler is None
    trainer.train_step(batch)
    assert trainer.matcher.loss_scale == 1.0
