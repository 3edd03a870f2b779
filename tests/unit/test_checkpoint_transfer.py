"""Checkpoint files and the fine-tuning weight transfer (no nnU-Net training needed)."""
import os

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_ssl.weights.checkpoint import atomic_torch_save, load_checkpoint_file
from nnunet_ssl.errors import UserInputError
from nnunet_ssl.settings import COMMON_SETTINGS, parse_settings
from nnunet_ssl.weights.transfer import adapt_in_proj, transfer_weights


def plain(in_ch=1, classes=3, features=(4, 8, 16)):
    return PlainConvUNet(in_ch, len(features), list(features), nn.Conv3d, 3, [1, 2, 2], 2, classes, 1, True,
                         nn.InstanceNorm3d, {"affine": True}, nonlin=nn.LeakyReLU)


def resenc(in_ch=1, classes=3):
    return ResidualEncoderUNet(in_ch, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], classes, 1, True,
                               nn.InstanceNorm3d, {"affine": True}, nonlin=nn.LeakyReLU)


def ckpt_of(net, **extra):
    return dict({"network_weights": {k: v.clone() for k, v in net.state_dict().items()}}, **extra)


@pytest.mark.parametrize("make", [plain, resenc])
def test_transfer_loads_everything_but_the_output_layer(make):
    torch.manual_seed(0)
    src, dst = make(classes=1), make(classes=3)
    report = transfer_weights(dst, ckpt_of(src))
    for k, v in dst.state_dict().items():
        if ".seg_layers." in k:
            assert any(k == s for s, _ in report.skipped)
        else:
            assert torch.equal(v, src.state_dict()[k]), k
    assert report.loaded and not report.adapted
    assert "loaded   encoder." in report.summary()


def test_aliased_encoder_keys_all_get_the_loaded_value():
    src, dst = plain(), plain()
    transfer_weights(dst, ckpt_of(src))
    sd = dst.state_dict()
    for k in sd:
        if k.startswith("decoder.encoder."):
            assert torch.equal(sd[k], src.state_dict()[k[len("decoder."):]])


def test_decoder_skipped_when_disabled_and_wrapper_prefixes_are_stripped():
    src, dst = plain(), plain()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    ckpt = {"network_weights": {"module." + k: v for k, v in src.state_dict().items()}}
    report = transfer_weights(dst, ckpt, load_decoder=False)
    assert torch.equal(dst.state_dict()["encoder.stages.0.0.convs.0.conv.weight"],
                       src.state_dict()["encoder.stages.0.0.convs.0.conv.weight"])
    assert torch.equal(dst.state_dict()["decoder.stages.0.convs.0.conv.weight"],
                       before["decoder.stages.0.convs.0.conv.weight"])
    assert any(why == "decoder transfer disabled" for _, why in report.skipped)


def test_stem_adapted_to_another_channel_count():
    torch.manual_seed(0)
    src, dst = plain(in_ch=1), plain(in_ch=3)
    report = transfer_weights(dst, ckpt_of(src))
    assert any("input channels 1 -> 3" in why for _, why in report.adapted)
    w_src = src.state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    w_dst = dst.state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    assert w_dst.shape[1] == 3
    # an image fed identically to every channel gives the pre-trained response
    x = torch.randn(1, 1, 8, 8, 8)
    conv_src = torch.nn.functional.conv3d(x, w_src, padding=1)
    conv_dst = torch.nn.functional.conv3d(x.repeat(1, 3, 1, 1, 1), w_dst, padding=1)
    assert torch.allclose(conv_src, conv_dst, atol=1e-5)
    assert torch.allclose(adapt_in_proj(torch.ones(2, 2, 1), 4), torch.full((2, 4, 1), 0.5))


def test_incompatible_checkpoint_names_first_mismatching_layer_and_shapes():
    src, dst = plain(features=(4, 8, 32)), plain(features=(4, 8, 16))
    with pytest.raises(UserInputError) as e:
        transfer_weights(dst, ckpt_of(src))
    msg = str(e.value)
    assert "first mismatching layer 'encoder.stages.2.0.convs.0.conv.weight'" in msg
    assert "(32, 8, 3, 3, 3)" in msg and "(16, 8, 3, 3, 3)" in msg
    with pytest.raises(UserInputError, match="shares no encoder layer"):
        transfer_weights(plain(), ckpt_of(resenc()))


