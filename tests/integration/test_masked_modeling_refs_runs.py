"""Real `nnUNetv2_train` runs of GMIMTrainer and ReFsTrainer on hippocampus ingested as unlabeled data.

ReFs gets a labeled reference dataset built from other hippocampus cases and preprocessed with the unlabeled
dataset's plans by `nnunet_ssl prepare-reference`. Checked: the SSL curves are logged, `--c` resumes, the
checkpoints fine-tune (stock `-pretrained_weights` and our route), the reference head never reaches
`network_weights`, and bad reference setups stop with clear messages.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from nnunet_ssl.ingest import ingest_unlabeled
from nnunet_ssl.plans_tools import derive_plans

TINY = "nnUNetPlansTiny"
SSL_ID, REF_ID = 512, 513
SSL_NAME, REF_NAME = "Dataset512_HippoUnlabeled", "Dataset513_HippoRef"
TWO_EPOCHS = "num_epochs=2,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1"
LR0 = "num_epochs=1,num_iterations_per_epoch=1,num_val_iterations_per_epoch=1,initial_lr=0.0,final_validation=False"


def _bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def _run(cmd, env, expect_ok=True, timeout=900):
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def datasets(nnunet_env, planned_downstream, tmp_path_factory):
    derive_plans(planned_downstream.dataset_name, "nnUNetPlans", TINY, max_features=16, batch_size=2)
    unused = planned_downstream.unused_case_ids
    folder = tmp_path_factory.mktemp("unlabeled")
    for c in unused[:6]:
        shutil.copyfile(planned_downstream.image_file(c), folder / f"{c}_0000.nii.gz")
    ingest_unlabeled(folder, SSL_ID, "HippoUnlabeled", planned_downstream.dataset_id, plans_identifier=TINY,
                     configurations=["3d_fullres"], num_processes=2, verbose=False)
    hippo = planned_downstream.shared_data / "hippocampus"
    ref = nnunet_env.raw / REF_NAME
    (ref / "imagesTr").mkdir(parents=True)
    (ref / "labelsTr").mkdir()
    for c in unused[6:12]:
        shutil.copyfile(hippo / "imagesTr" / f"{c}_0000.nii.gz", ref / "imagesTr" / f"{c}_0000.nii.gz")
        shutil.copyfile(hippo / "labelsTr" / f"{c}.nii.gz", ref / "labelsTr" / f"{c}.nii.gz")
    dj = json.loads((hippo / "dataset.json").read_text())
    dj["numTraining"] = 6
    (ref / "dataset.json").write_text(json.dumps(dj))
    env = dict(nnunet_env.env, nnUNet_n_proc_DA="0")
    _run([_bin("nnunet_ssl"), "prepare-reference", "-r", REF_ID, "--ssl", SSL_ID, "-p", TINY], env)
    return env


def _folder(nnunet_env, dataset, trainer, fold="all"):
    return nnunet_env.results / dataset / f"{trainer}__{TINY}__3d_fullres" / f"fold_{fold}"


def _log(folder):
    return "".join(open(folder / f).read() for f in sorted(os.listdir(folder)) if f.startswith("training_log"))


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


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

    # our fine-tuning route: everything but the output layer arrives; the reference head does not exist there
    env = dict(datasets, NNUNET_SSL_SETTINGS=LR0, NNUNET_SSL_PRETRAINED=str(folder / "checkpoint_final.pth"))
    _run([_bin("nnUNetv2_train"), planned_downstream.dataset_name, "3d_fullres", "3", "-tr", "SSLFinetuneTrainer",
          "-p", TINY, "-device", "cpu"], env)
    ft = _ckpt(_folder(nnunet_env, planned_downstream.dataset_name, "SSLFinetuneTrainer", 3) / "checkpoint_final.pth")
    assert not any("ref_head" in k for k in ft["network_weights"])
    _assert_all_but_output_layer_equal(ft["network_weights"], resumed["network_weights"])


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
    plans_file = nnunet_env.preprocessed / REF_NAME / f"{TINY}.json"
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
