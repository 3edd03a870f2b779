"""Issue 23 item 1: a workflow step is skipped only when everything that determines it is unchanged.

``run_nnunet`` is replaced by a fake that records the commands and writes the checkpoint a real run would write,
so the workflow's bookkeeping (run keys, skips, plans) is tested without training.
"""
import json
import os

import pytest

from nnunet_ssl.cli import workflow
from nnunet_ssl.errors import UserInputError


class FakeNnUNet:
    def __init__(self):
        self.calls = []

    def __call__(self, name, args, env=None, log_file=None, quiet=False, console_filter=None):
        args = [str(a) for a in args]
        env = dict(os.environ, **(env or {}))
        self.calls.append((name, args, env))
        if name == "nnUNetv2_train":
            dataset, configuration, fold = args[:3]
            trainer, plans = args[args.index("-tr") + 1], args[args.index("-p") + 1]
            out = os.path.join(env["nnUNet_results"], dataset, f"{trainer}__{plans}__{configuration}", f"fold_{fold}")
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "checkpoint_final.pth"), "w") as f:  # content differs per run
                f.write(json.dumps({"trainer": trainer, "settings": env.get("NNUNET_SSL_SETTINGS", ""),
                                    "n": len(self.calls)}))

        if name == "nnUNetv2_predict":  # one prediction per test image, named after the model that made it
            out = args[args.index("-o") + 1]
            os.makedirs(out, exist_ok=True)
            for img in sorted(os.listdir(args[args.index("-i") + 1])):
                with open(os.path.join(out, img.replace("_0000", "")), "w") as f:
                    f.write(args[args.index("-tr") + 1])
        if name == "nnUNetv2_evaluate_simple":
            with open(args[args.index("-o") + 1], "w") as f:
                json.dump({"mean": {"1": {"Dice": 0.5}}, "foreground_mean": {"Dice": 0.5}}, f)

    def count(self, name):
        return len([c for c in self.calls if c[0] == name])

    def trains(self):
        return [(a[a.index("-tr") + 1], e.get("NNUNET_SSL_SETTINGS", "")) for n, a, e in self.calls
                if n == "nnUNetv2_train"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    for name in ("Dataset700_Down", "Dataset701_Unl"):
        folder = tmp_path / "nnUNet_preprocessed" / name
        folder.mkdir()
        (folder / "nnUNetPlans.json").write_text("{}")
        (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1}}))
    fake = FakeNnUNet()
    monkeypatch.setattr(workflow, "run_nnunet", fake)
    return fake


def _cfg(**kw):
    base = dict(downstream="Dataset700_Down", unlabeled_folder=None, ssl_dataset_id=701, method="mae",
                pretrain_settings="num_epochs=1", finetune_settings="num_epochs=1", device="cpu")
    base.update(kw)
    return workflow.WorkflowConfig(**base)


def test_new_method_trains_new_runs_and_reports_its_own_output(fake):
    first = workflow.run_workflow(_cfg(method="mae"))
    second = workflow.run_workflow(_cfg(method="pgl"))
    trained = [t for t, _ in fake.trains()]
    assert trained.count("SSLScratchTrainer") == 1  # the scratch arm's inputs did not change: reused
    assert "PGLTrainer" in trained and "MAETrainer" in trained
    assert first["arms"]["pretrained"]["output_folder"] != second["arms"]["pretrained"]["output_folder"]
    # the pgl fine-tune started from the pgl checkpoint
    route = workflow.recommended_finetune_trainer("pgl")
    pgl_ft = [e for n, a, e in fake.calls if n == "nnUNetv2_train" and route in a]
    assert pgl_ft and pgl_ft[-1]["NNUNET_SSL_PRETRAINED"] == second["checkpoint"]
    assert "PGLTrainer" in second["checkpoint"]


def test_repeating_the_same_inputs_skips_every_training(fake):
    workflow.run_workflow(_cfg())
    n = len(fake.trains())
    workflow.run_workflow(_cfg())
    assert len(fake.trains()) == n


