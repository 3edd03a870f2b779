"""Real `nnUNetv2_train` runs of GMIMTrainer and ReFsTrainer on hippocampus ingested as unlabeled data.

ReFs gets a labeled reference dataset built from other hippocampus cases and preprocessed with the unlabeled
dataset's plans by `nnunet_ssl prepare-reference`. Checked: the SSL curves are logged, `--c` resumes, the
checkpoints fine-tune (stock `-pretrained_weights` and our route), the reference head never reaches
`network_weights`, and bad reference setups stop with clear messages.
"""
import json

import pytest
import torch


from helpers import REF_NAME, SSL_ID, SSL_NAME, TINY
from helpers import load_ckpt as _ckpt, nnunet_bin as _bin, run as _run, training_logs as _log

TWO_EPOCHS = "num_epochs=2,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1"
LR0 = "num_epochs=1,num_iterations_per_epoch=1,num_val_iterations_per_epoch=1,initial_lr=0.0,final_validation=False"


@pytest.fixture(scope="module")
def datasets(ssl_datasets):
    return ssl_datasets.env


def _folder(nnunet_env, dataset, trainer, fold="all"):
    return nnunet_env.results / dataset / f"{trainer}__{TINY}__3d_fullres" / f"fold_{fold}"


def _pretrain(trainer, datasets, nnunet_env):
    """`nnUNetv2_train SSL 3d_fullres all -tr trainer` for two epochs; returns its output folder and log."""
    env = dict(datasets, NNUNET_SSL_SETTINGS=TWO_EPOCHS)
    _run([_bin("nnUNetv2_train"), SSL_ID, "3d_fullres", "all", "-tr", trainer, "-p", TINY, "-device", "cpu"], env)
    folder = _folder(nnunet_env, SSL_NAME, trainer)
    return folder, _log(folder)


def _assert_all_but_output_layer_equal(fine_tuned, pretrained):
    assert all(torch.equal(v, pretrained[k]) for k, v in fine_tuned.items() if ".seg_layers." not in k)


def test_gmim_pretrains_and_fine_tunes_with_stock_pretrained_weights(datasets, nnunet_env, planned_downstream):
    folder, log = _pretrain("GMIMTrainer", datasets, nnunet_env)
    for curve in ("recon_loss", "cc_loss", "mean_grid", "val_loss"):
        assert curve in log
    ckpt = _ckpt(folder / "checkpoint_final.pth")
    assert {"target_encoder", "online_projector", "target_projector"} <= set(ckpt["ssl_state"])
    assert not any("projector" in k for k in ckpt["network_weights"])
    env = dict(datasets, NNUNET_SSL_SETTINGS=LR0)
    _run([_bin("nnUNetv2_train"), planned_downstream.dataset_name, "3d_fullres", "2", "-tr", "SSLScratchTrainer",
          "-p", TINY, "-device", "cpu", "-pretrained_weights", folder / "checkpoint_final.pth"], env)
    ft = _ckpt(_folder(nnunet_env, planned_downstream.dataset_name, "SSLScratchTrainer", 2) / "checkpoint_final.pth")
    _assert_all_but_output_layer_equal(ft["network_weights"], ckpt["network_weights"])


