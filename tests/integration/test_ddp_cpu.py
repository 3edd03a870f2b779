"""Every nnunet_ssl trainer under nnU-Net's DDP code path, two CPU processes with gloo (`nnunet_ssl.cpu_ddp`).

`nnUNetv2_train -num_gpus 2` needs two GPUs; `python -m nnunet_ssl.cpu_ddp` runs the same sequence (one process
per rank, `get_trainer_from_args`, `run_training`) with the gloo backend. After 5 steps, per trainer:
* the network and every SSL module (EMA teachers, projectors, reference head) are bitwise identical on both ranks:
  gradients (including gradient matching's and the heads', which live outside the DDP wrapper) are averaged over
  ranks and the heads start from rank 0's initialisation;
* the two ranks trained on different cases (nnU-Net splits the global batch; each rank samples its own data; the
  chance that 5 draws from >= 6 cases coincide by luck is below 0.02 %);
* rank 0 wrote the checkpoint and the training log.
"""
import pytest
import torch

from helpers import SSL_ID, SSL_NAME, TINY, load_ckpt, run

SETTINGS = "num_epochs=1,num_iterations_per_epoch=5,num_val_iterations_per_epoch=1,batch_size=2"
TRAINERS = {  # trainer -> (dataset, fold, extra settings, extra env)
    "MAETrainer": (SSL_ID, "all", "", {}),
    "GMIMTrainer": (SSL_ID, "all", "", {}),
    "PGLTrainer": (SSL_ID, "all", "", {}),
    "IDEALTrainer": (SSL_ID, "all", "", {}),
    "ReFsTrainer": (SSL_ID, "all", "", {}),
    "IDEALSemiSupervisedTrainer": ("downstream", "0", ",final_validation=False,label_budget=8",
                                   {"NNUNET_SSL_UNLABELED_DATASET": str(SSL_ID)}),
    # the encoder frozen (gradient hooks) under DDP: the decoder-only stage for the whole run
    "SSLFinetuneTrainer_decoderWarmup": ("downstream", "0", ",final_validation=False,label_budget=8,"
                                         "warmup_duration_decoder=1", {}),
}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_two_gloo_ranks_stay_identical_and_see_different_data(trainer, ssl_datasets, planned_downstream,
                                                              nnunet_env, tmp_path):
    import sys
    dataset, fold, extra, extra_env = TRAINERS[trainer]
    if dataset == "downstream":
        dataset, name = planned_downstream.dataset_name, planned_downstream.dataset_name
    else:
        name = SSL_NAME
    env = dict(ssl_datasets.env, NNUNET_SSL_SETTINGS=SETTINGS + extra, **extra_env)
    record = tmp_path / "ranks"
    run([sys.executable, "-m", "nnunet_ssl.cpu_ddp", dataset, "3d_fullres", fold, "-tr", trainer, "-p", TINY,
         "-num_procs", "2", "--record", record], env)
    r0, r1 = (torch.load(record / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    assert r0["batch_size"] == r1["batch_size"] == 1  # the global batch of 2 is split over the ranks
    for key in ("network_weights", "ssl_state"):
        assert set(r0[key]) == set(r1[key])
        differing = [k for k in r0[key] if not torch.equal(r0[key][k], r1[key][k])]
        assert not differing, f"{key} differ between ranks: {differing[:5]}"
    assert len(r0["batch_keys"]) == len(r1["batch_keys"]) == 5
    assert r0["batch_keys"] != r1["batch_keys"], "both ranks trained on the same cases"

    folder = nnunet_env.results / name / f"{trainer}__{TINY}__3d_fullres" / f"fold_{fold}"
    ckpt = load_ckpt(folder / "checkpoint_final.pth")
    weights = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt["network_weights"].items()}
    assert all(torch.equal(weights[k], v) for k, v in r0["network_weights"].items())
    log = "".join(p.read_text() for p in folder.glob("training_log*.txt"))
    assert "DDP on CPU (gloo)" in log
    if trainer.endswith("_decoderWarmup"):
        assert "Initialized warmup_decoder optimizer" in log and "Initialized warmup_all" not in log