def test_nnssl_style_checkpoint_loads():
    src, dst = resenc(), resenc()
    ckpt = ckpt_of(src, nnssl_adaptation_plan={"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
                                               "keys_to_in_proj": ["encoder.stem.convs.0.conv"],
                                               "pretrain_num_input_channels": 1, "key_to_lpe": None})
    transfer_weights(dst, ckpt)
    assert torch.equal(dst.state_dict()["encoder.stem.convs.0.conv.weight"],
                       src.state_dict()["encoder.stem.convs.0.conv.weight"])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save({"network_weights": {"a": torch.ones(2)}}, str(target))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"network_weights": {"a": torch.zeros(2)}, "x": Boom()}, str(target))
    assert torch.equal(load_checkpoint_file(str(target))["network_weights"]["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]


def test_bad_checkpoint_files_give_clear_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_checkpoint_file(str(tmp_path / "missing.pth"))
    good = tmp_path / "good.pth"
    torch.save({"network_weights": {"a": torch.randn(1000)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(UserInputError, match="truncated or not a checkpoint"):
        load_checkpoint_file(str(truncated))
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(UserInputError, match="truncated or not a checkpoint"):
        load_checkpoint_file(str(text))
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(UserInputError, match="no 'network_weights'"):
        load_checkpoint_file(str(other))


def test_cuda_saved_checkpoint_loads_on_cpu(tmp_path, monkeypatch):
    """Write a file whose storages are tagged 'cuda:0' (as a GPU run writes them) and load it without a GPU."""
    import torch.serialization as ser
    path = tmp_path / "cuda.pth"
    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:0")
    torch.save({"network_weights": {"w": torch.arange(4.0)}}, path)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(Exception):
            torch.load(path, weights_only=False)  # what stock nnU-Net does: fails on a CPU-only machine
    ckpt = load_checkpoint_file(str(path))
    assert ckpt["network_weights"]["w"].device.type == "cpu"
    assert torch.equal(ckpt["network_weights"]["w"], torch.arange(4.0))


def test_settings_parse_and_reject_unknown_names():
    assert parse_settings("num_epochs=2, initial_lr=0.5", COMMON_SETTINGS) == {"num_epochs": 2, "initial_lr": 0.5}
    with pytest.raises(UserInputError, match="unknown setting 'epochs'.*Accepted: .*num_epochs"):
        parse_settings("epochs=2", COMMON_SETTINGS)
    with pytest.raises(UserInputError, match="not a valid int"):
        parse_settings("num_epochs=two", COMMON_SETTINGS)
    with pytest.raises(UserInputError, match="name=value"):
        parse_settings("num_epochs", COMMON_SETTINGS)


# ---------------------------------------------------------------- which checkpoints transfer their decoder

def test_recommended_load_decoder_follows_the_trainer_then_the_checkpoint_then_loads():
    from nnunet_ssl.weights.transfer import recommended_load_decoder
    from nnunet_ssl_trainers.finetune import _decoder_transfers_of
    ours = {"kind": "pretraining"}
    # the trainer that wrote it, as the code stands now, wins over what the checkpoint recorded then (an IDEAL
    # checkpoint written before IDEAL's route check recorded True)
    load, why = recommended_load_decoder({"trainer_name": "IDEALTrainer",
                                          "nnunet_ssl": dict(ours, transfer_decoder=True)}, _decoder_transfers_of)
    assert load is False and "load_decoder=True loads it" in why and why.startswith("IDEALTrainer")
    assert recommended_load_decoder({"trainer_name": "PGLTrainer", "nnunet_ssl": dict(ours, transfer_decoder=False)},
                                    _decoder_transfers_of)[0] is True
    # a trainer that cannot be asked (not ours any more, not importable): the checkpoint's record decides
    assert recommended_load_decoder({"trainer_name": "GoneTrainer", "nnunet_ssl": dict(ours, transfer_decoder=False)},
                                    _decoder_transfers_of)[0] is False
    # without a record: the trainer class decides (variants inherit it)
    for name, expected in [("MAETrainer", False), ("GMIMTrainer_noSiamese", False), ("ReFsTrainer", False),
                           ("ReFsTrainer_PGL", True), ("PGLTrainer", True), ("IDEALTrainer", False),
                           ("IDEALTrainer_deepLevels", False), ("SomebodyElsesTrainer", True)]:
        got, _ = recommended_load_decoder({"trainer_name": name, "nnunet_ssl": ours}, _decoder_transfers_of)
        assert got is expected, name
    # not a pre-training checkpoint of ours (nnssl, stock nnU-Net): decoder loaded, whatever the name
    assert recommended_load_decoder({"trainer_name": "MAETrainer"}, _decoder_transfers_of)[0] is True
    assert recommended_load_decoder({"network_weights": {}})[0] is True


@pytest.mark.parametrize("make", [plain, resenc])
def test_reinit_encoder_stages_keeps_the_first_stages_at_their_initialisation(make):
    from nnunet_ssl.weights.network_parts import encoder_stage_of
    assert [encoder_stage_of(k) for k in ("encoder.stages.1.0.convs.0.conv.weight", "encoder.stem.convs.0.conv.weight",
                                          "decoder.encoder.stages.2.0.convs.1.norm.bias",
                                          "decoder.stages.0.convs.0.conv.weight")] == [1, 0, 2, None]
    torch.manual_seed(0)
    checkpoint = {"network_weights": {k: v + 1.0 for k, v in make().state_dict().items()}}
    target = make()
    initial = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, checkpoint, reinit_encoder_stages=2)
    after = target.state_dict()
    early = [k for k in after if encoder_stage_of(k) is not None and encoder_stage_of(k) < 2]
    late = [k for k in after if encoder_stage_of(k) is not None and encoder_stage_of(k) >= 2]
    assert early and late
    assert all(torch.equal(after[k], initial[k]) for k in early)
    assert all(torch.equal(after[k], checkpoint["network_weights"][k]) for k in late)
    assert {k for k, _ in report.skipped} >= set(early)
