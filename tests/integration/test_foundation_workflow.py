"""Foundation end to end with the real nnU-Net commands on hippocampus (tiny plans, few iterations):

plan (fixture) -> `nnunet_ssl workflow`: ingest unlabeled -> MAETrainer pre-training -> fine-tune from the
checkpoint (the recommended route for MAE, SSLFinetuneTrainer_decoderWarmup) and from scratch (SSLScratchTrainer) -> nnUNetv2_predict -> nnUNetv2_evaluate_simple
-> Dice table; plus the stock `-pretrained_weights` route. Fine-tuning runs with initial_lr=0 so the fine-tuned
weights must equal the transferred ones exactly: that is what proves the transfer.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ssl.weights.network_parts import is_encoder_key
from nnunet_ssl.data.plans_tools import derive_plans

from helpers import nnunet_bin, run, training_logs

SSL_ID = 511
TINY = "nnUNetPlansTiny"
PRETRAIN = "num_epochs=2,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1"
FINETUNE_LR0 = ("num_epochs=1,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1,initial_lr=0.0,"
                "final_validation=False")



@pytest.fixture(scope="module")
def workflow_run(nnunet_env, planned_downstream, tmp_path_factory):
    ds = planned_downstream.dataset_name
    derive_plans(ds, "nnUNetPlans", TINY, max_features=16, batch_size=2)
    work = tmp_path_factory.mktemp("workflow")
    unlabeled = work / "unlabeled"
    unlabeled.mkdir()
    for c in planned_downstream.unused_case_ids[:8]:
        shutil.copyfile(planned_downstream.image_file(c), unlabeled / f"{c}_0000.nii.gz")
    test_images, test_labels = work / "imagesTs", work / "labelsTs"
    test_images.mkdir()
    test_labels.mkdir()
    hippo = planned_downstream.shared_data / "hippocampus"
    for c in planned_downstream.unused_case_ids[-3:]:
        shutil.copyfile(hippo / "imagesTr" / f"{c}_0000.nii.gz", test_images / f"{c}_0000.nii.gz")
        shutil.copyfile(hippo / "labelsTr" / f"{c}.nii.gz", test_labels / f"{c}.nii.gz")
    env = dict(nnunet_env.env, nnUNet_n_proc_DA="0")
    report = work / "report"
    run([nnunet_bin("nnunet_ssl"), "workflow", "--downstream", planned_downstream.dataset_id, "--unlabeled", unlabeled,
          "--ssl-id", SSL_ID, "--method", "mae", "-p", TINY, "-f", "0", "--test-images", test_images,
          "--test-labels", test_labels, "--pretrain-settings", PRETRAIN, "--finetune-settings", FINETUNE_LR0,
          "-device", "cpu", "--disable-tta", "--work-dir", report], env, timeout=1500)
    return {"env": env, "report": report, "test_images": test_images, "test_labels": test_labels, "ds": ds}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def test_workflow_writes_dice_table_for_both_arms(workflow_run):
    summary = json.loads((workflow_run["report"] / "workflow_summary.json").read_text())
    assert set(summary["arms"]) == {"pretrained", "scratch"}
    for arm in summary["arms"].values():
        assert set(arm["dice"]) == {"1", "2"}
        assert all(0.0 <= d <= 1.0 for d in arm["dice"].values())
    table = (workflow_run["report"] / "workflow_summary.md").read_text()
    assert "| pretrained (SSLFinetuneTrainer_decoderWarmup) |" in table and "| scratch (SSLScratchTrainer) |" in table
    # every run has its own nnUNet_results keyed by its inputs, which it records
    for arm in summary["arms"].values():
        inputs = json.loads((Path(arm["nnUNet_results"]) / "run_inputs.json").read_text())
        assert inputs["trainer"] == arm["trainer"] and inputs["settings"] == FINETUNE_LR0


def test_pretraining_checkpoint_is_a_full_cpu_network_with_adaptation_plan(workflow_run, nnunet_env):
    ckpt = torch.load(json.loads((workflow_run["report"] / "workflow_summary.json").read_text())["checkpoint"],
                      map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "MAETrainer"
    assert all(v.device.type == "cpu" for v in ckpt["network_weights"].values())
    keys = set(ckpt["network_weights"])
    assert any(k.startswith("decoder.encoder.") for k in keys) and any(k.startswith("decoder.stages.") for k in keys)
    plan = ckpt["nnssl_adaptation_plan"]
    for field in ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels",
                  "recommended_downstream_patchsize", "key_to_encoder", "key_to_stem", "keys_to_in_proj",
                  "key_to_lpe"):
        assert field in plan
    assert plan["pretrain_num_input_channels"] == 1
    # no Dice validation in pre-training, SSL curves in the log and progress.png
    folder = os.path.dirname(json.loads((workflow_run["report"] / "workflow_summary.json").read_text())["checkpoint"])
    assert not os.path.isdir(os.path.join(folder, "validation"))
    assert os.path.isfile(os.path.join(folder, "progress.png"))
    log = "".join(open(os.path.join(folder, f)).read() for f in os.listdir(folder) if f.startswith("training_log"))
    assert "recon_loss" in log and "val_loss" in log


def test_our_route_transferred_the_encoder_and_left_the_mae_decoder_random(workflow_run, nnunet_env):
    """MAE checkpoints: encoder transferred bit-exactly, the reconstruction decoder left at its initialisation
    (``recommended_load_decoder``); the ReFs test covers ``load_decoder=True`` (everything but the output layer)."""
    summary = json.loads((workflow_run["report"] / "workflow_summary.json").read_text())
    pre = _weights(summary["checkpoint"])
    ft_folder = summary["arms"]["pretrained"]["output_folder"]
    ft = _weights(os.path.join(ft_folder, "checkpoint_final.pth"))
    scratch = _weights(os.path.join(summary["arms"]["scratch"]["output_folder"], "checkpoint_final.pth"))
    encoder = [k for k in ft if is_encoder_key(k)]
    decoder = [k for k in ft if not is_encoder_key(k) and ".seg_layers." not in k and k.endswith("conv.weight")]
    assert len(encoder) > 10 and len(decoder) > 3
    for k in encoder:
        assert torch.equal(ft[k], pre[k]), f"{k} was not transferred"
    for k in decoder:
        assert not torch.equal(ft[k], pre[k]), f"{k}: the MAE decoder was transferred"
    # the scratch arm really is different (so the equality above is not trivial)
    assert not all(torch.equal(scratch[k], pre[k]) for k in encoder)
    log = training_logs(ft_folder)
    assert "nnunet_ssl weight transfer:" in log and "skipped  decoder.seg_layers" in log
    assert "Decoder: MAETrainer checkpoint: decoder left at its initialisation" in log


def test_predictions_have_the_input_geometry(workflow_run):
    pred = workflow_run["report"] / "predictions_pretrained"
    for img in sorted(workflow_run["test_images"].glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        p = sitk.ReadImage(str(pred / f"{case}.nii.gz"))
        i = sitk.ReadImage(str(img))
        assert p.GetSize() == i.GetSize()
        assert np.allclose(p.GetSpacing(), i.GetSpacing()) and np.allclose(p.GetOrigin(), i.GetOrigin())
        assert np.allclose(p.GetDirection(), i.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(p))) <= {0, 1, 2}


def test_stock_pretrained_weights_route(workflow_run, nnunet_env):
    summary = json.loads((workflow_run["report"] / "workflow_summary.json").read_text())
    env = dict(workflow_run["env"], NNUNET_SSL_SETTINGS=FINETUNE_LR0)
    env.pop("NNUNET_SSL_PRETRAINED", None)
    # stock loader (nnunetv2/run/load_pretrained_weights.py) with a trainer that adds nothing of its own
    run([nnunet_bin("nnUNetv2_train"), workflow_run["ds"], "3d_fullres", "1", "-tr", "SSLScratchTrainer", "-p", TINY,
          "-device", "cpu", "-pretrained_weights", summary["checkpoint"]], env)
    out = nnunet_env.results / workflow_run["ds"] / f"SSLScratchTrainer__{TINY}__3d_fullres" / "fold_1"
    pre, ft = _weights(summary["checkpoint"]), _weights(out / "checkpoint_final.pth")
    assert all(torch.equal(v, pre[k]) for k, v in ft.items() if ".seg_layers." not in k)
