"""README command 1's job, ``nnunet_ssl demo``, run as a user runs it (the real command, its own synthetic data,
the real ``nnUNetv2_*`` commands underneath), at 0.1 of its epochs (one epoch per training; about 4 CPU-minutes,
most of it planning, ingestion and prediction) so that CI stays short. One epoch has no room for the default
route's decoder-only warm-up, which the fine-tuning log must then say (the stages: tests/unit/test_decoder_warmup.py).

Checked: the Dice table and caption, the label budget (1 of 8 labeled cases) in both arms' fine-tuning, the first
encoder stage kept random while the rest of the encoder is transferred, the predictions' geometry, and that running
the same command again re-uses every finished step (nothing trained or predicted twice) and reports the same Dice.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import nnunet_bin, run, training_logs

SCALE = "0.1"
N_TEST = 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "nnunet_ssl_demo"
    env = dict(__import__("os").environ, nnUNet_def_n_proc="1")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(var, None)  # the demo makes its own folders: a user's settings must not matter
    cmd = [nnunet_bin("nnunet_ssl"), "demo", "--dir", folder, "--epochs-scale", SCALE, "--device", "cpu"]
    first = run(cmd, env)
    summary = json.loads((folder / "report" / "workflow_summary.json").read_text())
    return {"folder": folder, "cmd": cmd, "env": env, "out": first.stdout, "summary": summary}


def _arm_log(demo, arm) -> str:
    return training_logs(demo["summary"]["arms"][arm]["output_folder"])


def test_table_and_caption(demo):
    out, arms = demo["out"], demo["summary"]["arms"]
    assert "| pretrained (SSLFinetuneTrainer_decoderWarmup) |" in out and "| scratch (SSLScratchTrainer) |" in out
    assert "MAETrainer pre-trained for 1 short epoch on" in out
    assert "fine-tuned on 1 labeled case (of the 8 the dataset has: label_budget=1)" in out
    assert "(first encoder stage left random)" in out
    diff = arms["pretrained"]["mean_dice"] - arms["scratch"]["mean_dice"]
    assert f"Mean Dice difference pretrained - scratch: {diff:+.3f}." in out
    for arm in ("pretrained", "scratch"):
        assert set(arms[arm]["dice"]) == {"1", "2"}
        assert all(0.0 <= d <= 1.0 for d in arms[arm]["dice"].values())


def test_both_arms_fine_tune_on_one_labeled_case_and_only_the_pretrained_arm_keeps_stage_0_random(demo):
    arms = demo["summary"]["arms"]
    assert "label_budget=1" in arms["scratch"]["settings"] and "reinit" not in arms["scratch"]["settings"]
    assert "reinit_encoder_stages=1" in arms["pretrained"]["settings"]
    for arm in ("pretrained", "scratch"):
        assert "Label budget: 1 of the 8 training cases of this fold are labeled" in _arm_log(demo, arm)
    log = _arm_log(demo, "pretrained")
    assert "  loaded   encoder.stages.1." in log and "  loaded   encoder.stages.0." not in log
    assert "encoder stage 0 kept at its initialisation" in log
    assert "decoder-only warm-up does not fit a 1-epoch schedule" in log
    assert "Hint: the decoder starts random" not in log  # it would recommend the trainer in use


def test_predictions_have_the_test_images_geometry(demo):
    images = sorted((demo["folder"] / "nnUNet_raw" / "Dataset990_SynthOrgans" / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == N_TEST
    for arm in ("pretrained", "scratch"):
        pred = demo["folder"] / "report" / f"predictions_{arm}"
        for img in images:
            p = sitk.ReadImage(str(pred / img.name.replace("_0000", "")))
            i = sitk.ReadImage(str(img))
            assert p.GetSize() == i.GetSize() and np.allclose(p.GetSpacing(), i.GetSpacing())
            assert set(np.unique(sitk.GetArrayFromImage(p))) <= {0, 1, 2}


def test_running_it_again_reuses_every_finished_step(demo):
    logs_before = sorted(Path(demo["folder"]).rglob("training_log*.txt"))
    again = run(demo["cmd"], demo["env"])
    assert "$ nnUNetv2_train" not in again.stdout and "$ nnUNetv2_predict" not in again.stdout
    assert "$ nnUNetv2_plan_and_preprocess" not in again.stdout
    assert again.stdout.count("trained already, re-used") == 3  # pre-training and both fine-tunings
    assert again.stdout.count("test predictions and their Dice of this model done already, re-used") == 2
    assert sorted(Path(demo["folder"]).rglob("training_log*.txt")) == logs_before
    summary = json.loads((demo["folder"] / "report" / "workflow_summary.json").read_text())
    for arm in ("pretrained", "scratch"):
        assert summary["arms"][arm]["dice"] == demo["summary"]["arms"][arm]["dice"]
