"""FishGradientMatcher under torch.distributed (gloo, CPU, 2 processes, different data per rank).

A tiny MLP stands in for the encoder + two heads (the matcher is architecture-agnostic; the conv case is covered
in test_gradient_matching.py).

Checks that ranks end with bit-identical parameters (shared params moved by the matcher, heads stepped by an
ordinary optimizer from the matcher's .grad), that the result equals a single-process run on the mean of both
ranks' losses, and that without averaging the ranks would diverge (so the test is not vacuous).
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.methods.gradient_matching import FishGradientMatcher

from gloo_ranks import run_on_gloo_ranks

WORLD = 2
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.ssl_head = nn.Linear(8, 6)
        self.ref_head = nn.Linear(8, 3)

    def forward(self, x, task):
        f = self.encoder(x)
        return self.ssl_head(f) if task == "ssl" else self.ref_head(f)


def _net():
    torch.manual_seed(0)
    return _Net().double()


def _data(rank, step):
    g = torch.Generator().manual_seed(1000 * rank + step)
    x_u = torch.randn(16, 6, generator=g, dtype=torch.float64)
    x_r = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y_r = torch.randint(0, 3, (16,), generator=g)
    return x_u, x_r, y_r


def _ssl(m, d):
    return F.mse_loss(m(d[0], "ssl"), d[0].flip(-1))


def _ref(m, d):
    return F.cross_entropy(m(d[1], "ref"), d[2])


def _shared(net):
    return [n for n, _ in net.named_parameters() if n.startswith("encoder.")]


def _train(net, datas, average=None, order="alternate"):
    """STEPS fish steps; ``datas(step)`` returns the list of batches whose losses are averaged (1 per process)."""
    matcher = FishGradientMatcher(inner_lr=0.05, meta_lr=0.5, order=order, average_across_ranks=average)
    heads = list(net.ssl_head.parameters()) + list(net.ref_head.parameters())
    cosines = []
    for step in range(STEPS):
        ds = datas(step)
        res = matcher.step(net, _shared(net),
                           lambda m: sum(_ssl(m, d) for d in ds) / len(ds),
                           lambda m: sum(_ref(m, d) for d in ds) / len(ds))
        with torch.no_grad():  # plain SGD on the heads from the matcher's .grad (torch.optim is slow to warm up)
            for p in heads:
                p.sub_(0.1 * p.grad)
        cosines.append(res["cosine"])
    return cosines


def _rank(rank):
    net = _net()
    cos = _train(net, lambda step: [_data(rank, step)])
    local = _net()
    _train(local, lambda step: [_data(rank, step)], average=False)
    return {"state": net.state_dict(), "cos": cos, "local": local.state_dict()}


def test_fish_ddp_ranks_stay_identical():
    out = run_on_gloo_ranks(_rank, WORLD, preload=["nnunet_ssl.methods.gradient_matching", __name__])
    s0, s1 = out[0]["state"], out[1]["state"]
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    assert out[0]["cos"] == out[1]["cos"]
    # single process, mean of both ranks' losses: same result (mean of gradients = gradient of mean loss)
    ref = _net()
    ref_cos = _train(ref, lambda step: [_data(r, step) for r in range(WORLD)])
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(s0[k], v, rtol=1e-10, atol=1e-12)
    assert out[0]["cos"] == pytest.approx(ref_cos, abs=1e-10)
    # without averaging, different data per rank -> different parameters
    l0, l1 = out[0]["local"], out[1]["local"]
    assert any(not torch.equal(l0[k], l1[k]) for k in l0 if k.startswith("encoder."))
    init = _net().state_dict()
    assert any(not torch.equal(s0[k], init[k]) for k in s0)
