"""Unit tests for nnunet_ssl.methods.objectives: every loss against a hand-written formula on small random tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.methods.objectives import (
    CrossCorrelationLoss,
    CrossPseudoSupervisionLoss,
    DenseInfoNCELoss,
    LocalConsistencyLoss,
    MaskedMSELoss,
    symmetric_local_consistency,
)

SPATIAL = {2: (3, 4), 3: (2, 3, 4)}


def _voxels(x):
    """(B, C, *sp) -> list over batch of lists of C-vectors (python floats), voxel order = flatten order."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return [[[float(flat[i, ch, v]) for ch in range(c)] for v in range(flat.shape[2])] for i in range(b)]


def _two_maps(seed, channels, ndim):
    """Seeds torch, then two random (2, channels, *spatial) maps."""
    torch.manual_seed(seed)
    return torch.randn(2, channels, *SPATIAL[ndim]), torch.randn(2, channels, *SPATIAL[ndim])


def _random_mask(ndim, p_false):
    return torch.rand(2, 1, *SPATIAL[ndim]) > p_false


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _unit(a):
    n = math.sqrt(_dot(a, a))
    return [x / n for x in a]


# ---------------------------------------------------------------- local consistency

@pytest.mark.parametrize("ndim", [2, 3])
def test_local_consistency_zero_for_same_direction(ndim):
    torch.manual_seed(0)
    z = torch.randn(2, 5, *SPATIAL[ndim])
    loss = LocalConsistencyLoss()
    assert loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(3.0 * z, z).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert loss(-z, z).item() == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_local_consistency_matches_loop_formula_with_mask(ndim):
    p, z = _two_maps(1, 4, ndim)
    valid = _random_mask(ndim, 0.4)
    pv, zv = _voxels(p), _voxels(z)
    vv = valid.reshape(2, -1)
    terms_all, terms_valid = [], []
    for b in range(2):
        for v in range(len(pv[b])):
            t = 2 - 2 * _dot(_unit(pv[b][v]), _unit(zv[b][v]))
            terms_all.append(t)
            if vv[b, v]:
                terms_valid.append(t)
    loss = LocalConsistencyLoss()
    assert loss(p, z).item() == pytest.approx(sum(terms_all) / len(terms_all), rel=1e-5)
    assert loss(p, z, valid).item() == pytest.approx(sum(terms_valid) / len(terms_valid), rel=1e-5)
    # (B, *sp) and float masks give the same result as (B, 1, *sp) bool
    assert loss(p, z, valid[:, 0]).item() == pytest.approx(loss(p, z, valid).item(), rel=1e-6)
    assert loss(p, z, valid.float()).item() == pytest.approx(loss(p, z, valid).item(), rel=1e-6)


def test_local_consistency_no_valid_voxel_is_zero_with_grad_path():
    p = torch.randn(1, 3, 4, 4, requires_grad=True)
    z = torch.randn(1, 3, 4, 4)
    out = LocalConsistencyLoss()(p, z, torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert torch.count_nonzero(p.grad) == 0


def test_local_consistency_invalid_voxels_get_no_gradient():
    p = torch.randn(1, 3, 4, 4, requires_grad=True)
    z = torch.randn(1, 3, 4, 4)
    valid = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    valid[..., :2, :] = True
    LocalConsistencyLoss()(p, z, valid).backward()
    assert torch.count_nonzero(p.grad[..., 2:, :]) == 0
    assert torch.count_nonzero(p.grad[..., :2, :]) > 0


def test_symmetric_local_consistency_is_mean_of_directions():
    torch.manual_seed(2)
    p1, z2, p2, z1 = (torch.randn(2, 4, 3, 3, 3) for _ in range(4))
    valid = torch.rand(2, 1, 3, 3, 3) > 0.3
    loss = LocalConsistencyLoss()
    expected = 0.5 * (loss(p1, z2, valid) + loss(p2, z1, valid))
    assert symmetric_local_consistency(p1, z2, p2, z1, valid).item() == pytest.approx(expected.item(), rel=1e-6)


def test_local_consistency_rejects_bad_shapes():
    loss = LocalConsistencyLoss()
    with pytest.raises(ValueError):
        loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 5))
    with pytest.raises(ValueError):
        loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.ones(1, 2, 4, 4))


# ---------------------------------------------------------------- dense InfoNCE