def test_new_settings_or_label_budget_retrain_the_fine_tuning(fake):
    workflow.run_workflow(_cfg())
    workflow.run_workflow(_cfg(finetune_settings="num_epochs=1,label_budget=5,label_seed=1"))
    budget_runs = [t for t, s in fake.trains() if "label_budget=5" in s]
    assert sorted(budget_runs) == sorted([workflow.DECODER_WARMUP_TRAINER, "SSLScratchTrainer"])
    workflow.run_workflow(_cfg(pretrain_settings="num_epochs=2"))
    assert [t for t, s in fake.trains() if s == "num_epochs=2"] == ["MAETrainer"]


def test_new_checkpoint_retrains_the_pretrained_arm(fake):
    summary = workflow.run_workflow(_cfg())
    n = len(fake.trains())
    with open(summary["checkpoint"], "a") as f:  # the pre-training was redone elsewhere / replaced
        f.write("changed")
    workflow.run_workflow(_cfg())
    assert [t for t, _ in fake.trains()[n:]] == [workflow.DECODER_WARMUP_TRAINER]


def test_plans_option_is_used_and_a_missing_plans_is_refused(fake, tmp_path):
    with pytest.raises(UserInputError, match="MyPlans"):
        workflow.run_workflow(_cfg(plans="MyPlans"))
    assert not [c for c in fake.calls if c[0] == "nnUNetv2_plan_and_preprocess"]
    for name in ("Dataset700_Down", "Dataset701_Unl"):
        (tmp_path / "nnUNet_preprocessed" / name / "MyPlans.json").write_text("{}")
    workflow.run_workflow(_cfg(plans="MyPlans"))
    assert all(a[a.index("-p") + 1] == "MyPlans" for n, a, e in fake.calls if n == "nnUNetv2_train")


def test_recorded_inputs_that_differ_are_refused_by_name(fake, tmp_path):
    summary = workflow.run_workflow(_cfg())
    root = summary["arms"]["scratch"]["nnUNet_results"]
    record = os.path.join(root, workflow.RUN_INPUTS_FILE)
    data = json.load(open(record))
    data["settings"] = "num_epochs=99"
    json.dump(data, open(record, "w"))
    with pytest.raises(UserInputError, match=r"settings: 'num_epochs=99' -> 'num_epochs=1'"):
        workflow.run_workflow(_cfg())


def test_recommended_route():
    assert workflow.recommended_finetune_trainer("mae") == "SSLFinetuneTrainer_decoderWarmup"
    assert workflow.recommended_finetune_trainer("GMIMTrainer") == "SSLFinetuneTrainer_decoderWarmup"
    assert workflow.recommended_finetune_trainer("refs") == "SSLFinetuneTrainer_decoderWarmup"
    assert workflow.recommended_finetune_trainer("pgl") == "SSLFinetuneTrainer_decoderWarmupSlowEncoder"
    assert workflow.recommended_finetune_trainer("IDEALTrainer_tau02") == "SSLFinetuneTrainer_decoderWarmup"
    assert workflow.recommended_finetune_trainer("IDEAL") == "SSLFinetuneTrainer_decoderWarmup"
    # ReFs on PGL transfers PGL's decoder stages: PGL's route, as the benchmark's refs-pgl arm fine-tunes it
    assert workflow.recommended_finetune_trainer("ReFsTrainer_PGL") == "SSLFinetuneTrainer_decoderWarmupSlowEncoder"
    assert workflow.recommended_finetune_trainer("ReFsTrainer_IDEAL") == "SSLFinetuneTrainer_decoderWarmup"
    # PGL variants whose loss trains no decoder stage transfer the encoder only
    assert workflow.recommended_finetune_trainer("PGLTrainer_encoderOnly") == "SSLFinetuneTrainer_decoderWarmup"
    assert workflow.recommended_finetune_trainer("somethingElse") == "SSLFinetuneTrainer"


def test_transfer_details_stay_off_the_console():
    keep = workflow._console_line
    assert keep("2026-12-02 01:00:00.000000: nnunet_ssl weight transfer: 80 tensors loaded, 0 adapted, ...")
    assert keep("2026-12-02 01:00:00.000000: Epoch 3")
    assert not keep("  loaded   encoder.stages.0.0.convs.0.conv.weight")
    assert not keep("  skipped  decoder.seg_layers.0.weight: segmentation layer (task-specific, always re-initialised)")
    assert not keep("  unused   decoder.stages.0.convs.0.conv.weight")


