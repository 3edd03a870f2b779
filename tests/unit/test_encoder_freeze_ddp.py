"""EncoderFreeze under DistributedDataParallel (gloo, CPU, 2 processes, different data per rank).

The freeze is set before DDP wraps the network, as in SSLFinetuneTrainer (nnU-Net configures the optimizer, then
wraps). While frozen the ranks step without DDP errors and the encoder stays bit-identical to its start; after
release the encoder trains and both ranks stay identical (its gradients are synchronised, which switching
requires_grad after wrapping would not give).
"""

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ssl.weights.encoder_freeze import EncoderFreeze, non_encoder_parameters

from gloo_ranks import run_on_gloo_ranks

WORLD = 2


def _unet():
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 2, 3, 1, True, nn.InstanceNorm3d,
                         {"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=True)


def _step(model, opt, rank, step):
    g = torch.Generator().manual_seed(100 * rank + step)
    x = torch.randn(2, 1, 8, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 8, 8, 8), generator=g)
    opt.zero_grad()
    # deep supervision: every segmentation layer is used (DDP requires all parameters to get a gradient)
    loss = sum(nn.functional.cross_entropy(o, y[:, ::8 // o.shape[-1], ::8 // o.shape[-1], ::8 // o.shape[-1]])
               for o in model(x))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
    opt.step()


def _rank(rank):
    net = _unet()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    freeze = EncoderFreeze(net)
    freeze.freeze()
    opt = torch.optim.SGD(non_encoder_parameters(net), 0.05, momentum=0.9)
    model = DDP(net)
    for step in range(2):
        _step(model, opt, rank, step)
    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    freeze.release()
    opt = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9)
    for step in range(2, 4):
        _step(model, opt, rank, step)
    return {"start": start, "frozen": frozen, "end": net.state_dict()}


def test_frozen_encoder_under_ddp():
    out = run_on_gloo_ranks(_rank, WORLD, preload=["nnunet_ssl.weights.encoder_freeze", __name__])
    start, frozen, end = out[0]["start"], out[0]["frozen"], out[0]["end"]
    enc = [k for k in start if k.startswith("encoder.") and start[k].is_floating_point()]
    rest = [k for k in start if not k.startswith("encoder.") and not k.startswith("decoder.encoder.")]
    assert enc and rest
    assert all(torch.equal(start[k], frozen[k]) for k in enc)  # frozen: untouched on rank 0 ...
    assert any(not torch.equal(start[k], frozen[k]) for k in rest)  # ... while the decoder trained
    assert any(not torch.equal(frozen[k], end[k]) for k in enc)  # released: the encoder trains
    for k in end:  # ranks saw different data and stay identical (gradients synchronised in both phases)
        assert torch.equal(end[k], out[1]["end"][k]) and torch.equal(frozen[k], out[1]["frozen"][k]), k
