"""Access to the parts of nnU-Net's networks (PlainConvUNet, ResidualEncoderUNet) that SSL methods need.

nnU-Net's networks expose ``.encoder`` (returns the list of stage outputs, bottleneck last) and ``.decoder``
(``transpconvs``, ``stages``, ``seg_layers``). The decoder only returns segmentation logits; methods that need
dense decoder features (PGL's higher-resolution level, IDEAL) run the decoder loop here instead.
"""
import re
from typing import List, Optional, Sequence

import torch
from torch import nn


def unwrap(network: nn.Module) -> nn.Module:
    """The plain network behind DDP and torch.compile wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(getattr(network, "module"), nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def encoder_features(network: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """Stage outputs of the encoder, highest resolution first, bottleneck last."""
    return list(unwrap(network).encoder(x))


def decoder_features(network: nn.Module, skips: Sequence[torch.Tensor], num_levels: int = None
                     ) -> List[torch.Tensor]:
    """Decoder stage outputs (before ``seg_layers``), coarsest first.

    ``num_levels`` limits how many decoder stages run (1 = only the stage right above the bottleneck), which saves
    compute when only a coarse dense level is needed.
    """
    decoder = unwrap(network).decoder
    n = len(decoder.stages) if num_levels is None else min(num_levels, len(decoder.stages))
    x = skips[-1]
    outputs = []
    for s in range(n):
        x = decoder.transpconvs[s](x)
        x = torch.cat((x, skips[-(s + 2)]), 1)
        x = decoder.stages[s](x)
        outputs.append(x)
    return outputs


def encoder_stage_channels(network: nn.Module) -> List[int]:
    enc = unwrap(network).encoder
    return list(enc.output_channels)


def decoder_stage_channels(network: nn.Module) -> List[int]:
    """Output channels of each decoder stage, coarsest first."""
    return list(encoder_stage_channels(network)[:-1][::-1])


def encoder_key_prefix(network: nn.Module) -> str:
    """State-dict prefix of the encoder (``encoder.``); the decoder holds the same modules as ``decoder.encoder.``."""
    return "encoder."


def is_encoder_key(key: str) -> bool:
    return key.startswith("encoder.") or key.startswith("decoder.encoder.")


_STAGE_RE = re.compile(r"^(?:decoder\.)?encoder\.(?:stages\.(\d+)|stem)\.")


def encoder_stage_of(key: str) -> Optional[int]:
    """The encoder stage a state-dict key belongs to (the stem of a ResidualEncoderUNet counts as stage 0); None
    outside the encoder."""
    m = _STAGE_RE.match(key)
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) is not None else 0


def encoder_parameters(network: nn.Module):
    """(name, parameter) pairs of the encoder only, each parameter once."""
    return [("encoder." + n, p) for n, p in unwrap(network).encoder.named_parameters()]


def spatial_ndim(network: nn.Module) -> int:
    conv = unwrap(network).encoder.conv_op
    return {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[conv]


class capture_output:
    """Context manager recording the output of ``module`` during forwards run inside it.

    Lets a trainer call ``self.network(x)`` (through DDP/compile wrappers, so gradients are synchronised) and
    still read intermediate results such as the encoder's skip list::

        with capture_output(unwrap(self.network).encoder) as tap:
            out = self.network(x)
        skips = tap.output
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.output = None
        self._handle = None

    def _hook(self, module, inputs, output):
        self.output = output

    def __enter__(self):
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False
