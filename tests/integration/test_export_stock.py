"""Issue 23 item 2: `nnunet_ssl export` writes models that stock nnU-Net predicts with, without this plugin.

Every fine-tuning trainer is trained briefly on real hippocampus MRI (tiny plans, ``ssl_datasets`` fixture),
exported, and predicted twice: with the plugin (``nnUNetv2_predict -tr <trainer>``) and by stock
``nnUNetv2_predict`` in a Python process where the plugin cannot be imported (an import blocker for ``nnunet_ssl`` /
``nnunet_ssl_trainers``, ``NNUNET_SSL_NO_AUTOREGISTER=1``, ``nnUNet_extTrainer`` unset). The voxels must be identical;
for ``IDEALSemiSupervisedTrainer`` (two decoders; the export keeps decoder A) the stock prediction must equal the
plugin network's decoder-A prediction.
"""
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import nnunet_bin, run

SCHEDULE = "num_epochs=1,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1"
FT = SCHEDULE + ",final_validation=False"
TRAINERS = {  # trainer -> (settings, needs a pre-trained checkpoint)
    "SSLScratchTrainer": (FT, False),
    "SSLFinetuneTrainer": (FT, True),
    "SSLFinetuneTrainer_decoderWarmup": (FT, True),
    "nnUNetTrainer_schedule": ("num_epochs=1,num_iterations_per_epoch=2", False),
    "IDEALSemiSupervisedTrainer": (FT + ",label_budget=4,budget_rest=unlabeled", True),
}

BLOCKED_PREDICT = r"""
import os, sys
for name in list(sys.modules):  # the .pth hook imported nnunet_ssl.autoregister at interpreter start
    if name.split('.')[0] in ('nnunet_ssl', 'nnunet_ssl_trainers'):
        del sys.modules[name]
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('nnunet_ssl', 'nnunet_ssl_trainers'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Blocker())
try:
    import nnunet_ssl_trainers
    raise SystemExit('the plugin is importable')
except ImportError:
    pass
assert 'nnUNet_extTrainer' not in os.environ and os.environ.get('NNUNET_SSL_NO_AUTOREGISTER') == '1'
from nnunetv2.inference.predict_from_raw_data import predict_entry_point
sys.argv = ['nnUNetv2_predict'] + sys.argv[1:]
predict_entry_point()
leaked = [m for m in sys.modules if m.split('.')[0] in ('nnunet_ssl', 'nnunet_ssl_trainers')]
assert not leaked, leaked
print('STOCK_PREDICT_OK')
"""


def _stock_env(env, results):
    out = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    out.update(NNUNET_SSL_NO_AUTOREGISTER="1", nnUNet_results=str(results))
    return out