def _infonce_loop(q, k, t, valid=None):
    """Direct formula, all valid voxels used, mean over all anchors of all samples."""
    qv, kv = _voxels(q), _voxels(k)
    losses = []
    for b in range(q.shape[0]):
        idx = list(range(len(qv[b])))
        if valid is not None:
            idx = [i for i in idx if bool(valid.reshape(q.shape[0], -1)[b, i])]
        if len(idx) < 2:
            continue
        qs = [_unit(qv[b][i]) for i in idx]
        ks = [_unit(kv[b][i]) for i in idx]
        for i in range(len(idx)):
            pos = math.exp(_dot(qs[i], ks[i]) / t)
            neg = sum(math.exp(_dot(qs[i], ks[j]) / t) for j in range(len(idx)) if j != i)
            neg += sum(math.exp(_dot(qs[i], qs[j]) / t) for j in range(len(idx)) if j != i)
            losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_dense_infonce_matches_loop_formula(ndim, temperature):
    q, k = _two_maps(3, 4, ndim)
    loss = DenseInfoNCELoss(temperature=temperature, num_samples=1000)
    assert loss(q, k).item() == pytest.approx(_infonce_loop(q, k, temperature), rel=1e-5)


def test_dense_infonce_matches_loop_formula_with_mask():
    torch.manual_seed(4)
    q = torch.randn(3, 4, 3, 4)
    k = torch.randn(3, 4, 3, 4)
    valid = torch.rand(3, 1, 3, 4) > 0.5
    valid[2] = False
    valid[2, 0, 0, 0] = True  # one voxel only: no negatives, sample skipped
    loss = DenseInfoNCELoss(temperature=0.1, num_samples=64)
    assert loss(q, k, valid).item() == pytest.approx(_infonce_loop(q, k, 0.1, valid), rel=1e-5)


def test_dense_infonce_falls_when_positives_more_similar():
    torch.manual_seed(5)
    q = torch.randn(2, 8, 4, 4, 4)
    noise = torch.randn_like(q)
    loss = DenseInfoNCELoss(temperature=0.1, num_samples=64)
    values = [loss(q, q + s * noise).item() for s in (10.0, 1.0, 0.3, 0.05)]
    assert values == sorted(values, reverse=True), values
    assert values[-1] < 0.5 * values[0]