def test_the_scratch_arm_trains_without_the_pretrained_start_settings(fake):
    """reinit / encoder rate / decoder warm-up / load_decoder concern the checkpoint; scratch keeps the schedule and
    the label budget only (a random encoder at 0.1x or frozen would not be stock nnU-Net's schedule)."""
    start = "reinit_encoder_stages=1,encoder_lr_factor=0.1,warmup_duration_decoder=2,load_decoder=True"
    summary = workflow.run_workflow(_cfg(finetune_settings=f"num_epochs=3,{start},label_budget=2"))
    trains = dict(fake.trains())
    assert trains["SSLScratchTrainer"] == "num_epochs=3,label_budget=2"
    assert trains[workflow.DECODER_WARMUP_TRAINER] == f"num_epochs=3,{start},label_budget=2"
    assert summary["arms"]["scratch"]["settings"] == "num_epochs=3,label_budget=2"
    n = len(fake.trains())  # another reinit choice re-trains only the pre-trained arm
    workflow.run_workflow(_cfg(finetune_settings="num_epochs=3,reinit_encoder_stages=2,label_budget=2"))
    assert [t for t, _ in fake.trains()[n:]] == [workflow.DECODER_WARMUP_TRAINER]


@pytest.fixture
def test_set(tmp_path):
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    images.mkdir(), labels.mkdir()
    for c in ("a", "b"):
        (images / f"{c}_0000.nii.gz").write_text(c)
        (labels / f"{c}.nii.gz").write_text(c)
    return dict(test_images=str(images), test_labels=str(labels))


def test_repeating_the_same_inputs_skips_the_predictions_and_says_so(fake, test_set, capsys):
    first = workflow.run_workflow(_cfg(**test_set))
    assert fake.count("nnUNetv2_predict") == 2 and fake.count("nnUNetv2_evaluate_simple") == 2
    capsys.readouterr()
    second = workflow.run_workflow(_cfg(**test_set))
    assert fake.count("nnUNetv2_predict") == 2 and fake.count("nnUNetv2_evaluate_simple") == 2
    assert second["arms"]["pretrained"]["mean_dice"] == first["arms"]["pretrained"]["mean_dice"]
    out = capsys.readouterr().out
    assert out.count("trained already, re-used") == 3  # pre-training and both arms
    assert out.count("test predictions and their Dice of this model done already") == 2


def test_predictions_are_redone_for_a_new_model_or_test_set_without_stale_files(fake, test_set):
    summary = workflow.run_workflow(_cfg(**test_set))
    work = os.path.join(os.environ["nnUNet_results"], "nnunet_ssl_workflow")
    scratch_pred = [os.path.join(r, d) for r, ds, _ in os.walk(work) for d in ds if d == "predictions_scratch"][0]
    with open(os.path.join(scratch_pred, "old_case.nii.gz"), "w") as f:
        f.write("stale")
    with open(summary["arms"]["scratch"]["output_folder"] + "/checkpoint_final.pth", "a") as f:
        f.write("retrained")  # the scratch model changed: its predictions are stale, the pretrained arm's are not
    workflow.run_workflow(_cfg(**test_set))
    assert fake.count("nnUNetv2_predict") == 3
    assert [a[a.index("-tr") + 1] for n, a, _ in fake.calls if n == "nnUNetv2_predict"][-1] == "SSLScratchTrainer"
    assert not os.path.exists(os.path.join(scratch_pred, "old_case.nii.gz"))
    assert sorted(os.listdir(scratch_pred)) == ["a.nii.gz", "b.nii.gz", "predicted_with.json", "summary.json"]
    with open(os.path.join(scratch_pred, "predicted_with.json"), "w") as f:
        f.write('{"model": ')  # a record cut short (disk full, kill): predicted again, no traceback
    workflow.run_workflow(_cfg(**test_set))
    assert fake.count("nnUNetv2_predict") == 4
    with open(os.path.join(test_set["test_images"], "c_0000.nii.gz"), "w") as f:
        f.write("c")  # a new test image: both arms predict again
    workflow.run_workflow(_cfg(**test_set))
    assert fake.count("nnUNetv2_predict") == 6
    assert "c.nii.gz" in os.listdir(scratch_pred)