def test_refs_trains_logs_matching_resumes_and_fine_tunes(datasets, nnunet_env, planned_downstream):
    folder, log = _pretrain("ReFsTrainer", datasets, nnunet_env)
    assert f"ReFs reference dataset: {REF_NAME}" in log
    for curve in ("grad_cosine", "ref_loss", "ssl_loss", "recon_loss"):
        assert log.count(curve) >= 2, curve
    first = _ckpt(folder / "checkpoint_final.pth")
    cosines = first["logging"]["grad_cosine"]
    assert len(cosines) == 2 and all(-1.0 <= c <= 1.0 for c in cosines)
    assert "ref_head" in first["ssl_state"]
    assert not any("ref_head" in k for k in first["network_weights"])

    # --c with a longer schedule continues at epoch 2 from the saved state
    env = dict(datasets, NNUNET_SSL_SETTINGS=TWO_EPOCHS.replace("num_epochs=2", "num_epochs=3"))
    _run([_bin("nnUNetv2_train"), SSL_ID, "3d_fullres", "all", "-tr", "ReFsTrainer", "-p", TINY, "-device", "cpu",
          "--c"], env)
    resumed = _ckpt(folder / "checkpoint_final.pth")
    assert resumed["current_epoch"] == 3
    assert resumed["logging"]["grad_cosine"][:2] == cosines
    assert "Epoch 2" in _log(folder) and "Epoch 3" not in _log(folder)

    # our fine-tuning route with load_decoder=True (ReFs on MAE would leave the decoder random by default):
    # everything but the output layer arrives; the reference head does not exist there
    env = dict(datasets, NNUNET_SSL_SETTINGS=LR0 + ",load_decoder=True",
               NNUNET_SSL_PRETRAINED=str(folder / "checkpoint_final.pth"))
    _run([_bin("nnUNetv2_train"), planned_downstream.dataset_name, "3d_fullres", "3", "-tr", "SSLFinetuneTrainer",
          "-p", TINY, "-device", "cpu"], env)
    ft = _ckpt(_folder(nnunet_env, planned_downstream.dataset_name, "SSLFinetuneTrainer", 3) / "checkpoint_final.pth")
    assert not any("ref_head" in k for k in ft["network_weights"])
    _assert_all_but_output_layer_equal(ft["network_weights"], resumed["network_weights"])
    assert resumed["nnunet_ssl"]["transfer_decoder"] is False
    assert "Decoder: load_decoder=True (NNUNET_SSL_SETTINGS)" in _log(
        _folder(nnunet_env, planned_downstream.dataset_name, "SSLFinetuneTrainer", 3))


def test_refs_reference_errors_are_clear(datasets, nnunet_env):
    env = dict(datasets, NNUNET_SSL_SETTINGS="num_epochs=1,num_iterations_per_epoch=1")
    marker = nnunet_env.preprocessed / SSL_NAME / "nnunet_ssl_reference.json"
    saved = marker.read_text()
    marker.unlink()
    try:
        proc = _run([_bin("nnUNetv2_train"), SSL_ID, "3d_fullres", "all", "-tr", "ReFsTrainer_cosine", "-p", TINY,
                     "-device", "cpu"], dict(env, NNUNET_SSL_REFERENCE_DATASET=""), expect_ok=False)
        assert proc.returncode == 2
        assert "ReFs needs a labeled reference dataset: set NNUNET_SSL_REFERENCE_DATASET" in proc.stderr
        assert "Traceback" not in proc.stderr
        proc = _run([_bin("nnUNetv2_train"), SSL_ID, "3d_fullres", "all", "-tr", "ReFsTrainer_cosine", "-p", TINY,
                     "-device", "cpu"], dict(env, NNUNET_SSL_REFERENCE_DATASET="987"), expect_ok=False)
        assert proc.returncode == 2 and "Reference dataset '987' not found" in proc.stderr
    finally:
        marker.write_text(saved)
    from nnunet_ssl.data.reference import reference_plans_of  # the reference's plans live under their own name
    ref_plans = reference_plans_of(str(nnunet_env.preprocessed), SSL_NAME, REF_NAME, TINY)
    plans_file = nnunet_env.preprocessed / REF_NAME / f"{ref_plans}.json"
    original = plans_file.read_text()
    plans = json.loads(original)
    plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.0, 1.0]
    plans_file.write_text(json.dumps(plans))
    try:
        proc = _run([_bin("nnUNetv2_train"), SSL_ID, "3d_fullres", "all", "-tr", "ReFsTrainer_cosine", "-p", TINY,
                     "-device", "cpu"], env, expect_ok=False)
        assert proc.returncode == 2
        assert "planned differently" in proc.stderr and "spacing" in proc.stderr
    finally:
        plans_file.write_text(original)
