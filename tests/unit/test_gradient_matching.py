"""Unit tests for nnunet_ssl.methods.gradient_matching (ReFs cosine and fish gradient matching)."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.methods.gradient_matching import (
    FishGradientMatcher,
    cosine_matching_penalty,
    flat_grad,
    gradient_cosine,
)

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    """Tiny conv encoder (smooth activations, so Hessians are well defined) + SSL head + reference head."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, padding=1),
                                     nn.Tanh())
        self.ssl_head = nn.Conv2d(5, 1, 1)
        self.ref_head = nn.Conv2d(5, 3, 1)

    def forward(self, x, task):
        f = self.encoder(x)
        return self.ssl_head(f) if task == "ssl" else self.ref_head(f)


def _setup(seed=0):
    torch.manual_seed(seed)
    net = TinyNet().to(DT)
    g = torch.Generator().manual_seed(seed + 1)
    x_u = torch.randn(2, 1, 8, 8, generator=g, dtype=DT)
    x_r = torch.randn(2, 1, 8, 8, generator=g, dtype=DT)
    y_r = torch.randint(0, 3, (2, 8, 8), generator=g)
    return net, (x_u, x_r, y_r)


def _loss_fns(data):
    x_u, x_r, y_r = data

    def ssl(m):
        return F.mse_loss(m(x_u, "ssl"), x_u.flip(-1))

    def ref(m):
        return F.cross_entropy(m(x_r, "ref"), y_r)

    return ssl, ref


def _shared_names(net):
    return [n for n, _ in net.named_parameters() if n.startswith("encoder.")]


# -------------------------------------------------- independent reference: hand-written functional net + autograd
def _unpack(flat, net):
    out, i = {}, 0
    for n, p in net.named_parameters():
        out[n] = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _functional_loss(task, flat_all, net, data):
    """TinyNet written out with F.conv2d on a flat parameter vector (no nn.Module machinery)."""
    x_u, x_r, y_r = data
    w = _unpack(flat_all, net)
    x = x_u if task == "ssl" else x_r
    f = torch.tanh(F.conv2d(x, w["encoder.0.weight"], w["encoder.0.bias"], padding=1))
    f = torch.tanh(F.conv2d(f, w["encoder.2.weight"], w["encoder.2.bias"], padding=1))
    if task == "ssl":
        return F.mse_loss(F.conv2d(f, w["ssl_head.weight"], w["ssl_head.bias"]), x_u.flip(-1))
    return F.cross_entropy(F.conv2d(f, w["ref_head.weight"], w["ref_head.bias"]), y_r)


def _grad(fun, t, create_graph=False):
    t = t if t.requires_grad else t.detach().requires_grad_(True)
    return torch.autograd.grad(fun(t), t, create_graph=create_graph)[0]


class Funcs:
    """L_ssl, L_ref as functions of the flat encoder vector (heads fixed at their current values)."""

    def __init__(self, net, data):
        self.net, self.data = net, data
        self.all = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        self.n_enc = sum(p.numel() for n, p in net.named_parameters() if n.startswith("encoder."))
        self.theta = self.all[:self.n_enc].clone()  # encoder params come first in named_parameters()

    def L(self, task, enc):
        return _functional_loss(task, torch.cat([enc, self.all[self.n_enc:]]), self.net, self.data)

    def g(self, task, enc=None, create_graph=False):
        return _grad(lambda t: self.L(task, t), self.theta if enc is None else enc, create_graph)

    def hvp(self, task, v):
        """Hessian-vector product by double backward."""
        t = self.theta.clone().requires_grad_(True)
        return torch.autograd.grad(self.g(task, t, create_graph=True) @ v, t)[0]


