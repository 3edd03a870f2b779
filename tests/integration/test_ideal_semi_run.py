"""End to end: stock nnUNetv2_train / nnUNetv2_predict with IDEALSemiSupervisedTrainer on real hippocampus MRI.

Uses the shared fixtures of ``conftest.py``: ``planned_downstream`` (Dataset501_HippoSmall, 12 cases, planned by
``nnUNetv2_plan_and_preprocess``) in this module's ``nnunet_env``. Here: plans shrunk with ``derive_plans`` (16
features, batch 2), a custom split (fold 0: 8 training cases, 1 validation case, to keep the final mirrored
validation short), label budget 4 with the other 4 training cases in the unlabeled pool (``budget_rest=unlabeled``)
plus 3 hippocampus images outside the dataset ingested as Dataset502 (``NNUNET_SSL_UNLABELED_DATASET``). Then
``nnUNetv2_predict`` on 2 further images and Dice with nnU-Net's evaluation.
"""
import json
import os
import resource
import shutil
import subprocess
import time

import pytest

from helpers import nnunet_bin

PLANS = "nnUNetPlansTiny"
UNL_ID = 502
TIMEOUT = 1800  # generous for busy shared machines; about 2-3 minutes of work on 2 free cores


def _run(args, env, log):
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    with open(log, "w") as f:
        result = subprocess.run(args, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{os.path.basename(args[0])}: wall {time.time() - start:.0f} s, cpu {cpu:.0f} s")
    if result.returncode != 0:
        with open(log) as f:
            tail = "".join(f.readlines()[-40:])
        pytest.fail(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{tail}")


@pytest.fixture(scope="module")
def ideal_run(planned_downstream, nnunet_env):
    from nnunet_ssl.data.ingest import ingest_unlabeled
    from nnunet_ssl.data.plans_tools import derive_plans
    ds = planned_downstream
    root = nnunet_env.root
    derive_plans(str(ds.dataset_id), "nnUNetPlans", PLANS, max_features=16, batch_size=2,
                 configurations=["3d_fullres"])
    cases = sorted(ds.case_ids)
    train_cases, val_cases = cases[:8], cases[8:9]
    (ds.preprocessed_folder / "splits_final.json").write_text(json.dumps([{"train": train_cases,
                                                                           "val": val_cases}]))
    unl_cases, test_cases = ds.unused_case_ids[:3], ds.unused_case_ids[3:5]
    unl_in, test_in, test_gt = root / "unlabeled_images", root / "test_images", root / "test_labels"
    for folder in (unl_in, test_in, test_gt):
        folder.mkdir()
    for c in unl_cases:
        shutil.copy(ds.image_file(c), unl_in)
    for c in test_cases:
        shutil.copy(ds.image_file(c), test_in)
        shutil.copy(ds.shared_data / "hippocampus" / "labelsTr" / f"{c}.nii.gz", test_gt)
    report = ingest_unlabeled(unl_in, UNL_ID, "HippoSmallUnlabeled", downstream=ds.dataset_id,
                              plans_identifier=PLANS, configurations=["3d_fullres"], num_processes=0, verbose=False)

    # nnUNet_def_n_proc=1: fewer spawned export workers in the final validation (each one imports torch)
    env = dict(nnunet_env.env, nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="0",
               NNUNET_SSL_UNLABELED_DATASET=str(UNL_ID))
    env.pop("NNUNET_SSL_PRETRAINED", None)
    train_env = dict(env, NNUNET_SSL_SETTINGS="num_epochs=2,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1,"
                                              "batch_size=2,label_budget=4,budget_rest=unlabeled")
    _run([nnunet_bin("nnUNetv2_train"), str(ds.dataset_id), "3d_fullres", "0", "-tr", "IDEALSemiSupervisedTrainer",
          "-p", PLANS, "-device", "cpu"], train_env, root / "train.log")
    out = root / "pred"
    predict_env = dict(env)
    predict_env.pop("NNUNET_SSL_SETTINGS", None)
    _run([nnunet_bin("nnUNetv2_predict"), "-i", str(test_in), "-o", str(out), "-d", str(ds.dataset_id), "-c",
          "3d_fullres", "-f", "0", "-tr", "IDEALSemiSupervisedTrainer", "-p", PLANS, "-device", "cpu",
          "--disable_tta", "-npp", "1", "-nps", "1"], predict_env, root / "predict.log")
    fold = nnunet_env.results / ds.dataset_name / f"IDEALSemiSupervisedTrainer__{PLANS}__3d_fullres" / "fold_0"
    return dict(root=root, fold=fold, pred=out, test_in=test_in, test_gt=test_gt, test_cases=test_cases,
                train_cases=train_cases, ingested=report.num_cases)


def test_training_used_budget_and_pool(ideal_run):
    import torch
    fold = ideal_run["fold"]
    assert (fold / "checkpoint_final.pth").is_file()
    with open(fold / "label_budget.json") as f:
        budget = json.load(f)
    assert len(budget["labeled"]) == 4 and set(budget["labeled"]) <= set(ideal_run["train_cases"])
    assert budget["budget_rest"] == "unlabeled" and len(budget["rest"]) == 4
    log = "".join(open(p).read() for p in fold.glob("training_log_*.txt"))
    assert "Label budget: 4 of the 8 training cases" in log
    assert ideal_run["ingested"] == 3 and "unlabeled pool: 7 case(s)" in log
    assert "cps_loss" in log and "consistency_weight" in log
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    keys = list(ckpt["network_weights"])
    assert any(k.startswith("decoder_b.") for k in keys) and not any(k.startswith("decoder_b.encoder.") for k in keys)
    assert ckpt["trainer_name"] == "IDEALSemiSupervisedTrainer"
    assert (fold / "validation" / "summary.json").is_file()  # stock final validation ran through the ensemble


def test_prediction_geometry_and_dice(ideal_run):
    import SimpleITK as sitk
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    for c in ideal_run["test_cases"]:
        pred_file = ideal_run["pred"] / f"{c}.nii.gz"
        assert pred_file.is_file(), f"no prediction for {c}"
        image = sitk.ReadImage(str(ideal_run["test_in"] / f"{c}_0000.nii.gz"))
        pred = sitk.ReadImage(str(pred_file))
        assert pred.GetSize() == image.GetSize()
        assert pred.GetSpacing() == pytest.approx(image.GetSpacing())
        assert pred.GetOrigin() == pytest.approx(image.GetOrigin())
        assert pred.GetDirection() == pytest.approx(image.GetDirection())
        labels = set(sitk.GetArrayFromImage(pred).ravel().tolist())
        assert labels <= {0, 1, 2}
    metrics = compute_metrics_on_folder(str(ideal_run["test_gt"]), str(ideal_run["pred"]),
                                        str(ideal_run["root"] / "summary.json"), SimpleITKIO(), ".nii.gz",
                                        [1, 2], None, num_processes=1, chill=True)
    dice = metrics["foreground_mean"]["Dice"]
    assert 0.0 <= dice <= 1.0  # 4 iterations of training: only the pipeline is tested, not the accuracy


def test_probe_two_decoders_average_matches_stock_predict(ideal_run, nnunet_env):
    """scripts/probe_two_decoders.py: its 'average' output is what nnUNetv2_predict wrote; one row per output."""
    import sys
    import numpy as np
    import SimpleITK as sitk
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "probe_two_decoders.py"
    out, md = ideal_run["root"] / "probe", ideal_run["root"] / "probe.md"
    _run([sys.executable, str(script), "-m", str(ideal_run["fold"].parent),
          "-f", "0", "-i", str(ideal_run["test_in"]), "-l", str(ideal_run["test_gt"]), "-o", str(out),
          "--out-md", str(md), "--device", "cpu"], dict(nnunet_env.env), ideal_run["root"] / "probe.log")
    for c in ideal_run["test_cases"]:
        stock = sitk.GetArrayFromImage(sitk.ReadImage(str(ideal_run["pred"] / f"{c}.nii.gz")))
        probe = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "average" / f"{c}.nii.gz")))
        assert np.array_equal(stock, probe), c
        for which in ("decoder_a", "decoder_b"):
            assert (out / which / f"{c}.nii.gz").is_file()
    rows = [ln.split("|")[1].strip() for ln in md.read_text().splitlines()
            if ln.startswith("| ") and "output" not in ln]
    assert rows == ["average", "decoder_a", "decoder_b"]