def _labels(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def trained(ssl_datasets, planned_downstream, nnunet_env, tmp_path_factory):
    env = dict(ssl_datasets.env, nnUNet_n_proc_DA="0")
    env.pop("NNUNET_SSL_PRETRAINED", None)
    ds = planned_downstream.dataset_name
    work = tmp_path_factory.mktemp("export")
    test_in = work / "test_images"
    test_in.mkdir()
    for c in planned_downstream.unused_case_ids[-2:]:
        shutil.copy(planned_downstream.image_file(c), test_in)
    folders = {}
    for trainer, (settings, pretrained) in TRAINERS.items():
        e = dict(env, NNUNET_SSL_SETTINGS=settings)
        if pretrained:
            e["NNUNET_SSL_PRETRAINED"] = str(folders["SSLScratchTrainer"] / "fold_0" / "checkpoint_final.pth")
        if trainer == "IDEALSemiSupervisedTrainer":
            e["NNUNET_SSL_UNLABELED_DATASET"] = str(ssl_datasets.ssl_id)
        run([nnunet_bin("nnUNetv2_train"), ds, "3d_fullres", "0", "-tr", trainer, "-p", ssl_datasets.plans,
             "-device", "cpu"], e, timeout=1500)
        folders[trainer] = nnunet_env.results / ds / f"{trainer}__{ssl_datasets.plans}__3d_fullres"
    return {"env": env, "ds": ds, "work": work, "test_in": test_in, "folders": folders,
            "plans": ssl_datasets.plans}


def _export_and_compare(trained, trainer, as_zip=False):
    env, work = trained["env"], trained["work"]
    out = work / f"export_{trainer}"
    target = out.with_suffix(".zip") if as_zip else out
    cmd = [nnunet_bin("nnunet_ssl"), "export", trained["folders"][trainer], "-o", target]
    if trainer == "IDEALSemiSupervisedTrainer":  # refused unless the user accepts decoder A alone
        refused = run(cmd, env, expect_ok=False)
        assert refused.returncode == 2 and "--single-decoder" in refused.stderr and not target.exists()
        cmd.append("--single-decoder")
    proc = run(cmd, env)
    assert "Exported" in proc.stdout
    if as_zip:
        with zipfile.ZipFile(target) as zf:
            names = zf.namelist()
            assert f"{trained['ds']}/nnUNetTrainer__{trained['plans']}__3d_fullres/plans.json" in names
            zf.extractall(out)
    # the plugin's own prediction
    plugin_pred = work / f"plugin_{trainer}"
    run([nnunet_bin("nnUNetv2_predict"), "-i", trained["test_in"], "-o", plugin_pred, "-d", trained["ds"], "-c",
         "3d_fullres", "-f", "0", "-tr", trainer, "-p", trained["plans"], "-device", "cpu", "-npp", "1", "-nps", "1"],
        env)
    # stock nnU-Net, plugin blocked
    stock_pred = work / f"stock_{trainer}"
    proc = subprocess.run([sys.executable, "-c", BLOCKED_PREDICT, "-i", str(trained["test_in"]), "-o",
                           str(stock_pred), "-d", trained["ds"], "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer",
                           "-p", trained["plans"], "-device", "cpu", "-npp", "1", "-nps", "1"],
                          env=_stock_env(env, out), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "STOCK_PREDICT_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _labels(plugin_pred), _labels(stock_pred), out


@pytest.mark.parametrize("trainer", ["SSLFinetuneTrainer", "SSLFinetuneTrainer_decoderWarmup", "SSLScratchTrainer",
                                     "nnUNetTrainer_schedule"])
def test_stock_prediction_is_voxel_identical(trained, trainer):
    plugin, stock, _ = _export_and_compare(trained, trainer, as_zip=trainer == "SSLFinetuneTrainer")
    assert plugin.keys() == stock.keys() and len(plugin) == 2
    for name in plugin:
        assert np.array_equal(plugin[name], stock[name]), name


def test_two_decoder_export_predicts_decoder_a(trained):
    """IDEAL semi-supervised: the plugin predicts with both decoders' mean softmax; stock nnU-Net can rebuild only
    decoder A, which the export keeps. The stock prediction equals the plugin network restricted to decoder A."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    _, stock, out = _export_and_compare(trained, "IDEALSemiSupervisedTrainer")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trained["folders"]["IDEALSemiSupervisedTrainer"]), ("0",))
    two = predictor.network
    assert type(two).__name__ == "TwoDecoderUNet"

    class DecoderA(torch.nn.Module):  # the plugin network with decoder A only
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.decoder(self.net.encoder(x))

    predictor.network = DecoderA(two)
    predictor.list_of_parameters = [predictor.network.state_dict()]
    a_pred = trained["work"] / "plugin_decoder_a"
    predictor.predict_from_files(str(trained["test_in"]), str(a_pred), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    decoder_a = _labels(a_pred)
    assert decoder_a.keys() == stock.keys()
    for name in stock:
        assert np.array_equal(decoder_a[name], stock[name]), name
    ckpt = torch.load(out / trained["ds"] / f"nnUNetTrainer__{trained['plans']}__3d_fullres" / "fold_0" /
                      "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer"
    assert not any(k.startswith("decoder_b.") for k in ckpt["network_weights"])
    assert ckpt["nnunet_ssl_export"]["source_trainer"] == "IDEALSemiSupervisedTrainer"
    assert "optimizer_state" not in ckpt
