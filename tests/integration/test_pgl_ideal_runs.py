"""PGL and IDEAL pre-training through stock ``nnUNetv2_train`` on 12 hippocampus cases (3d_fullres, tiny plans).

* ``PGLTrainer`` 2 epochs: SSL curves in the training log, progress.png, a checkpoint whose ``network_weights`` is
  the plain nnU-Net network and whose ``ssl_state`` holds heads and EMA teachers;
* ``--c`` with ``num_epochs=3``: the trainer loads exactly the saved teachers, continues at epoch 2 and the EMA
  schedule resumes at step ``2 * iterations`` (the logged momentum matches the formula);
* fine-tuning the checkpoint: stock ``-pretrained_weights`` (``-tr SSLScratchTrainer``: nnU-Net's own loader, one
  short epoch) and ``NNUNET_SSL_PRETRAINED`` with ``-tr SSLFinetuneTrainer_decoderWarmup`` (one short epoch per
  stage: decoder warm-up, whole-net warm-up, poly);
* ``IDEALTrainer`` 2 epochs (started in the background at the beginning to use the waiting time).

Pre-training runs directly on the labeled dataset (SSL trainers never read the labels). 2d is covered at unit
level (tests/unit/test_aligned_views_*.py) to keep this file short.
"""
import json
import re
import subprocess

import pytest

from helpers import load_ckpt, nnunet_bin, training_logs

SETTINGS = "num_epochs=2,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1,batch_size=2"
PLANS = "nnUNetPlansTiny"
TIMEOUT = 900


def _env(nnunet_env, settings=SETTINGS, **extra):
    env = dict(nnunet_env.env)
    # nnUNet_def_n_proc=1: the final validation of fine-tuning otherwise spawns 8 export workers (minutes on 2 cores)
    env.update({"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "NNUNET_SSL_SETTINGS": settings,
                "nnUNet_compile": "false"})
    env.pop("NNUNET_SSL_PRETRAINED", None)
    env.update(extra)
    return env


def _train_args(dataset_id, trainer, fold="all", *more):
    return [nnunet_bin("nnUNetv2_train"), str(dataset_id), "3d_fullres", str(fold), "-tr", trainer, "-p", PLANS,
            "-device", "cpu", *more]


def _check(proc, what):
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _run(args, env, what):
    return _check(subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT), what)


def _curve(log_text, key):
    return [float(v) for v in re.findall(rf": {key} (\S+)\s*\n", log_text)]


@pytest.fixture(scope="module")
def setup(planned_downstream, nnunet_env):
    from nnunet_ssl.data.plans_tools import derive_plans
    derive_plans(str(planned_downstream.dataset_id), "nnUNetPlans", PLANS, max_features=16, batch_size=2,
                 patch_size=(32, 40, 32), configurations=["3d_fullres"])
    # fine-tuning validates on one case only (fold 0 of a custom split)
    cases = sorted(planned_downstream.case_ids)
    (planned_downstream.preprocessed_folder / "splits_final.json").write_text(
        json.dumps([{"train": cases[1:], "val": cases[:1]}]))
    ideal = subprocess.Popen(_train_args(planned_downstream.dataset_id, "IDEALTrainer"), env=_env(nnunet_env),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield planned_downstream, ideal
    finally:
        if ideal.poll() is None:
            ideal.kill()
            ideal.communicate()


def _results(nnunet_env, ds, trainer, fold="all"):
    return nnunet_env.results / ds.dataset_name / f"{trainer}__{PLANS}__3d_fullres" / f"fold_{fold}"


@pytest.fixture(scope="module")
def pgl_run(setup, nnunet_env):
    ds, _ = setup
    proc = _run(_train_args(ds.dataset_id, "PGLTrainer"), _env(nnunet_env), "PGLTrainer pre-training")
    folder = _results(nnunet_env, ds, "PGLTrainer")
    before = folder.parent / "checkpoint_after_2_epochs.pth"
    before.write_bytes((folder / "checkpoint_final.pth").read_bytes())
    return ds, folder, before, proc


def test_pgl_pretraining_logs_curves_and_writes_plain_checkpoint(pgl_run):
    ds, folder, ckpt_path, _ = pgl_run
    log = training_logs(folder)
    assert (folder / "progress.png").is_file()
    for key in ("loss_bottleneck", "loss_decoder1", "ema_momentum", "overlapping_samples"):
        values = _curve(log, key)
        assert len(values) == 2, (key, values)
    assert all(0.0 <= v <= 4.0 for v in _curve(log, "loss_bottleneck") + _curve(log, "loss_decoder1"))
    assert all(0.0 < v <= 1.0 for v in _curve(log, "overlapping_samples"))
    m = _curve(log, "ema_momentum")
    assert 0.99 <= m[0] < m[1] <= 1.0
    ckpt = load_ckpt(ckpt_path)
    assert ckpt["trainer_name"] == "PGLTrainer" and ckpt["current_epoch"] == 2
    assert set(ckpt["ssl_state"]) == {"projectors", "predictors", "target_network", "target_projectors"}
    # network_weights is exactly the nnU-Net network (strict load into what inference builds)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pm = PlansManager(str(ds.preprocessed_folder / f"{PLANS}.json"))
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, False)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    net.load_state_dict(ckpt["ssl_state"]["target_network"], strict=True)


