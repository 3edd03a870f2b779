"""ReFs without gradient matching (``matching=none``, ``ReFsTrainer_noMatching``): plain joint training on
``L_ssl + L_ref`` with the same loaders and heads, the gradient cosine still logged."""
import pytest
import torch
from torch import nn

from nnunet_ssl.methods.gradient_matching import flat_grad, gradient_cosine
from test_refs_randomness import refs_env, refs_trainer  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_none_step_is_one_sgd_step_on_the_summed_loss(refs_env):
    trainer, batch = refs_trainer(refs_env, "ReFsTrainer_noMatching")
    assert trainer.matching == "none"
    lr = 0.05
    params = trainer.trainable_parameters()
    trainer.optimizer = torch.optim.SGD(params, lr=lr)  # plain SGD: no momentum, no weight decay
    trainer.grad_clip = 1e9
    ref_batch = next(trainer.dataloader_ref)
    before = [p.detach().clone() for p in params]
    rng = torch.get_rng_state()

    # independent expectation: both losses at the current weights (same masks), one SGD step on their sum
    l_ssl, _ = trainer.ssl_loss(batch, train=True)
    l_ref = trainer.reference_loss(nn.ModuleDict({"net": trainer.network, "ssl": trainer.ssl_modules}), ref_batch)
    grads = torch.autograd.grad(l_ssl + l_ref, params, retain_graph=True, allow_unused=True)
    expected = [p.detach() - lr * g if g is not None else p.detach().clone() for p, g in zip(params, grads)]
    encoder = list(trainer.network.encoder.parameters())
    cosine = gradient_cosine(flat_grad(l_ssl, encoder, retain_graph=True), flat_grad(l_ref, encoder))
    assert all(g is not None for g in grads[:len(encoder)])
    assert any(g is not None and g.abs().max() > 0 for g in grads[len(list(trainer.network.parameters())):]), \
        "the reference head must get a gradient"

    torch.set_rng_state(rng)
    out = trainer.train_step(batch)
    assert out["skipped_steps"] == 0.0
    assert out["ssl_loss"] == pytest.approx(float(l_ssl.detach()), rel=1e-6)
    assert out["ref_loss"] == pytest.approx(float(l_ref.detach()), rel=1e-6)
    assert out["grad_cosine"] == pytest.approx(cosine, abs=1e-5)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)
    assert not torch.equal(params[0].detach(), before[0]), "the encoder must move"


def test_none_is_selectable_by_setting_and_logs_the_cosine_every_k_steps(refs_env):
    import math
    trainer, batch = refs_trainer(refs_env, "ReFsTrainer", "matching=none,cosine_every=2")
    assert trainer.matching == "none"
    trainer.on_train_epoch_start()
    cos = [trainer.train_step(batch)["grad_cosine"] for _ in range(3)]
    assert [not math.isnan(c) for c in cos] == [True, False, True]
    assert all(-1.0 <= c <= 1.0 for c in cos if not math.isnan(c))


def test_unknown_matching_mode_names_all_three(refs_env, capsys):
    with pytest.raises(SystemExit) as e:
        refs_trainer(refs_env, "ReFsTrainer", "matching=fishy")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "matching must be str one of fish, cosine, none" in err
