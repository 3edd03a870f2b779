"""Target networks for two-branch self-supervised learning: EMA teacher and stop-gradient copy.

* :class:`EMATeacher`: exponential moving average of the online network (BYOL: Grill et al., "Bootstrap Your Own
  Latent", NeurIPS 2020; used by PGL, Xie et al., arXiv 2011.12640, and as IDEAL's key encoder, Basak et al.,
  arXiv 2210.15075). Momentum schedule :func:`cosine_momentum`, 0.99 -> 1.0 (**choice** for PGL in METHODS.md,
  BYOL's schedule); IDEAL's key encoder uses a constant 0.99 (**choice**).
* :class:`StopGradientCopy`: GMIM's target encoder (Qi et al., Comput. Biol. Med. 2024, **paper**): an exact copy
  of the online encoder refreshed every step (momentum 0), never trained itself.

Teachers are ordinary ``nn.Module`` s, so ``state_dict()`` / ``load_state_dict()`` work for checkpoints (keys are
prefixed ``module.``). Keep them OUTSIDE the nnU-Net network (e.g. as a trainer attribute), so the network's
``state_dict`` and therefore ``-pretrained_weights`` / ``nnUNetv2_predict`` never see them; the trainer saves the
teacher's ``state_dict`` next to the network's. Online networks wrapped by DDP or ``torch.compile`` are unwrapped
with :func:`unwrap_module` before copying / averaging.

Example::

    teacher = EMATeacher(network)                      # deep copy, requires_grad False
    ...
    optimizer.step()
    teacher.update(network, cosine_momentum(step, total_steps))
    with torch.no_grad(): target = teacher(x)          # forward already runs under no_grad
"""
import copy
import math

import torch
from torch import nn

__all__ = ["EMATeacher", "StopGradientCopy", "cosine_momentum", "unwrap_module"]


def unwrap_module(m: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers, in any nesting, and return the underlying module."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(m, wrappers):
            m = m.module
        elif isinstance(getattr(m, "_orig_mod", None), nn.Module):
            m = m._orig_mod
        else:
            return m


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """BYOL's cosine momentum schedule: ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``.

    ``base`` at step 0, ``final`` at ``step == total_steps`` (steps outside ``[0, total_steps]`` are clamped).
    Defaults 0.99 -> 1.0 as in METHODS.md (PGL, **choice**).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    t = min(max(float(step), 0.0), float(total_steps)) / float(total_steps)
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0


class EMATeacher(nn.Module):
    """Frozen deep copy of an online module, updated as ``teacher = m * teacher + (1 - m) * online``.

    ``update(online, momentum)`` averages the parameters and copies the buffers (e.g. BatchNorm running statistics)
    directly. Parameters and buffers are matched by name, so ``online`` must have the architecture of the module the
    teacher was built from (wrappers are stripped with :func:`unwrap_module`). All teacher parameters have
    ``requires_grad = False``; ``forward`` runs the wrapped module under ``torch.no_grad``. The copy keeps the
    train/eval mode of the online module at construction; switch it with ``.train()`` / ``.eval()`` as usual.
    Sub-modules are reachable as ``teacher.module.<name>`` (call them under ``torch.no_grad`` yourself).
    """

    def __init__(self, online: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(unwrap_module(online))
        self.module.requires_grad_(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """``teacher_param = momentum * teacher_param + (1 - momentum) * online_param``; buffers copied."""
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        src = unwrap_module(online)
        online_params = dict(src.named_parameters())
        teacher_params = dict(self.module.named_parameters())
        if online_params.keys() != teacher_params.keys():
            missing = sorted(set(teacher_params) ^ set(online_params))[:5]
            raise ValueError(f"online module does not match the teacher's architecture (differing parameters, "
                             f"first few: {missing})")
        for name, t in teacher_params.items():
            o = online_params[name].detach().to(device=t.device, dtype=t.dtype)
            if momentum == 0.0:
                t.copy_(o)
            elif momentum != 1.0:
                t.mul_(momentum).add_(o, alpha=1.0 - momentum)
        online_buffers = dict(src.named_buffers())
        for name, t in self.module.named_buffers():
            if name not in online_buffers:
                raise ValueError(f"online module has no buffer {name!r} that the teacher has")
            t.copy_(online_buffers[name].detach().to(t.device))


class StopGradientCopy(EMATeacher):
    """GMIM's target encoder: an exact, frozen copy of the online module, refreshed with :meth:`refresh` every step
    (an :class:`EMATeacher` with momentum 0)."""

    def refresh(self, online: nn.Module) -> None:
        """Copy the online module's parameters and buffers exactly."""
        self.update(online, 0.0)