def test_pgl_continue_training_restores_teachers_and_schedule(pgl_run, nnunet_env):
    import torch
    ds, folder, before_path, _ = pgl_run
    before = load_ckpt(before_path)
    # 1) what --c loads: a trainer built like nnUNetv2_train does, then load_checkpoint (other fold: own folder)
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunet_ssl.weights.network_parts import unwrap
    from nnunet_ssl_trainers.pgl import PGLTrainer
    plans = load_json(str(ds.preprocessed_folder / f"{PLANS}.json"))
    plans["continue_training"] = True
    trainer = PGLTrainer(plans, "3d_fullres", 0, load_json(str(ds.preprocessed_folder / "dataset.json")),
                         device=torch.device("cpu"))
    trainer.load_checkpoint(str(before_path))
    assert trainer.current_epoch == 2
    for name, state in before["ssl_state"].items():
        loaded = unwrap(trainer.ssl_modules[name]).state_dict()
        assert loaded.keys() == state.keys()
        for k in state:
            assert torch.equal(loaded[k], state[k]), (name, k)

    # 2) the real --c run with one more epoch
    settings = SETTINGS.replace("num_epochs=2", "num_epochs=3")
    _run(_train_args(ds.dataset_id, "PGLTrainer", "all", "--c"), _env(nnunet_env, settings), "PGLTrainer --c")
    after = load_ckpt(folder / "checkpoint_final.pth")
    assert after["current_epoch"] == 3
    log = training_logs(folder)
    assert "Epoch 2" in log and len(re.findall(r": Epoch 0\s*\n", log)) == 1  # epochs 0/1 were not re-run
    # EMA schedule resumed at step 2 * 2 of 3 * 2: the epoch's logged momentum is the mean of steps 4 and 5
    from nnunet_ssl.methods.teachers import cosine_momentum
    expected = (cosine_momentum(4, 6, 0.99) + cosine_momentum(5, 6, 0.99)) / 2
    assert after["logging"]["ema_momentum"][2] == pytest.approx(expected, rel=1e-6)
    assert _curve(log, "ema_momentum")[-1] == pytest.approx(expected, abs=1e-4)
    # the continued teacher moved on from the saved teacher (momentum ~0.999), not from a fresh copy of the
    # online network
    t0, t1, online0 = (before["ssl_state"]["target_network"], after["ssl_state"]["target_network"],
                       before["network_weights"])
    dist_teacher = sum(float((t1[k] - t0[k]).pow(2).sum()) for k in t0)
    dist_online = sum(float((t1[k] - online0[k]).pow(2).sum()) for k in t0)
    assert 0 < dist_teacher < dist_online


def test_pgl_checkpoint_finetunes_with_stock_and_plugin_loaders(pgl_run, nnunet_env):
    ds, folder, ckpt_path, _ = pgl_run
    settings = "num_epochs=1,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1,batch_size=2"
    # stock nnU-Net loader (-pretrained_weights) with the project's from-scratch schedule trainer
    proc = _run(_train_args(ds.dataset_id, "SSLScratchTrainer", 0, "-pretrained_weights", str(ckpt_path)),
                _env(nnunet_env, settings), "stock -pretrained_weights fine-tuning")
    assert f"Loading pretrained weights from file  {ckpt_path}" in proc.stdout
    out = _results(nnunet_env, ds, "SSLScratchTrainer", 0)
    assert (out / "checkpoint_final.pth").is_file() and (out / "validation" / "summary.json").is_file()
    # the plugin's loader, in its decoder-first variant: one epoch per stage
    settings = settings.replace("num_epochs=1", "num_epochs=3") + ",warmup_duration_decoder=1,final_validation=False"
    _run(_train_args(ds.dataset_id, "SSLFinetuneTrainer_decoderWarmup", 0),
         _env(nnunet_env, settings, NNUNET_SSL_PRETRAINED=str(ckpt_path)), "SSLFinetuneTrainer fine-tuning")
    out = _results(nnunet_env, ds, "SSLFinetuneTrainer_decoderWarmup", 0)
    log = training_logs(out)
    assert str(ckpt_path) in log and (out / "checkpoint_final.pth").is_file()
    stages = re.findall(r"Initialized (\w+) optimizer and lr_scheduler at epoch (\d+)", log)
    assert stages == [("warmup_decoder", "0"), ("warmup_all", "1"), ("train", "2")]


def test_ideal_pretraining_runs(setup, nnunet_env):
    ds, ideal = setup
    stdout, stderr = ideal.communicate(timeout=TIMEOUT)
    _check(subprocess.CompletedProcess(ideal.args, ideal.returncode, stdout, stderr), "IDEALTrainer pre-training")
    folder = _results(nnunet_env, ds, "IDEALTrainer")
    log = training_logs(folder)
    assert (folder / "progress.png").is_file()
    for key in ("loss_bottleneck", "loss_decoder1", "ema_momentum", "overlapping_samples"):
        assert len(_curve(log, key)) == 2, key
    assert _curve(log, "ema_momentum") == [pytest.approx(0.99)] * 2  # constant key-encoder momentum
    assert all(v > 0 for v in _curve(log, "loss_bottleneck"))
    ckpt = load_ckpt(folder / "checkpoint_final.pth")
    assert set(ckpt["ssl_state"]) == {"projectors", "target_network", "target_projectors"}
