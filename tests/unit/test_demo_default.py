"""Issue 23 item 4: the demo shows what the plugin is for - the recommended method and fine-tuning route by default,
a caption saying what the numbers mean, the expected time in its help."""
import os

import importlib

from nnunet_ssl.cli import demo

main = importlib.import_module("nnunet_ssl.cli.main")


def _run(tmp_path, monkeypatch, capsys, *argv):
    seen = {}

    def fake_workflow(cfg):
        seen["cfg"] = cfg
        os.makedirs(cfg.work_dir, exist_ok=True)
        return {"pretrain_trainer": cfg.pretrain_trainer, "arms": {
            "pretrained": {"trainer": cfg.finetune_route, "mean_dice": 0.7},
            "scratch": {"trainer": "SSLScratchTrainer", "mean_dice": 0.6}}}

    ds = tmp_path / "d" / "nnUNet_raw" / "Dataset990_SynthOrgans"
    ds.mkdir(parents=True, exist_ok=True)
    (ds / "dataset.json").write_text("{}")  # no synthetic data generation
    monkeypatch.setattr(demo, "run_workflow", fake_workflow)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, "unused")  # run_demo sets its own
    assert main.main(["demo", "--dir", str(tmp_path / "d"), "-device", "cpu", *argv]) == 0
    return seen["cfg"], capsys.readouterr().out


def test_default_is_mae_with_the_decoder_warmup_route_and_a_caption(tmp_path, monkeypatch, capsys):
    cfg, out = _run(tmp_path, monkeypatch, capsys)
    assert cfg.pretrain_trainer == "MAETrainer"
    assert cfg.finetune_route == "SSLFinetuneTrainer_decoderWarmup"
    assert "load_decoder" not in cfg.finetune_settings  # the checkpoint's recommendation decides
    assert "reinit_encoder_stages=1" in cfg.finetune_settings  # MAE collapses stage 0 on the demo's data
    assert "label_budget=1,label_seed=0" in cfg.finetune_settings  # few labels: what the plugin is for
    assert "fine-tuned on 1 labeled case (of the 8 the dataset has: label_budget=1)" in out
    assert "What this shows" in out and "+0.100" in out and "does not measure" in out
    assert "What this shows" in (tmp_path / "d" / "report" / "workflow_summary.md").read_text()


def test_label_budget_option(tmp_path, monkeypatch, capsys):
    cfg, out = _run(tmp_path, monkeypatch, capsys, "--label-budget", "0")
    assert "label_budget" not in cfg.finetune_settings and "fine-tuned on 8 labeled cases with" in out
    cfg, out = _run(tmp_path, monkeypatch, capsys, "--label-budget", "3", "--seed", "2")
    assert "label_budget=3,label_seed=2" in cfg.finetune_settings and "3 labeled cases (of the 8" in out
    for bad in ("-1", "9", "two"):
        try:
            main.main(["demo", "--dir", str(tmp_path / "d"), "--label-budget", bad])
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"label budget {bad} was accepted")
        assert "expected a number of labeled cases from 0 to 8" in capsys.readouterr().err


def test_other_methods_get_their_route(tmp_path, monkeypatch, capsys):
    cfg, _ = _run(tmp_path, monkeypatch, capsys, "--method", "pgl")
    assert cfg.pretrain_trainer == "PGLTrainer" and cfg.finetune_route == "SSLFinetuneTrainer_decoderWarmupSlowEncoder"
    assert "reinit_encoder_stages" not in cfg.finetune_settings  # not measured for PGL: whole encoder
    cfg, _ = _run(tmp_path, monkeypatch, capsys, "--reinit-encoder-stages", "0")
    assert "reinit_encoder_stages" not in cfg.finetune_settings
    cfg, _ = _run(tmp_path, monkeypatch, capsys, "--method", "pgl", "--finetune-trainer",
                  "SSLFinetuneTrainer_decoderWarmup")
    assert cfg.finetune_route == "SSLFinetuneTrainer_decoderWarmup"


def test_help_states_the_measured_time():
    help_text = main.build_parser().format_help()
    assert f"{demo.EXPECTED_MINUTES} min" in help_text


def test_caption_names_a_class_one_arm_never_learned():
    """A 10-epoch arm can miss a class entirely (seen: scratch 0.70 / 0.00, pretrained 0.57 / 0.00 in one run, the
    same scratch 0.82 / 0.83 in the next): the caption says so instead of presenting it as pre-training's effect."""
    summary = {"pretrain_trainer": "IDEALTrainer", "arms": {
        "pretrained": {"trainer": "X", "mean_dice": 0.78, "dice": {"1": 0.76, "2": 0.80}},
        "scratch": {"trainer": "SSLScratchTrainer", "mean_dice": 0.35, "dice": {"1": 0.70, "2": 0.0}}}}
    text = demo.caption(summary, 10, 10)
    assert "'scratch' did not learn class 2 (Dice 0.00; 'pretrained' 0.80)" in text
    assert "did not learn class 1" not in text
    summary["arms"]["scratch"]["dice"]["2"] = 0.75
    assert "did not learn" not in demo.caption(summary, 10, 10)
    summary["arms"]["pretrained"]["dice"]["2"] = 0.0  # both missed it: no arm-specific failure to name
    summary["arms"]["scratch"]["dice"]["2"] = 0.0
    assert "did not learn" not in demo.caption(summary, 10, 10)