# ------------------------------------------------------------------------------------------------------- basics
def test_flat_grad_zeros_for_unused_and_cosine():
    net, data = _setup()
    ssl, _ = _loss_fns(data)
    params = list(net.parameters())
    g = flat_grad(ssl(net), params)
    assert g.numel() == sum(p.numel() for p in params)
    n_ref_head = sum(p.numel() for p in net.ref_head.parameters())
    assert torch.all(g[-n_ref_head:] == 0)  # ref head is unused by the SSL loss
    a = torch.tensor([1.0, 0.0, 1.0])
    assert gradient_cosine(a, a) == pytest.approx(1.0)
    assert gradient_cosine(a, -a) == pytest.approx(-1.0)
    assert gradient_cosine(a, torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    assert gradient_cosine(a, torch.zeros(3)) == 0.0


# ------------------------------------------------------------------------------------------------------- cosine
def test_cosine_penalty_gradient_equals_explicit_formula():
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    lam = 0.7
    enc = [p for n, p in net.named_parameters() if n.startswith("encoder.")]
    l_s, l_r = ssl(net), ref(net)
    pen, cos = cosine_matching_penalty(l_s, l_r, enc, lam)
    (l_s + l_r + pen).backward()
    got = {n: p.grad.clone() for n, p in net.named_parameters()}

    # independent: explicit formula lam * (1 - cos(g_s, g_r)) on the hand-written functional net, double backward
    n_enc = sum(p.numel() for n, p in net.named_parameters() if n.startswith("encoder."))

    def terms(flat):
        ls = _functional_loss("ssl", flat, net, data)
        lr = _functional_loss("ref", flat, net, data)
        gs = torch.autograd.grad(ls, flat, create_graph=True)[0][:n_enc]
        gr = torch.autograd.grad(lr, flat, create_graph=True)[0][:n_enc]
        c = (gs @ gr) / (gs.norm() * gr.norm())
        return ls, lr, lam * (1 - c), c

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).requires_grad_(True)
    ls_, lr_, pen_, c_ref = terms(flat)
    ref_grad = _unpack(torch.autograd.grad(ls_ + lr_ + pen_, flat, retain_graph=True)[0], net)
    pen_only = _unpack(torch.autograd.grad(pen_, flat)[0], net)
    assert float(cos) == pytest.approx(float(c_ref.detach()), abs=1e-12)
    for n in got:
        torch.testing.assert_close(got[n], ref_grad[n], rtol=1e-9, atol=1e-12)
    # the penalty's own gradient is not negligible (test is not vacuous), heads included (explicit formula)
    assert max(float(v.abs().max()) for v in pen_only.values()) > 1e-3
    assert float(pen_only["ref_head.weight"].abs().max()) > 0

    # finite-difference spot check of the penalty on one encoder weight
    w = net.encoder[0].weight
    eps = 1e-6

    def pen_value():
        ls, lr = ssl(net), ref(net)
        return float(cosine_matching_penalty(ls, lr, enc, lam)[0].detach())

    with torch.no_grad():
        w[0, 0, 1, 1] += eps
    up = pen_value()
    with torch.no_grad():
        w[0, 0, 1, 1] -= 2 * eps
    down = pen_value()
    with torch.no_grad():
        w[0, 0, 1, 1] += eps
    fd = (up - down) / (2 * eps)
    assert fd == pytest.approx(float(pen_only["encoder.0.weight"][0, 0, 1, 1]), rel=1e-5, abs=1e-9)


# --------------------------------------------------------------------------------------------------------- fish
def _fish_displacement(eta, order, meta_lr=0.5, seed=0):
    net, data = _setup(seed)
    ssl, ref = _loss_fns(data)
    names = _shared_names(net)
    before = torch.cat([p.detach().reshape(-1).clone() for n, p in net.named_parameters() if n in names])
    res = FishGradientMatcher(inner_lr=eta, meta_lr=meta_lr, order=order).step(net, names, ssl, ref)
    after = torch.cat([p.detach().reshape(-1) for n, p in net.named_parameters() if n in names])
    return (after - before) / meta_lr, res


