"""Tiny nnU-Net plans and preprocessed datasets written on the fly (for unit tests of trainers and loaders).

Not a test module: imported by ``test_label_budget.py`` and ``test_ideal_semi.py``.
"""
import copy
import json
import os

import numpy as np

CONFIG = "3d_fullres"
DATA_IDENTIFIER = "nnUNetPlans_3d_fullres"


def tiny_plans(dataset_name="Dataset950_Fake", plans_name="nnUNetPlans", ndim=3, n_stages=3, features=(4, 8, 8),
               patch=None, batch_size=2) -> dict:
    """A plans dict nnU-Net's PlansManager accepts: PlainConvUNet with ``n_stages`` stages of few features.

    (nnU-Net's deep-supervision loss needs >= 3 stages: with 2 its scale weights are 0/0.)
    """
    features = list(features)[:n_stages]
    assert len(features) == n_stages
    patch = list(patch or [16] * ndim)
    conv = {2: "torch.nn.modules.conv.Conv2d", 3: "torch.nn.modules.conv.Conv3d"}[ndim]
    norm = {2: "torch.nn.modules.instancenorm.InstanceNorm2d", 3: "torch.nn.modules.instancenorm.InstanceNorm3d"}[ndim]
    cfg = {
        "data_identifier": DATA_IDENTIFIER if ndim == 3 else "nnUNetPlans_2d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": patch,
        "median_image_size_in_voxels": [20.0] * ndim,
        "spacing": [1.0] * ndim,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": features,
                "conv_op": conv,
                "kernel_sizes": [[3] * ndim] * n_stages,
                "strides": [[1] * ndim] + [[2] * ndim] * (n_stages - 1),
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": norm,
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [1.0] * ndim,
        "original_median_shape_after_transp": [20] * ndim,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(range(ndim)),
        "transpose_backward": list(range(ndim)),
        "configurations": {CONFIG if ndim == 3 else "2d": cfg},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0, "percentile_00_5": -2.5,
                  "percentile_99_5": 2.5, "std": 1.0}},
    }


DATASET_JSON = {
    "channel_names": {"0": "MRI"},
    "labels": {"background": 0, "a": 1, "b": 2},
    "numTraining": 0,
    "file_ending": ".nii.gz",
}


def _write_case(folder, name, rng, shape=(20, 20, 20), labeled=True, patch=(16, 16, 16), image_shows_labels=False):
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    data = rng.randn(1, *shape).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.int16)
    locations = {}
    if labeled:
        c = [s // 2 for s in shape]
        seg[0, c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
        seg[0, c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1] = 2
        for lab in (1, 2):
            idx = np.argwhere(seg == lab)
            locations[lab] = idx[:20]
        if image_shows_labels:  # the classes are brighter than the background (else the image is pure noise)
            data[0] += 4.0 * seg[0]
    props = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": shape, "shape_after_cropping_and_before_resampling":
             shape, "class_locations": locations, "bbox_used_for_cropping": [[0, s] for s in shape]}
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_s, chunks_s = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, props, os.path.join(folder, name), chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_s, blocks_seg=blocks_s)


def write_tiny_dataset(preprocessed_root, dataset_name="Dataset950_Fake", n_cases=10, n_val=2, labeled=True,
                       plans=None, seed=0, case_prefix="case", with_splits=True, image_shows_labels=False):
    """A preprocessed dataset (plans, dataset.json, splits_final.json, blosc2 cases). Returns (plans, dataset_json,
    train_keys, val_keys)."""
    folder = os.path.join(str(preprocessed_root), dataset_name)
    plans = copy.deepcopy(plans or tiny_plans(dataset_name))
    plans["dataset_name"] = dataset_name
    data_folder = os.path.join(folder, plans["configurations"][CONFIG]["data_identifier"])
    os.makedirs(data_folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    keys = [f"{case_prefix}_{i:03d}" for i in range(n_cases)]
    for k in keys:
        _write_case(data_folder, k, rng, labeled=labeled, image_shows_labels=image_shows_labels)
    dataset_json = dict(DATASET_JSON, numTraining=n_cases)
    if not labeled:
        dataset_json = dict(dataset_json, labels={"background": 0}, nnunet_ssl={"unlabeled": True})
    with open(os.path.join(folder, plans["plans_name"] + ".json"), "w") as f:
        json.dump(plans, f)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f)
    with open(os.path.join(folder, "dataset_fingerprint.json"), "w") as f:
        json.dump({}, f)
    val_keys = keys[:n_val]
    train_keys = keys[n_val:]
    if with_splits:
        with open(os.path.join(folder, "splits_final.json"), "w") as f:
            json.dump([{"train": train_keys, "val": val_keys}], f)
    return plans, dataset_json, train_keys, val_keys


def make_trainer(trainer_class, plans, dataset_json, fold=0, configuration=CONFIG):
    import torch
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    return trainer_class(plans, configuration, fold, dict(dataset_json), device=torch.device("cpu"))
