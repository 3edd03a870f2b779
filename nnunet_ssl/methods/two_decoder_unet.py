"""IDEAL's fine-tuning network: one shared encoder, two decoders of different architecture.

Paper: Basak et al., "IDEAL: Improved DEnse locAL Contrastive Learning for Semi-Supervised Medical Image
Segmentation", ICASSP 2023 (arXiv 2210.15075): semi-supervised fine-tuning with one encoder and two decoders whose
predictions supervise each other on unlabeled data.

:class:`TwoDecoderUNet` wraps the nnU-Net network of the plans (``PlainConvUNet`` or ``ResidualEncoderUNet``):

* ``encoder`` and ``decoder`` are that network's own modules, so the state dict keeps its names (``encoder.*``,
  ``decoder.*``, with nnU-Net's ``decoder.encoder.*`` aliases) and pre-trained weights load by name;
* ``decoder_b`` (:class:`InterpolationDecoder`) upsamples by a 1x1 convolution at the lower resolution followed by
  linear interpolation (bilinear in 2d, trilinear in 3d), where ``decoder`` uses transposed convolutions; same
  stage widths, kernel sizes, norm and nonlinearity. (The usual interpolation decoder of two-decoder
  semi-supervised segmentation networks; a 3x3 convolution after the interpolation instead cost 1.5x decoder A.)
  It receives the encoder's skips as input and does not hold the encoder, so there are no ``decoder_b.encoder.*``
  keys;
* ``decoder_b`` follows ``decoder.deep_supervision`` (the flag nnU-Net's ``set_deep_supervision_enabled`` sets).

Outputs:

* ``forward_both(x)`` -> ``(outputs_a, outputs_b)``: each a list of logits per scale (full resolution first) with
  deep supervision, else one tensor. The trainer uses this.
* ``forward(x)`` in training mode: decoder A only (what nnU-Net's loss expects, e.g. for stock code paths).
* ``forward(x)`` in eval mode: ``log((softmax(a) + softmax(b)) / 2)`` per scale: valid logits whose softmax is the
  average of both decoders' probabilities, which is what nnU-Net's predictor, validation and export need.
"""
import math
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InterpolationDecoder", "TwoDecoderUNet", "average_softmax_logits"]

Outputs = Union[torch.Tensor, List[torch.Tensor]]


class InterpolationDecoder(nn.Module):
    """U-Net decoder that upsamples by a 1x1 conv + interpolation (no transposed convolutions).

    Built from an nnU-Net encoder's hyperparameters (``output_channels``, ``kernel_sizes``, ``conv_op``, norm,
    dropout, nonlinearity); the encoder itself is not stored. ``forward(skips)`` takes the encoder's output list
    (bottleneck last) and returns logits like nnU-Net's ``UNetDecoder``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, n_conv_per_stage: Union[int, Sequence[int]] = 2,
                 deep_supervision: bool = False):
        super().__init__()
        from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
        channels = list(encoder.output_channels)
        n_stages = len(channels) - 1
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        if len(n_conv_per_stage) != n_stages:
            raise ValueError(f"n_conv_per_stage needs {n_stages} entries, got {list(n_conv_per_stage)}")
        conv_op = encoder.conv_op
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.ndim = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[conv_op]
        self.mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.ndim]
        common = dict(conv_bias=encoder.conv_bias, norm_op=encoder.norm_op, norm_op_kwargs=encoder.norm_op_kwargs,
                      dropout_op=encoder.dropout_op, dropout_op_kwargs=encoder.dropout_op_kwargs,
                      nonlin=encoder.nonlin, nonlin_kwargs=encoder.nonlin_kwargs)
        upconvs, stages, seg_layers = [], [], []
        for s in range(1, n_stages + 1):
            below, skip = channels[-s], channels[-(s + 1)]
            kernel = encoder.kernel_sizes[-(s + 1)]
            upconvs.append(conv_op(below, skip, 1, 1, 0, bias=encoder.conv_bias))  # at the lower resolution
            stages.append(StackedConvBlocks(n_conv_per_stage[s - 1], conv_op, 2 * skip, skip, kernel, 1, **common))
            seg_layers.append(conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.upconvs = nn.ModuleList(upconvs)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: Sequence[torch.Tensor]) -> Outputs:
        x = skips[-1]
        seg_outputs = []
        last = len(self.stages) - 1
        for s in range(len(self.stages)):
            skip = skips[-(s + 2)]
            x = F.interpolate(self.upconvs[s](x), size=skip.shape[2:], mode=self.mode, align_corners=False)
            x = self.stages[s](torch.cat((x, skip), 1))
            if self.deep_supervision or s == last:
                seg_outputs.append(self.seg_layers[s](x))
        seg_outputs = seg_outputs[::-1]  # full resolution first, like nnU-Net
        return seg_outputs if self.deep_supervision else seg_outputs[0]


def average_softmax_logits(a: Outputs, b: Outputs) -> Outputs:
    """``log((softmax(a) + softmax(b)) / 2)`` over the channel axis, per deep-supervision scale (float32)."""
    if isinstance(a, (list, tuple)):
        return [average_softmax_logits(x, y) for x, y in zip(a, b)]
    la = torch.log_softmax(a.float(), dim=1)
    lb = torch.log_softmax(b.float(), dim=1)
    return torch.logaddexp(la, lb) - math.log(2.0)


class TwoDecoderUNet(nn.Module):
    """An nnU-Net U-Net (its ``encoder`` and ``decoder``) plus a second decoder ``decoder_b``. See module doc."""

    def __init__(self, unet: nn.Module, num_classes: int, n_conv_per_stage_b: Union[int, Sequence[int], None] = None):
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder") and hasattr(unet.decoder, "stages")
                and hasattr(unet.encoder, "output_channels")):
            raise TypeError(f"{type(unet).__name__} is not an nnU-Net U-Net with .encoder/.decoder (PlainConvUNet or "
                            f"ResidualEncoderUNet): IDEAL's two-decoder network cannot be built from it.")
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        if n_conv_per_stage_b is None:
            n_conv_per_stage_b = [len(getattr(st, "convs", [None, None])) for st in unet.decoder.stages]
        self.decoder_b = InterpolationDecoder(unet.encoder, num_classes, n_conv_per_stage_b,
                                              deep_supervision=bool(unet.decoder.deep_supervision))
        # attributes nnssl adaptation plans and our weight transfer read from nnU-Net networks
        for attr in ("key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe"):
            if hasattr(unet, attr):
                setattr(self, attr, getattr(unet, attr))
        self.unet_class_name = type(unet).__name__

    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    def _decode_b(self, skips) -> Outputs:
        self.decoder_b.deep_supervision = bool(self.decoder.deep_supervision)  # follow nnU-Net's flag
        return self.decoder_b(skips)

    def forward_both(self, x: torch.Tensor):
        """``(outputs_a, outputs_b)`` of the two decoders on a shared encoding of ``x``."""
        skips = self.encoder(x)
        return self.decoder(skips), self._decode_b(skips)

    def forward(self, x: torch.Tensor, both: bool = False):
        if both:  # lets wrapped networks (DDP, torch.compile) run forward_both through their own __call__
            return self.forward_both(x)
        if self.training:
            return self.decoder(self.encoder(x))
        a, b = self.forward_both(x)
        return average_softmax_logits(a, b)

