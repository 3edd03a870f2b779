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
    assert workflow.recommended_finetune_trainer("IDEALTrainer_tau02") == "SSLFinetuneTrainer_decoderWarmupSlowEncoder"
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