def test_fish_first_order_fixed_order():
    """Statement (1): theta_clone - theta = -eta (g_s + g_r) + eta^2 H_r g_s + O(eta^3)."""
    net, data = _setup()
    fn = Funcs(net, data)
    g_s, g_r = fn.g("ssl"), fn.g("ref")
    hr_gs = fn.hvp("ref", g_s)
    hs_gr = fn.hvp("ssl", g_r)
    errs, naive = [], []
    etas = [0.08, 0.04, 0.02, 0.01]
    for eta in etas:
        d, _ = _fish_displacement(eta, "ssl_first")
        plain = -eta * (g_s + g_r)
        pred = plain + eta ** 2 * hr_gs
        errs.append(float((d - pred).norm() / d.norm()))
        naive.append(float((d - plain).norm() / d.norm()))
        # ref first: the mirrored term
        d2, _ = _fish_displacement(eta, "ref_first")
        assert float((d2 - (plain + eta ** 2 * hs_gr)).norm() / d2.norm()) < 5 * eta ** 2
    # relative error O(eta^2): halving eta divides it by ~4; without the matching term only O(eta)
    for a, b in zip(errs, errs[1:]):
        assert 3.3 < a / b < 4.7, errs
    for a, b in zip(naive, naive[1:]):
        assert 1.7 < a / b < 2.3, naive
    assert errs[-1] < 1e-2 * naive[-1]


def test_fish_first_order_symmetrised_objective():
    """Statement (2): mean over both orders = -eta * grad[L_s + L_r - (eta/2) <g_s, g_r>] + O(eta^3)."""
    net, data = _setup(seed=3)
    fn = Funcs(net, data)
    errs = []
    etas = [0.08, 0.04, 0.02, 0.01]
    for eta in etas:
        alpha = eta / 2

        def objective(t):
            gs = fn.g("ssl", t, create_graph=True)
            gr = fn.g("ref", t, create_graph=True)
            return fn.L("ssl", t) + fn.L("ref", t) - alpha * (gs @ gr)

        pred = -eta * _grad(objective, fn.theta)
        d1, _ = _fish_displacement(eta, "ssl_first", seed=3)
        d2, _ = _fish_displacement(eta, "ref_first", seed=3)
        d = 0.5 * (d1 + d2)
        errs.append(float((d - pred).norm() / d.norm()))
    for a, b in zip(errs, errs[1:]):
        assert 3.3 < a / b < 4.7, errs
    assert errs[-1] < 1e-4


def test_fish_alternate_order_and_meta_lr():
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    m = FishGradientMatcher(inner_lr=0.01, meta_lr=0.5, order="alternate")
    assert m.step(net, _shared_names(net), ssl, ref)["order"] == "ssl_first"
    assert m.step(net, _shared_names(net), ssl, ref)["order"] == "ref_first"
    # meta_lr scales the move linearly
    d_half, _ = _fish_displacement(0.02, "ssl_first", meta_lr=0.5)
    d_one, _ = _fish_displacement(0.02, "ssl_first", meta_lr=1.0)
    torch.testing.assert_close(d_half, d_one)


