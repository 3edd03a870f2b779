"""Small helpers for values that must agree across DDP ranks."""
import math
from typing import Iterable

import numpy as np
from torch import distributed as dist


def mean_over_ranks(values: Iterable[float]) -> float:
    """Mean of the finite values of every rank (all ranks get the same number); NaN if none is finite."""
    values = [float(v) for v in values]
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, values)
        values = [v for part in gathered for v in part]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
