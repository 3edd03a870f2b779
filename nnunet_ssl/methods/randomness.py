"""One step's randomness replayed: an objective that runs several times in one training step draws the same random
numbers each time, and the next step draws new ones (ReFs' fish runs the SSL objective at theta and at the clone).

Every generator the draws may use takes part (:func:`device_generators`): the CPU generator and, on an accelerator,
that device's own default generator (masks of CUDA tensors are drawn there). Pure torch.
"""
import contextlib

import torch

__all__ = ["ReplayedRandomness", "device_generators"]


class _ModuleGenerator:
    """``get_state``/``set_state`` of a device's default generator reached through its torch module (e.g. MPS)."""

    def __init__(self, module):
        self.module = module

    def get_state(self):
        return self.module.get_rng_state()

    def set_state(self, state):
        self.module.set_rng_state(state)


def device_generators(device) -> list:
    """The generators random draws on ``device`` use: the CPU generator and, for an accelerator, that device's own
    default generator (``torch.rand(..., device='cuda')``, ``torch.randperm(..., device='cuda')`` draw there)."""
    device = torch.device(device)
    generators = [torch.default_generator]
    if device.type == "cuda":
        torch.cuda.init()
        index = device.index if device.index is not None else torch.cuda.current_device()
        generators.append(torch.cuda.default_generators[index])
    elif device.type != "cpu":
        module = getattr(torch, device.type, None)
        if module is not None and hasattr(module, "get_rng_state") and hasattr(module, "set_rng_state"):
            generators.append(_ModuleGenerator(module))
    return generators


class ReplayedRandomness:
    """One step's randomness for an objective that runs several times in the step (fish: at theta and at the clone).

    Made at the start of the step. Every :meth:`replay` block starts from the generators' states of that moment (so
    every run draws the same masks / voxel samples) and restores the states it found afterwards; :meth:`advance`,
    at the end of the step, leaves every generator where the LAST replay left it: as if the objective had drawn
    once, so the next step draws new numbers. ``generators``: objects with ``get_state``/``set_state`` (every
    generator the draws may use; :func:`device_generators`).
    """

    def __init__(self, generators):
        self.generators = list(generators)
        self.start = self._states()
        self.end = None

    def _states(self):
        return [g.get_state() for g in self.generators]

    def _set(self, states):
        for g, state in zip(self.generators, states):
            g.set_state(state)

    @contextlib.contextmanager
    def replay(self):
        outside = self._states()
        self._set(self.start)
        try:
            yield
        finally:
            self.end = self._states()
            self._set(outside)

    def advance(self):
        if self.end is not None:
            self._set(self.end)