@pytest.mark.parametrize("measure_cosine", [True, False])
def test_fish_heads_get_own_task_gradient_only(measure_cosine):
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    ref_net = copy.deepcopy(net)
    g_ssl_head = torch.autograd.grad(ssl(ref_net), list(ref_net.ssl_head.parameters()))
    g_ref_head = torch.autograd.grad(ref(ref_net), list(ref_net.ref_head.parameters()))
    heads_before = [p.detach().clone() for p in list(net.ssl_head.parameters()) + list(net.ref_head.parameters())]
    enc_before = [p.detach().clone() for p in net.encoder.parameters()]
    res = FishGradientMatcher(inner_lr=0.05, meta_lr=0.5, measure_cosine=measure_cosine).step(
        net, _shared_names(net), ssl, ref)
    # heads are not moved by the matcher, only given their gradient
    for p, b in zip(list(net.ssl_head.parameters()) + list(net.ref_head.parameters()), heads_before):
        assert torch.equal(p.detach(), b)
    for p, g in zip(net.ssl_head.parameters(), g_ssl_head):
        torch.testing.assert_close(p.grad, g)
    if measure_cosine:
        for p, g in zip(net.ref_head.parameters(), g_ref_head):
            torch.testing.assert_close(p.grad, g)
    else:
        # second task's head gradient comes from the clone pass (encoder at theta - eta g_ssl): close, not equal
        assert res["cosine"] is None
        for p, g in zip(net.ref_head.parameters(), g_ref_head):
            assert float((p.grad - g).norm()) < 0.05 * float(g.norm()) + 1e-12
    # shared params moved directly, their .grad cleared so an optimizer skips them
    for p, b in zip(net.encoder.parameters(), enc_before):
        assert p.grad is None and not torch.equal(p.detach(), b)
    # head gradients are independent of the matching (same for a very different inner_lr)
    net2, _ = _setup()
    FishGradientMatcher(inner_lr=0.5, meta_lr=0.5, measure_cosine=measure_cosine).step(
        net2, _shared_names(net2), ssl_loss_fn=_loss_fns(data)[0], ref_loss_fn=_loss_fns(data)[1])
    for p, q in zip(net.ssl_head.parameters(), net2.ssl_head.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_fish_shared_subset_only():
    """With only the first conv shared, the second conv behaves like a head (sum of task gradients at theta)."""
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    shared = ["encoder.0.weight", "encoder.0.bias"]
    ref_net = copy.deepcopy(net)
    conv2 = list(ref_net.encoder[2].parameters())
    g2 = [a + b for a, b in zip(torch.autograd.grad(ssl(ref_net), conv2), torch.autograd.grad(ref(ref_net), conv2))]
    c2_before = [p.detach().clone() for p in net.encoder[2].parameters()]
    FishGradientMatcher(inner_lr=0.05).step(net, shared, ssl, ref)
    for p, b, g in zip(net.encoder[2].parameters(), c2_before, g2):
        assert torch.equal(p.detach(), b)
        torch.testing.assert_close(p.grad, g)
    assert net.encoder[0].weight.grad is None


def test_fish_returned_cosine_and_losses():
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    fn = Funcs(net, data)
    g_s, g_r = fn.g("ssl"), fn.g("ref")
    expected = float((g_s @ g_r) / (g_s.norm() * g_r.norm()))
    l_s, l_r = float(ssl(net).detach()), float(ref(net).detach())
    res = FishGradientMatcher(inner_lr=0.05).step(net, _shared_names(net), ssl, ref)
    assert res["cosine"] == pytest.approx(expected, abs=1e-12)
    assert res["loss_ssl"] == pytest.approx(l_s) and res["loss_ref"] == pytest.approx(l_r)
    assert not res["skipped"]


def test_fish_grad_mode_equals_direct_mode_through_sgd():
    eta, gamma = 0.03, 0.015
    net_d, data = _setup()
    net_g, _ = _setup()
    ssl, ref = _loss_fns(data)
    FishGradientMatcher(inner_lr=eta, meta_lr=gamma / eta, apply="direct").step(net_d, _shared_names(net_d), ssl,
                                                                                 ref)
    before = [p.detach().clone() for p in net_g.encoder.parameters()]
    FishGradientMatcher(inner_lr=eta, apply="grad").step(net_g, _shared_names(net_g), ssl, ref)
    for p, b in zip(net_g.encoder.parameters(), before):
        assert torch.equal(p.detach(), b) and p.grad is not None
    with torch.no_grad():  # a plain SGD step (what torch.optim.SGD without momentum does)
        for p in net_g.encoder.parameters():
            p.sub_(gamma * p.grad)
    for p, q in zip(net_d.encoder.parameters(), net_g.encoder.parameters()):
        torch.testing.assert_close(p, q)


def test_fish_clone_reused_and_real_module_grads_untouched_by_clone():
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    m = FishGradientMatcher(inner_lr=0.05)
    m.step(net, _shared_names(net), ssl, ref)
    clone = m._clone
    m.step(net, _shared_names(net), ssl, ref)
    assert m._clone is clone
    # after sync + inner steps the clone's heads equal the real heads (only shared params are stepped on the clone)
    for p, q in zip(clone.ref_head.parameters(), net.ref_head.parameters()):
        assert torch.equal(p, q)


def test_fish_skips_non_finite_and_validates_names():
    net, data = _setup()
    ssl, ref = _loss_fns(data)
    before = [p.detach().clone() for p in net.parameters()]
    res = FishGradientMatcher().step(net, _shared_names(net), lambda m: ssl(m) * float("nan"), ref)
    assert res["skipped"]
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p.detach(), b) and p.grad is None
    with pytest.raises(ValueError):
        FishGradientMatcher().step(net, ["encoder.nope"], ssl, ref)
    with pytest.raises(ValueError):
        FishGradientMatcher(order="random")
