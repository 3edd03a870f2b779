"""Is a network's state still a usable starting point? (for "the last good checkpoint" after a run diverged)

A run with far too high a learning rate does not go NaN at once: its weights first grow by orders of magnitude
while the losses stay finite, and only then overflow. A checkpoint of such weights is useless to continue from, so
"usable" means: every floating-point weight finite and the global L2 norm at most :data:`DIVERGENCE_FACTOR` times
the norm the run started from. Ordinary training changes the global norm by a few times at most (weight decay keeps
it bounded); diverged runs grow it by 10^5 and more, so the factor leaves a wide margin both ways.
"""
import math
from typing import Dict, Iterable, Optional

import torch

DIVERGENCE_FACTOR = 100.0


def global_weight_norm(tensors: Iterable[torch.Tensor]) -> float:
    """L2 norm of all floating-point tensors together (float64; inf/nan if any value is)."""
    total = 0.0
    for t in tensors:
        if torch.is_floating_point(t):
            total += float((t.detach().double() ** 2).sum())
    return math.sqrt(total)  # sqrt(inf) = inf, sqrt(nan) = nan


def state_dict_norm(state: Dict[str, torch.Tensor]) -> float:
    return global_weight_norm(v for v in state.values() if isinstance(v, torch.Tensor))


def is_diverged(norm: float, initial_norm: Optional[float], factor: float = DIVERGENCE_FACTOR) -> bool:
    """True if ``norm`` is not finite or more than ``factor`` times ``initial_norm`` (unknown initial: finite is
    enough)."""
    if not math.isfinite(norm):
        return True
    return initial_norm is not None and initial_norm > 0 and norm > factor * initial_norm