def test_dense_infonce_sampling_bounded_and_reproducible():
    torch.manual_seed(6)
    q = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    k = torch.randn(2, 4, 8, 8, 8)
    loss = DenseInfoNCELoss(temperature=0.1, num_samples=16)
    a = loss(q, k, generator=torch.Generator().manual_seed(0))
    b = loss(q, k, generator=torch.Generator().manual_seed(0))
    c = loss(q, k, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()
    assert a.item() != c.item()
    a.backward()
    # only the sampled voxels (at most 16 per sample) receive gradient
    touched = (q.grad.abs().sum(dim=1) > 0).reshape(2, -1).sum(dim=1)
    assert 2 <= int(touched.max()) <= 16


def test_dense_infonce_nothing_valid_is_zero_with_grad_path():
    q = torch.randn(1, 4, 3, 3, requires_grad=True)
    out = DenseInfoNCELoss()(q, torch.randn(1, 4, 3, 3), torch.zeros(1, 3, 3, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert torch.count_nonzero(q.grad) == 0


def test_dense_infonce_gradient_reaches_both_inputs():
    q = torch.randn(1, 4, 3, 3, requires_grad=True)
    k = torch.randn(1, 4, 3, 3, requires_grad=True)
    DenseInfoNCELoss()(q, k).backward()
    assert torch.count_nonzero(q.grad) > 0 and torch.count_nonzero(k.grad) > 0


# ---------------------------------------------------------------- cross-correlation

def _standardise_loop(columns, eps):
    out = []
    for col in columns:
        n = len(col)
        mean = sum(col) / n
        var = sum((x - mean) ** 2 for x in col) / n
        out.append([(x - mean) / math.sqrt(var + eps) for x in col])
    return out  # list over features of lists over samples/tokens


def _cc_loss_loop(a_tokens, b_tokens, lam, eps):
    """a_tokens: list over N of lists over D."""
    n, d = len(a_tokens), len(a_tokens[0])
    sa = _standardise_loop([[a_tokens[t][i] for t in range(n)] for i in range(d)], eps)
    sb = _standardise_loop([[b_tokens[t][i] for t in range(n)] for i in range(d)], eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(sa[i][t] * sb[j][t] for t in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    return total


def test_cross_correlation_tokens_match_loop_formula():
    torch.manual_seed(7)
    za = torch.randn(3, 10, 4)
    zb = 0.5 * za + torch.randn(3, 10, 4)
    lam, eps = 0.005, 1e-5
    expected = sum(_cc_loss_loop(za[b].tolist(), zb[b].tolist(), lam, eps) for b in range(3)) / 3
    got = CrossCorrelationLoss(lambda_offdiag=lam, eps=eps)(za, zb).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # a larger off-diagonal weight changes the value as the formula says
    expected_big = sum(_cc_loss_loop(za[b].tolist(), zb[b].tolist(), 0.3, eps) for b in range(3)) / 3
    assert CrossCorrelationLoss(lambda_offdiag=0.3)(za, zb).item() == pytest.approx(expected_big, rel=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_cross_correlation_dense_input_equals_tokens(ndim):
    za, zb = _two_maps(8, 5, ndim)
    loss = CrossCorrelationLoss()
    tokens_a = za.flatten(2).transpose(1, 2)
    tokens_b = zb.flatten(2).transpose(1, 2)
    assert loss(za, zb).item() == pytest.approx(loss(tokens_a, tokens_b).item(), rel=1e-6)
    expected = sum(_cc_loss_loop(tokens_a[b].tolist(), tokens_b[b].tolist(), 0.005, 1e-5) for b in range(2)) / 2
    assert loss(za, zb).item() == pytest.approx(expected, rel=1e-5)


def test_cross_correlation_pooled_is_classic_barlow_twins():
    torch.manual_seed(9)
    za = torch.randn(6, 4)
    zb = za + 0.3 * torch.randn(6, 4)
    expected = _cc_loss_loop(za.tolist(), zb.tolist(), 0.005, 1e-5)  # tokens = samples of the batch
    loss = CrossCorrelationLoss()
    assert loss(za, zb).item() == pytest.approx(expected, rel=1e-5)
    assert loss(za[:, None], zb[:, None]).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        loss(za[:1], zb[:1])


def test_cross_correlation_identical_decorrelated_inputs_near_zero():
    # orthogonal, zero-mean features: C is (almost) the identity
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    za = h[:, 1:].unsqueeze(0)  # (1, N=4, D=3), each column zero mean, unit variance, mutually orthogonal
    assert CrossCorrelationLoss()(za, za.clone()).item() == pytest.approx(0.0, abs=1e-4)


# ---------------------------------------------------------------- masked MSE

@pytest.mark.parametrize("ndim", [2, 3])
def test_masked_mse_matches_formula(ndim):
    pred, target = _two_maps(10, 3, ndim)
    mask = _random_mask(ndim, 0.5)
    full = mask.expand_as(pred)
    expected = ((pred - target)[full] ** 2).mean()
    assert MaskedMSELoss()(pred, target, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_masked_mse_ignores_visible_units():
    torch.manual_seed(11)
    target = torch.randn(2, 2, 4, 4, 4)
    mask = torch.rand(2, 1, 4, 4, 4) > 0.5
    base = torch.randn(2, 2, 4, 4, 4)
    perturbed = torch.where(mask, base, base + 100.0 * torch.randn_like(base))
    loss = MaskedMSELoss()
    grads, values = [], []
    for p in (base, perturbed):
        p = p.clone().requires_grad_(True)
        out = loss(p, target, mask)
        out.backward()
        values.append(out.item())
        grads.append(p.grad)
    assert values[0] == values[1]
    assert torch.equal(grads[0], grads[1])
    assert torch.count_nonzero(grads[0][~mask.expand_as(base)]) == 0


def test_masked_mse_nothing_masked_is_zero_with_grad_path():
    pred = torch.randn(1, 1, 4, 4, requires_grad=True)
    out = MaskedMSELoss()(pred, torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


# ---------------------------------------------------------------- cross pseudo supervision

@pytest.mark.parametrize("ndim", [2, 3])
def test_cps_gradient_only_from_own_term(ndim):
    la0, lb0 = _two_maps(12, 3, ndim)
    loss = CrossPseudoSupervisionLoss()

    # la requires grad, lb does not: gradient of la == gradient of CE(la, argmax lb)
    la = la0.clone().requires_grad_(True)
    loss(la, lb0).backward()
    la_ref = la0.clone().requires_grad_(True)
    F.cross_entropy(la_ref, lb0.argmax(1)).backward()
    assert torch.allclose(la.grad, la_ref.grad, atol=1e-7)

    # both require grad: still no cross-term through the pseudo-labels
    la = la0.clone().requires_grad_(True)
    lb = lb0.clone().requires_grad_(True)
    value = loss(la, lb)
    value.backward()
    lb_ref = lb0.clone().requires_grad_(True)
    F.cross_entropy(lb_ref, la0.argmax(1)).backward()
    assert torch.allclose(la.grad, la_ref.grad, atol=1e-7)
    assert torch.allclose(lb.grad, lb_ref.grad, atol=1e-7)
    expected = F.cross_entropy(la0, lb0.argmax(1)) + F.cross_entropy(lb0, la0.argmax(1))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cps_confidence_threshold_keeps_confident_voxels_of_other_decoder():
    torch.manual_seed(13)
    la = 3 * torch.randn(2, 4, 5, 5)
    lb = 3 * torch.randn(2, 4, 5, 5)
    thr = 0.7
    conf_a, ya = la.softmax(1).max(1)
    conf_b, yb = lb.softmax(1).max(1)
    assert 0 < (conf_b >= thr).sum() < conf_b.numel()
    ce_a = F.cross_entropy(la, yb, reduction="none")[conf_b >= thr].mean()
    ce_b = F.cross_entropy(lb, ya, reduction="none")[conf_a >= thr].mean()
    got = CrossPseudoSupervisionLoss(confidence_threshold=thr)(la, lb)
    assert got.item() == pytest.approx((ce_a + ce_b).item(), rel=1e-6)
    # nobody is confident enough: zero, still differentiable
    la_g = la.clone().requires_grad_(True)
    out = CrossPseudoSupervisionLoss(confidence_threshold=1.0)(la_g, lb)
    out.backward()
    assert out.item() == 0.0 and torch.count_nonzero(la_g.grad) == 0


def test_cps_dice_adds_nnunet_soft_dice_against_the_kept_pseudo_labels():
    """cps_dice: each term is CE + nnU-Net's soft Dice (no background, batch Dice) against the other decoder's
    argmax on the kept voxels, written out here by hand; gradients still reach only each decoder's own term."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1
    torch.manual_seed(15)
    la, lb = 2 * torch.randn(2, 3, 6, 6), 2 * torch.randn(2, 3, 6, 6)
    thr = 0.6
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5,
                                       ddp=False)

    def by_hand(logits, labels, keep):
        p, k = logits.softmax(1)[:, 1:], keep[:, None].float()
        y = F.one_hot(labels, 3).permute(0, 3, 1, 2)[:, 1:].float()
        inter, pred, gt = (p * y * k).sum((0, 2, 3)), (p * k).sum((0, 2, 3)), (y * k).sum((0, 2, 3))
        ce = F.cross_entropy(logits, labels, reduction="none")[keep].mean()
        return ce - ((2 * inter + 1e-5) / (pred + gt + 1e-5)).mean()

    conf_a, ya = la.softmax(1).max(1)
    conf_b, yb = lb.softmax(1).max(1)
    expected = by_hand(la, yb, conf_b >= thr) + by_hand(lb, ya, conf_a >= thr)
    with_dice = CrossPseudoSupervisionLoss(confidence_threshold=thr, dice=dice)
    assert with_dice(la, lb).item() == pytest.approx(expected.item(), rel=1e-5)
    assert with_dice(la, lb).item() < CrossPseudoSupervisionLoss(confidence_threshold=thr)(la, lb).item()
    la_g = la.clone().requires_grad_(True)
    with_dice(la_g, lb).backward()
    la_ref = la.clone().requires_grad_(True)
    by_hand(la_ref, yb, conf_b >= thr).backward()
    assert torch.allclose(la_g.grad, la_ref.grad, atol=1e-6)


def test_cps_deep_supervision_lists():
    torch.manual_seed(14)
    la = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    lb = [torch.randn_like(t) for t in la]
    loss = CrossPseudoSupervisionLoss()
    assert loss(la, lb).item() == pytest.approx(loss(la[0], lb[0]).item(), rel=1e-7)
    w = [0.6, 0.4, 0.0]
    expected = 0.6 * loss(la[0], lb[0]) + 0.4 * loss(la[1], lb[1])
    assert loss(la, lb, weights=w).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError):
        loss(la, lb, weights=[1.0])
    with pytest.raises(ValueError):
        loss(la, lb[0])
