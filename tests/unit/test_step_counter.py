"""One global step counter for every pre-training step path (issue 20, item 4).

``ReFsTrainer.train_step`` does not call the SSL base's ``train_step``; the per-step EMA schedule of PGL/IDEAL
must advance at every ReFs step all the same (before the fix it changed once per epoch).
"""
import pytest

from nnunet_ssl.methods.teachers import cosine_momentum
from test_refs_randomness import refs_env, refs_trainer  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, ITERS = 2, 4


def _momenta_of_an_epoch(trainer, batch, monkeypatch):
    """Run one epoch of ``ITERS`` steps; return the logged momenta and those the teacher updates used."""
    used = []
    teacher = trainer.ssl_modules["target_network"]
    update = teacher.update

    def recording(online, momentum):
        used.append(momentum)
        return update(online, momentum)

    monkeypatch.setattr(teacher, "update", recording)
    trainer.on_train_epoch_start()
    logged = [trainer.train_step(batch)["ema_momentum"] for _ in range(ITERS)]
    return logged, used


@pytest.mark.parametrize("cls_name", ["ReFsTrainer_PGL", "ReFsTrainer_PGL_cosine", "PGLTrainer"])
def test_ema_momentum_follows_the_per_step_schedule(refs_env, cls_name):
    trainer, batch = refs_trainer(refs_env, cls_name, f"num_epochs={EPOCHS},num_iterations_per_epoch={ITERS}")
    trainer.current_epoch = 1  # the second (last) epoch: global steps 4..7 of 8
    logged, used = _momenta_of_an_epoch(trainer, batch, refs_env.mp)
    expected = [cosine_momentum(ITERS + i, EPOCHS * ITERS, 0.99, 1.0) for i in range(ITERS)]
    assert logged == pytest.approx(expected, abs=1e-12)
    assert used == pytest.approx(expected, abs=1e-12)
    assert all(a < b for a, b in zip(used, used[1:])), "the momentum must change at every step"
    assert trainer.global_step() == EPOCHS * ITERS


def test_refs_cosine_every_reads_the_same_counter(refs_env):
    """``cosine_every=2``: the gradient cosine is measured at steps 0 and 2 of every epoch."""
    import math
    trainer, batch = refs_trainer(refs_env, "ReFsTrainer", "cosine_every=2,num_iterations_per_epoch=3")
    for epoch in range(2):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.global_step() == epoch * 3
        measured = [not math.isnan(trainer.train_step(batch)["grad_cosine"]) for _ in range(3)]
        assert measured == [True, False, True]
        assert trainer.global_step() == epoch * 3 + 3
