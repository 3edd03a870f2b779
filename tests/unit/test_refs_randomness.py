"""ReFs: every SSL call of one step draws the same random numbers, and the NEXT step draws new ones - on whatever
generator the draws use (issue 20, item 1).

On a GPU, MAE/GMIM masks and IDEAL's voxel samples are drawn on the CUDA generator, not on the CPU one. A CPU-only
machine has no CUDA generator, so the tests stand a separate ``torch.Generator`` in for it: the masks are drawn
from it (as ``torch.rand(..., device='cuda')`` would draw from CUDA's) and the trainer is told that it is its
device generator (:meth:`ReFsTrainer.random_generators`). A trainer that saves and restores that generator around
the replays but never moves it forward draws the same masks at every step.

Also home of the tiny ReFs set-up (``refs_env`` / :func:`refs_trainer`) the other ReFs unit tests import.
"""
import itertools
import types

import pytest
import torch

from tiny_nnunet_data import make_trainer, write_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------- tiny ReFs set-up
@pytest.fixture
def refs_env(tmp_path, monkeypatch):
    """nnU-Net folders in tmp: an unlabeled dataset (950) and a labeled reference (951) with the same tiny plans."""
    pre, res = tmp_path / "pre", tmp_path / "res"
    pre.mkdir()
    res.mkdir()
    for k, v in (("nnUNet_preprocessed", pre), ("nnUNet_results", res), ("nnUNet_raw", tmp_path / "raw"),
                 ("nnUNet_n_proc_DA", "0"), ("nnUNet_compile", "0"),
                 ("NNUNET_SSL_REFERENCE_DATASET", "Dataset951_Ref")):
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("NNUNET_SSL_SETTINGS", raising=False)
    plans, dataset_json, _, _ = write_tiny_dataset(pre, labeled=False, n_cases=4, n_val=1)
    write_tiny_dataset(pre, dataset_name="Dataset951_Ref", n_cases=3, n_val=1, seed=1)
    return types.SimpleNamespace(plans=plans, dataset_json=dataset_json, mp=monkeypatch)


def refs_trainer(env, cls_name: str, settings: str = ""):
    """An initialised trainer (CPU) of the index, with its loaders; for ReFs ``next(trainer.dataloader_ref)``
    always returns the same reference batch. Returns ``(trainer, unlabeled_batch)``."""
    import nnunet_ssl_trainers.index as index
    if settings:
        env.mp.setenv("NNUNET_SSL_SETTINGS", settings)
    trainer = make_trainer(getattr(index, cls_name), env.plans, env.dataset_json)
    trainer.initialize()
    env.mp.delenv("NNUNET_SSL_SETTINGS", raising=False)
    dl_tr, _ = trainer.get_dataloaders()
    torch.manual_seed(0)
    batch = next(dl_tr)
    if getattr(trainer, "dataloader_ref", None) is not None:
        trainer.dataloader_ref = itertools.repeat(next(trainer.dataloader_ref))
    return trainer, batch


# ----------------------------------------------------------------------------------------- the tests
def _record_masks(trainer, monkeypatch, generator=None):
    """Every mask the MAE objective draws, in call order; with ``generator`` the masks are drawn from it (as masks
    of CUDA tensors are drawn from CUDA's generator), else from the CPU generator."""
    masks = []
    mask = trainer.objective.masker.mask

    def recording(x, gen=None):
        res = mask(x, gen if gen is not None else generator)
        masks.append(res.mask.detach().clone())
        return res

    monkeypatch.setattr(trainer.objective.masker, "mask", recording)
    return masks


@pytest.mark.parametrize("where", ["device_generator", "cpu_generator"])
@pytest.mark.parametrize("cls_name", ["ReFsTrainer", "ReFsTrainer_cosine"])
def test_consecutive_steps_draw_new_masks_and_replays_within_a_step_draw_the_same(refs_env, cls_name, where):
    """Two steps on the same batch: within a step every SSL call sees one mask; the second step's mask is the one
    the objective would draw next if it ran once per step (the generator moves on exactly as if drawn once)."""
    mp = refs_env.mp
    trainer, batch = refs_trainer(refs_env, cls_name, "cosine_every=1")
    if where == "device_generator":
        gen = torch.Generator().manual_seed(123)  # stands in for torch.cuda.default_generators[i]
        mp.setattr(trainer, "random_generators", lambda: [torch.default_generator, gen], raising=False)
    else:
        gen = torch.default_generator
    start = gen.get_state()
    masks = _record_masks(trainer, mp, gen if where == "device_generator" else None)
    per_step = []
    for _ in range(2):
        n = len(masks)
        out = trainer.train_step(batch)
        assert out["skipped_steps"] == 0.0
        per_step.append(masks[n:])
    # fish (order alternates, cosine measured): ssl_first calls the SSL objective at theta only, ref_first at theta
    # and at the clone; cosine mode: one SSL call
    assert [len(s) for s in per_step] == ([1, 2] if cls_name == "ReFsTrainer" else [1, 1])
    for step_masks in per_step:
        assert all(torch.equal(m, step_masks[0]) for m in step_masks), "SSL calls of one step drew different masks"
    assert not torch.equal(per_step[0][0], per_step[1][0]), "two steps drew the same masks"

    # the independent truth: the objective drawing its mask once per step from the same starting state
    after_steps = gen.get_state()
    gen.set_state(start)
    x = batch["data"].to(trainer.device)
    truth = []
    for _ in range(2):
        truth.append(trainer.objective.masker.mask(x).mask)
    assert torch.equal(truth[0], per_step[0][0]) and torch.equal(truth[1], per_step[1][0])
    assert torch.equal(gen.get_state(), after_steps)


def test_after_the_step_the_generators_are_where_the_last_replay_left_them(refs_env):
    """If the replays of one step draw different amounts, the step ends where the LAST replay ended."""
    mp = refs_env.mp
    trainer, batch = refs_trainer(refs_env, "ReFsTrainer", "cosine_every=1,fish_order=ref_first")
    gen = torch.Generator().manual_seed(7)
    mp.setattr(trainer, "random_generators", lambda: [torch.default_generator, gen], raising=False)
    ssl_loss = trainer.objective.loss
    calls = []

    def drawing_ssl_loss(b, network, train, modules=None):
        calls.append(torch.rand(1 + len(calls), generator=gen))  # call k draws k + 1 numbers
        return ssl_loss(b, network, train, modules)

    mp.setattr(trainer.objective, "loss", drawing_ssl_loss)
    start = gen.get_state()
    trainer.train_step(batch)
    assert len(calls) == 2  # ref first: SSL at theta, then at the clone
    assert torch.equal(calls[1][:1], calls[0])  # both replays started from the same state
    ref = torch.Generator()
    ref.set_state(start)
    torch.rand(2, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_device_generators_lookup():
    from nnunet_ssl_trainers.refs import device_generators
    assert device_generators(torch.device("cpu")) == [torch.default_generator]
    if torch.cuda.is_available():
        gens = device_generators(torch.device("cuda", 0))
        assert gens[0] is torch.default_generator and gens[1] is torch.cuda.default_generators[0]
