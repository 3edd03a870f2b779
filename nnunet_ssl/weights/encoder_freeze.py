"""Holding a network's encoder still while the rest of it trains (the decoder-first warm-up of a fine-tune).

A pre-trained encoder meets a randomly initialised decoder at the start of fine-tuning; the first, large gradients
of that decoder can rewrite the encoder's features before the decoder has learnt to read them (linear-probe-then-
fine-tune in the transfer-learning literature, nnssl's decoder warm-up). :class:`EncoderFreeze` lets the decoder
(and segmentation layers) train alone first.

How: the encoder's parameters stay in the graph and keep ``requires_grad``; a gradient hook replaces their
gradient by zeros while frozen. Switching ``requires_grad`` instead would break DistributedDataParallel, which
fixes the set of parameters it synchronises when it wraps the network (frozen at wrap time: never synchronised
later; unfrozen at wrap time: "expected to have finished reduction" errors). With the hook every rank reduces
zeros for the encoder, gradient clipping sees only the decoder's gradient, and the optimizer of the frozen phase
is built from :func:`non_encoder_parameters`, so momentum and weight decay leave the encoder untouched as well.
"""
from typing import List

import torch
from torch import nn

from nnunet_ssl.weights.network_parts import encoder_parameters, unwrap


def non_encoder_parameters(network: nn.Module) -> List[nn.Parameter]:
    """Every parameter outside the encoder, each once (nnU-Net's decoders hold a reference to the encoder, so
    ``decoder.parameters()`` alone would include it)."""
    encoder_ids = {id(p) for _, p in encoder_parameters(network)}
    return [p for p in unwrap(network).parameters() if id(p) not in encoder_ids]


class EncoderFreeze:
    """``freeze()`` zeroes the encoder's gradients until ``release()``; idempotent both ways."""

    def __init__(self, network: nn.Module):
        self.network = network
        self._handles = []

    @property
    def frozen(self) -> bool:
        return bool(self._handles)

    def freeze(self) -> None:
        if self.frozen:
            return
        self._handles = [p.register_hook(torch.zeros_like) for _, p in encoder_parameters(self.network)
                         if p.requires_grad]

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
