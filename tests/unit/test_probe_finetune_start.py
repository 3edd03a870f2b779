"""scripts/probe_finetune_start.py: the first-step gradient probe behind the decoder-transfer default (README).

The probe must (1) see a blocked decoder when there is one, (2) run end to end on an nnU-Net preprocessed dataset
with a real checkpoint file and print a row per checkpoint against the random network, (3) refuse bad arguments
with a message, not a traceback.
"""
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_nnunet_data import CONFIG, tiny_plans, write_tiny_dataset  # noqa: E402

DATASET = "Dataset950_Fake"


@pytest.fixture(scope="module")
def probe_mod(load_script):
    return load_script("probe_finetune_start")


def _network(plans, seed=0):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = plans["configurations"][CONFIG]["architecture"]
    torch.manual_seed(seed)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                  deep_supervision=False)


def test_a_2d_configuration_probes_the_middle_slice_of_3d_cases(probe_mod):
    """ACDC's 2d plans on its stacks (C, Z, Y, X): the probe's batch holds each case's middle slice, centred."""
    import numpy as np
    case = np.zeros((1, 9, 30, 41), dtype=np.float32)
    case[0, 4] = 1.0  # the middle slice
    case[0, 4, 0, 0] = 5.0  # cropped away: the centre 20 x 21 of 30 x 41 starts at (5, 10)
    out = probe_mod._center_crop_or_pad(case, (20, 21))
    assert out.shape == (1, 20, 21) and out.min() == out.max() == 1.0
    assert probe_mod._center_crop_or_pad(case, (12, 32, 32)).shape == (1, 12, 32, 32)  # 3d: padded as before


def _close_last_decoder_stage(net):
    """What reconstruction pre-training did to MAE/GMIM decoders, exaggerated: norm scales ~0, shifts negative."""
    with torch.no_grad():
        for m in net.decoder.stages[-1].modules():
            if isinstance(m, torch.nn.InstanceNorm3d):
                m.weight.mul_(0.01)
                m.bias.fill_(-2.0)


@pytest.fixture
def tiny_env(tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    plans, *_ = write_tiny_dataset(pre, DATASET, n_cases=4, n_val=1, plans=tiny_plans(DATASET))
    return dict(pre=pre, plans=plans, tmp=tmp_path)


def _batch(probe_mod, tiny_env, n=2):
    folder = tiny_env["pre"] / DATASET / tiny_env["plans"]["configurations"][CONFIG]["data_identifier"]
    return probe_mod.load_batch(str(folder), tiny_env["plans"]["configurations"][CONFIG]["patch_size"], n)


def _loss():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)


def test_load_batch_crops_to_the_patch_and_maps_outside_mask_to_background(probe_mod, tiny_env):
    x, y = _batch(probe_mod, tiny_env, n=3)
    assert x.shape == (3, 1, 16, 16, 16) and y.shape == (3, 1, 16, 16, 16)
    assert y.dtype == torch.long and int(y.min()) >= 0 and set(y.unique().tolist()) == {0, 1, 2}


def test_probe_sees_a_blocked_decoder(probe_mod, tiny_env, one_thread):
    x, y = _batch(probe_mod, tiny_env)
    open_ = probe_mod.probe(_network(tiny_env["plans"]), x, y, _loss())
    blocked_net = _network(tiny_env["plans"])
    _close_last_decoder_stage(blocked_net)
    blocked = probe_mod.probe(blocked_net, x, y, _loss())
    assert open_["encoder"] > 0 and open_["output layer"] > 0
    # the same weights apart from one decoder stage: far less gradient reaches the encoder, fewer features positive
    assert blocked["encoder"] < 0.2 * open_["encoder"]
    assert blocked["positive"] < 0.5 * open_["positive"]
    assert blocked["std_median"] < open_["std_median"]


def test_main_prints_one_row_per_checkpoint(probe_mod, tiny_env, capsys, one_thread):
    from nnunet_ssl.weights.checkpoint import atomic_torch_save
    plans = tiny_env["plans"]
    same = _network(plans)  # the probe's random network uses seed 0 too: the "same" checkpoint is that network
    blocked = _network(plans, seed=0)
    _close_last_decoder_stage(blocked)
    paths = {}
    for name, net in (("same", same), ("blocked", blocked)):
        paths[name] = tiny_env["tmp"] / f"{name}.pth"
        atomic_torch_save({"network_weights": net.state_dict()}, str(paths[name]))
    probe_mod.main(["-d", DATASET, "-p", plans["plans_name"], "--cases", "2",
                    f"same={paths['same']}", f"blocked={paths['blocked']}"])
    out = capsys.readouterr().out
    ratio = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([\w ]+) \| [-\d.]+ \| [\d.]+ \| ([\d.]+)x",
                                                                out, re.M)}
    assert set(ratio) == {"random init", "same", "blocked"}, out
    assert ratio["random init"] == 1.0 and ratio["same"] == pytest.approx(1.0, abs=0.01)
    assert ratio["blocked"] < 0.2
    # encoder only: the closed decoder is not transferred, so the blocked checkpoint behaves like the random network
    probe_mod.main(["-d", DATASET, "-p", plans["plans_name"], "--cases", "2", "--encoder-only",
                    f"blocked={paths['blocked']}"])
    out = capsys.readouterr().out
    assert "transfer: encoder only" in out
    assert re.search(r"^\| blocked \| [-\d.]+ \| [\d.]+ \| 1\.00x", out, re.M), out


def test_bad_checkpoint_argument_is_a_usage_error(probe_mod, tiny_env, capsys):
    with pytest.raises(SystemExit) as exc:
        probe_mod.main(["-d", DATASET, f"x={tiny_env['tmp'] / 'missing.pth'}"])
    assert exc.value.code == 2
    assert "expected NAME=PATH of an existing checkpoint file" in capsys.readouterr().err


def test_effective_rank_table_shows_a_collapsed_first_stage_and_the_reinit_setting(probe_mod, tiny_env, capsys,
                                                                                    one_thread):
    from nnunet_ssl.weights.checkpoint import atomic_torch_save
    plans = tiny_env["plans"]
    collapsed = _network(plans)
    with torch.no_grad():  # every filter of stage 0 the same: its output carries one signal
        for conv in (collapsed.encoder.stages[0][0].convs[0].conv, collapsed.encoder.stages[0][0].convs[1].conv):
            conv.weight.copy_(conv.weight[:1].expand_as(conv.weight))
    path = tiny_env["tmp"] / "collapsed.pth"
    atomic_torch_save({"network_weights": collapsed.state_dict()}, str(path))

    def stage0(out, label):
        m = re.search(rf"^\| {label} \| ([\d.]+) \|", out.split("Effective rank")[1], re.M)
        return float(m.group(1))

    probe_mod.main(["-d", DATASET, "-p", plans["plans_name"], "--cases", "2", f"collapsed={path}"])
    out = capsys.readouterr().out
    assert stage0(out, "collapsed") < 1.5 < stage0(out, "random init")
    probe_mod.main(["-d", DATASET, "-p", plans["plans_name"], "--cases", "2", "--reinit-encoder-stages", "1",
                    f"collapsed={path}"])
    out = capsys.readouterr().out
    assert stage0(out, "collapsed") == pytest.approx(stage0(out, "random init"))
