"""How many directions do a network's encoder features use? (effective rank, Roy & Vetterli 2007)

``effective_rank(f)`` of a feature map ``(B, C, *spatial)``: the channels are centred over all voxels of the batch,
and the rank is ``exp(entropy)`` of the normalised squared singular values of that ``C x N`` matrix - C when every
channel carries its own independent signal, 1 when they all carry one signal. A randomly initialised nnU-Net
encoder uses most of its channels; pre-training can collapse early stages onto a few directions (dimensional
collapse), which slows fine-tuning down (see docs/benchmarks.md, "Why pre-training lost"). ``scripts/
probe_finetune_start.py`` prints it per encoder stage for a random initialisation and for checkpoints.
"""
from typing import List, Tuple

import torch
from torch import nn

from nnunet_ssl.weights.network_parts import encoder_features


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of ``features`` ``(B, C, *spatial)`` over its channels (1 ... C)."""
    c = features.detach().double().transpose(0, 1).flatten(1)
    c = c - c.mean(dim=1, keepdim=True)
    s2 = torch.linalg.svdvals(c) ** 2
    total = s2.sum()
    if total <= 0:
        return 0.0  # constant features carry nothing
    p = s2 / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def encoder_effective_ranks(network: nn.Module, x: torch.Tensor) -> List[Tuple[float, int]]:
    """``(effective rank, channels)`` of every encoder stage's output for the batch ``x``, first stage first."""
    return [(effective_rank(f), int(f.shape[1])) for f in encoder_features(network, x)]
