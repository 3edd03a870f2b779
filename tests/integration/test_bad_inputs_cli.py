"""Bad inputs through the real `nnUNetv2_train`: a clear message naming the problem and the fix, exit status 2, no
traceback, nothing trained; and the two "odd but valid" checkpoints (CUDA-saved, other channel count) that must load.

The library-level checks of the same cases are in tests/unit (checkpoint_transfer, label_budget, ssl_base); here
the user's path is exercised: environment variables and settings read by the trainer inside nnU-Net's own command.
"""
import pytest
import torch

from helpers import SSL_ID, TINY, nnunet_bin, run, training_logs

ONE_STEP = "num_epochs=1,num_iterations_per_epoch=1,num_val_iterations_per_epoch=1"
FT_ONE_STEP = ONE_STEP + ",final_validation=False"


def _train(ds, trainer, env, settings, fold="0", dataset=None):
    env = dict(env, NNUNET_SSL_SETTINGS=settings)
    return run([nnunet_bin("nnUNetv2_train"), dataset or ds.dataset_name, "3d_fullres", fold, "-tr", trainer,
                "-p", TINY, "-device", "cpu"], env, expect_ok=False)


def _assert_user_error(proc, *fragments):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for f in fragments:
        assert f in out, f"{f!r} not in:\n{out[-3000:]}"


def _tiny_network_checkpoint(ds, path, input_channels=1, features_scale=1, cuda_tags=False):
    """A checkpoint of the tiny-plans network (or a wider one: another architecture) written like a trainer does."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from batchgenerators.utilities.file_and_folder_operations import load_json
    cm = PlansManager(load_json(ds.preprocessed_folder / f"{TINY}.json")).get_configuration("3d_fullres")
    kwargs = dict(cm.network_arch_init_kwargs)
    kwargs["features_per_stage"] = [f * features_scale for f in kwargs["features_per_stage"]]
    net = get_network_from_plans(cm.network_arch_class_name, kwargs, cm.network_arch_init_kwargs_req_import,
                                 input_channels, 3, allow_init=True, deep_supervision=True)
    ckpt = {"network_weights": net.state_dict()}
    if cuda_tags:  # storages tagged 'cuda:0' as on a GPU machine: plain torch.load fails here without a GPU
        import torch.serialization as ser
        original = ser.location_tag
        ser.location_tag = lambda storage: "cuda:0"
        try:
            torch.save(ckpt, path)
        finally:
            ser.location_tag = original
    else:
        torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def env(ssl_datasets):
    e = dict(ssl_datasets.env)
    e.pop("NNUNET_SSL_PRETRAINED", None)
    return e


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", "truncated"])
def test_unreadable_pretrained_checkpoint(content, env, planned_downstream, tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    if content == "truncated":
        _tiny_network_checkpoint(planned_downstream, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    proc = _train(planned_downstream, "SSLFinetuneTrainer", dict(env, NNUNET_SSL_PRETRAINED=str(path)), FT_ONE_STEP)
    _assert_user_error(proc, "truncated or not a checkpoint", str(path))


def test_missing_pretrained_checkpoint(env, planned_downstream, tmp_path):
    path = tmp_path / "nowhere" / "checkpoint_final.pth"
    proc = _train(planned_downstream, "SSLFinetuneTrainer", dict(env, NNUNET_SSL_PRETRAINED=str(path)), FT_ONE_STEP)
    _assert_user_error(proc, "Checkpoint file not found", str(path))


def test_checkpoint_of_another_architecture(env, planned_downstream, tmp_path):
    path = _tiny_network_checkpoint(planned_downstream, tmp_path / "wide.pth", features_scale=2)
    proc = _train(planned_downstream, "SSLFinetuneTrainer", dict(env, NNUNET_SSL_PRETRAINED=str(path)), FT_ONE_STEP)
    _assert_user_error(proc, "first mismatching layer")


def test_cuda_saved_checkpoint_with_two_input_channels_fine_tunes_on_cpu(env, planned_downstream, nnunet_env,
                                                                         tmp_path):
    path = _tiny_network_checkpoint(planned_downstream, tmp_path / "gpu.pth", input_channels=2, cuda_tags=True)
    if not torch.cuda.is_available():
        with pytest.raises(Exception):
            torch.load(path, weights_only=False)  # the file really is GPU-tagged
    proc = _train(planned_downstream, "SSLFinetuneTrainer", dict(env, NNUNET_SSL_PRETRAINED=str(path)), FT_ONE_STEP,
                  fold="1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    folder = (nnunet_env.results / planned_downstream.dataset_name / f"SSLFinetuneTrainer__{TINY}__3d_fullres"
              / "fold_1")
    log = training_logs(folder)
    assert f"Pre-trained weights from {path}" in log
    assert "adapted  encoder.stages.0.0.convs.0" in log  # the 2-channel stem was adapted to 1 channel
    assert (folder / "checkpoint_final.pth").is_file()


def test_label_budget_larger_than_the_fold(env, planned_downstream):
    proc = _train(planned_downstream, "SSLScratchTrainer", env, FT_ONE_STEP + ",label_budget=500")
    _assert_user_error(proc, "500")


@pytest.mark.parametrize("settings,fragments", [
    ("epochs=3", ("unknown setting 'epochs'", "num_epochs")),
    ("num_epochs=three", ("not a valid int",)),
    ("mask_ratio", ("name=value",)),
])
def test_bad_trainer_settings(settings, fragments, env, planned_downstream):
    proc = _train(planned_downstream, "MAETrainer", env, settings, fold="all", dataset=str(SSL_ID))
    _assert_user_error(proc, *fragments)


def test_missing_unlabeled_pool(env, planned_downstream):
    proc = _train(planned_downstream, "IDEALSemiSupervisedTrainer", dict(env, NNUNET_SSL_UNLABELED_DATASET="987"),
                  FT_ONE_STEP + ",label_budget=4")
    _assert_user_error(proc, "987")
