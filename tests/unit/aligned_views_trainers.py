"""Tiny PGL / IDEAL trainers for the aligned-views tests: in-memory plans, nnU-Net folders in tmp, random batches.

Trainers are built from small in-memory plans (PlainConvUNet and ResidualEncoderUNet, 2d and 3d, anisotropic
patches, 1 or 2 input channels) with nnU-Net folders in tmp (fixture ``nnunet_folders``; import it with the helpers);
batches are random images with real view geometry.
"""
import numpy as np
import pytest
import torch

from nnunet_ssl.methods.views import ViewSamplingConfig, sample_flips, sample_two_boxes

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

# (configuration, patch, strides): the 3d patch is anisotropic and its first stride is in-plane only
GEOMETRY = {
    "3d_fullres": ((12, 24, 32), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
    "2d": ((24, 16), [[1, 1], [2, 2], [2, 2], [2, 2]]),
}


def tiny_plans(arch: str, configuration: str, features=(4, 8, 8, 8)) -> dict:
    patch, strides = GEOMETRY[configuration]
    ndim = len(patch)
    n_stages = len(strides)
    conv = "torch.nn.modules.conv.Conv3d" if ndim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if ndim == 3 else \
        "torch.nn.modules.instancenorm.InstanceNorm2d"
    kwargs = {"n_stages": n_stages, "features_per_stage": list(features), "conv_op": conv,
              "kernel_sizes": [[3] * ndim] * n_stages, "strides": strides,
              "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True, "norm_op": norm,
              "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs["n_conv_per_stage" if arch == PLAIN else "n_blocks_per_stage"] = [1] * n_stages
    cfg = {"data_identifier": f"tiny_{configuration}", "preprocessor_name": "DefaultPreprocessor",
           "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [2 * p for p in patch],
           "spacing": [3.0] + [1.0] * (ndim - 1) if ndim == 3 else [1.0, 1.0],
           "normalization_schemes": ["ZScoreNormalization"] * 2, "use_mask_for_norm": [False] * 2,
           "resampling_fn_data": "resample_data_or_seg_to_shape",
           "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                  "force_separate_z": None},
           "architecture": {"network_class_name": arch, "arch_kwargs": kwargs,
                            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
           "batch_dice": False}
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlansTiny",
            "original_median_spacing_after_transp": [3.0, 1.0, 1.0],
            "original_median_shape_after_transp": [24, 48, 40], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}, "configurations": {configuration: cfg},
            "continue_training": False}


def dataset_json(num_channels: int) -> dict:
    return {"channel_names": {str(i): f"ch{i}" for i in range(num_channels)},
            "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 4, "file_ending": ".nii.gz"}


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.delenv("NNUNET_SSL_SETTINGS", raising=False)
    for configuration in GEOMETRY:
        # initialize() infers the dataset class from the file endings of the preprocessed folder; nothing is read
        folder = tmp_path / "nnUNet_preprocessed" / "Dataset999_Tiny" / f"tiny_{configuration}"
        folder.mkdir(parents=True)
        (folder / "placeholder.b2nd").touch()
    return tmp_path


def make_trainer(cls, arch=PLAIN, configuration="3d_fullres", num_channels=1, settings=None, monkeypatch=None,
                 **attrs):
    if settings is not None:
        monkeypatch.setenv("NNUNET_SSL_SETTINGS", settings)
    trainer = cls(tiny_plans(arch, configuration), configuration, 0, dataset_json(num_channels),
                  device=torch.device("cpu"))
    for k, v in attrs.items():
        setattr(trainer, k, v)
    trainer.initialize()
    return trainer


def random_batch(trainer, batch_size=2, seed=0, disjoint_last=False):
    """Random images with real view geometry (boxes of a case 1.5x the patch, random flips)."""
    rng = np.random.RandomState(seed)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    ndim = len(patch)
    case_shape = [int(1.5 * p) for p in patch]
    cfg = ViewSamplingConfig()
    b1, b2, f1, f2 = [], [], [], []
    for _ in range(batch_size):
        x, y = sample_two_boxes(case_shape, patch, cfg, rng)
        b1.append(x), b2.append(y)
        f1.append(sample_flips(ndim, cfg, rng)), f2.append(sample_flips(ndim, cfg, rng))
    if disjoint_last:  # move view 2 of the last sample far away: no overlap
        b2[-1] = b2[-1] + 10 * np.asarray(patch)[None]
    g = torch.Generator().manual_seed(seed)
    c = trainer.num_input_channels
    return {"data_v1": torch.randn(batch_size, c, *patch, generator=g),
            "data_v2": torch.randn(batch_size, c, *patch, generator=g),
            "box_v1": torch.from_numpy(np.stack(b1)).float(), "box_v2": torch.from_numpy(np.stack(b2)).float(),
            "flip_v1": torch.from_numpy(np.stack(f1)), "flip_v2": torch.from_numpy(np.stack(f2)),
            "keys": [f"case{i}" for i in range(batch_size)]}
