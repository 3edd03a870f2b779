"""Issue 23 item 7: a checkpoint in nnssl's own save format loads through SSLFinetuneTrainer's transfer.

The file is built from nnssl's documented structure (MIC-DKFZ/nnssl: ``AbstractBaseTrainer.save_checkpoint``
writes ``network_weights``, ``optimizer_state``, ``grad_scaler_state`` (None on CPU), ``logging``, ``_best_ema``,
``current_epoch``, ``init_args``, ``trainer_name``; its checkpoints carry ``nnssl_adaptation_plan``, the
``AdaptationPlan.serialize()`` dict: ``architecture_plans`` {arch_class_name, arch_kwargs with class paths as
strings, arch_kwargs_requiring_import}, ``pretrain_plan`` (the nnssl Plan as a dict), ``pretrain_num_input_channels``,
``recommended_downstream_patchsize``, ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj``, ``key_to_lpe``;
numpy values converted to Python so the file loads with ``weights_only=True``). The network is nnssl's ResEnc
U-Net family (``ResidualEncoderUNet`` of dynamic_network_architectures, the class nnssl's ``ResEncL`` preset
builds), saved without wrappers. The loading path is the trainer's: ``load_checkpoint_file`` ->
``recommended_load_decoder`` -> ``transfer_weights``.
"""
import torch

from nnunet_ssl.weights.checkpoint import load_checkpoint_file
from nnunet_ssl.weights.network_parts import is_encoder_key
from nnunet_ssl.weights.transfer import recommended_load_decoder, transfer_weights

from real_networks import RESENC, architecture, build

STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
FEATURES = [8, 16, 32]


def _resenc_entry():
    entry = architecture(RESENC, STRIDES, features=FEATURES, n_conv=1)
    entry["arch_kwargs"]["n_blocks_per_stage"] = [1, 2, 2]
    entry["arch_kwargs"].pop("n_conv_per_stage", None)
    return entry


def nnssl_checkpoint(network: torch.nn.Module, arch_kwargs: dict) -> dict:
    """A checkpoint as nnssl's MAE pre-training writes it (see module doc)."""
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    configuration = {"data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
                     "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"],
                     "use_mask_for_norm": False, "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                                   "force_separate_z": None},
                     "resampling_fn_mask": "resample_data_or_seg_to_shape",
                     "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
                     "spacing": [1, 1, 1], "patch_size": [16, 16, 16], "batch_size": 2}
    plan = {"dataset_name": "Dataset802_OpenNeuro", "plans_name": "nnsslPlans",
            "original_median_spacing_after_transp": [1, 1, 1], "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "configurations": {"onemmiso": configuration}}
    requiring_import = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    adaptation_plan = {
        "architecture_plans": {"arch_class_name": "ResidualEncoderUNet", "arch_kwargs": arch_kwargs,
                               "arch_kwargs_requiring_import": requiring_import},
        "pretrain_plan": plan,
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": [16, 16, 16],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"train_losses": [0.9, 0.7], "val_losses": [0.95, 0.8], "lrs": [0.01, 0.005],
                    "epoch_start_timestamps": [1.0, 2.0], "epoch_end_timestamps": [1.5, 2.5]},
        "_best_ema": 0.8,
        "current_epoch": 2,
        "init_args": {"plan": plan, "configuration_name": "onemmiso", "fold": "all",
                      "pretrain_json": {"collection_name": "OpenNeuro"}, "device": "cpu"},
        "trainer_name": "BaseMAETrainer",
        "nnssl_adaptation_plan": adaptation_plan,
    }


def test_nnssl_saved_checkpoint_loads_through_the_finetune_transfer(tmp_path):
    entry = _resenc_entry()
    source = build(entry, input_channels=1, num_classes=1)  # nnssl MAE: 1 reconstruction output channel
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnssl_checkpoint(source, entry["arch_kwargs"]), path)

    ckpt = load_checkpoint_file(str(path))  # weights-only load, as the trainer does
    assert ckpt["trainer_name"] == "BaseMAETrainer" and "nnssl_adaptation_plan" in ckpt
    load_decoder, why = recommended_load_decoder(ckpt)
    # nnssl's own fine-tuning loads encoder and stem only (its decoders reconstruct the input): so do we by default
    assert not load_decoder and "BaseMAETrainer" in why and "nnssl" in why

    target = build(entry, input_channels=2, num_classes=3)  # downstream: 2 modalities, 3 classes
    initial = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, ckpt, load_decoder=load_decoder)
    src, dst = source.state_dict(), target.state_dict()
    stem = "encoder.stem.convs.0.conv.weight"
    assert (stem, "input channels 1 -> 2 (stem adapted)") in report.adapted
    assert torch.allclose(dst[stem], src[stem].repeat(1, 2, 1, 1, 1) / 2)
    encoder = [k for k in dst if is_encoder_key(k) and "stem.convs.0" not in k]
    assert len(encoder) > 20
    for k in encoder:
        assert torch.equal(dst[k], src[k]), k
    decoder = [k for k in dst if k.startswith(("decoder.stages.", "decoder.transpconvs."))]
    assert decoder and all(torch.equal(dst[k], initial[k]) for k in decoder)  # left at the initialisation

    # load_decoder=True (NNUNET_SSL_SETTINGS) still loads it, all but the output layer
    target = build(entry, input_channels=2, num_classes=3)
    report = transfer_weights(target, ckpt, load_decoder=True)
    dst = target.state_dict()
    assert decoder and all(torch.equal(dst[k], src[k]) for k in decoder)
    assert all(".seg_layers." in k for k, _ in report.skipped)
    assert not report.unused_in_checkpoint or all(".seg_layers." in k for k in report.unused_in_checkpoint)
