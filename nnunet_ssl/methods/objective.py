"""The one interface every pre-training method implements: an objective the trainer composes.

An objective is built on the network the trainer trains (an nnU-Net ``PlainConvUNet`` / ``ResidualEncoderUNet``)
and owns everything of its method that is not that network: heads, predictors, teachers, masks and the loss. The
trainer owns the rest: data loading, the one step counter, the one guarded optimizer step, checkpoints, logging.

    objective = PGLObjective(network, NetworkInfo.of(network, patch_size), levels="bottleneck")
    modules = objective.modules            # nn.ModuleDict: optimizer, checkpoint (``ssl_state``), DDP broadcast
    loss, metrics = objective.loss(batch, network, train=True)
    ...backward, optimizer step...
    objective.after_step(global_step, total_steps)   # EMA teachers

Pieces a subclass declares:

* ``settings`` (name -> type) with a class attribute per name holding the default: the names ``NNUNET_SSL_SETTINGS``
  accepts for the method; the constructor takes them as keyword arguments;
* ``data``: what a batch must hold: ``"one_view"`` (nnU-Net's own loader, ``batch["data"]``), ``"two_views"``
  (two augmented views with their geometry: ``data_v1``, ``data_v2``, ``box_v*``, ``flip_v*``) or
  ``"second_crop"`` (two crops without flips: the second overlaps the first, shifted by ``target_crop_shift``);
* ``curve_keys``: the per-step metrics :meth:`loss` returns (logged per epoch); an instance may extend them;
* ``reconstructs_input``: the network's output layer has as many channels as the input (masked modeling);
* ``decoder_transfers``: whether fine-tuning should load the decoder this objective trains.

:meth:`loss` takes the network (and optionally the module dict) explicitly, so the same objective runs on a clone
(ReFs' gradient matching) without swapping anything. Nothing here imports nnunetv2.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_ssl.weights.network_parts import spatial_ndim, unwrap

DATA_KINDS = ("one_view", "two_views", "second_crop")


@dataclass(frozen=True)
class NetworkInfo:
    """What an objective may need to know about the network besides its modules (from nnU-Net's plans)."""

    ndim: int
    input_channels: int
    encoder_channels: Tuple[int, ...]
    patch_size: Tuple[int, ...]

    @classmethod
    def of(cls, network: nn.Module, patch_size: Sequence[int], input_channels: int) -> "NetworkInfo":
        net = unwrap(network)
        return cls(ndim=spatial_ndim(net), input_channels=int(input_channels),
                   encoder_channels=tuple(int(c) for c in net.encoder.output_channels),
                   patch_size=tuple(int(p) for p in patch_size))


class Objective:
    """Base class of the pre-training objectives (see the module doc)."""

    settings: Dict[str, type] = {}
    data: str = "one_view"
    curve_keys: Tuple[str, ...] = ()
    reconstructs_input: bool = False
    decoder_transfers: bool = True
    target_crop_shift: float = 0.0  # data == "second_crop": the loader's crop shift (fraction of the side)
    # data != "one_view": where the loader may place a view's box (nnunet_ssl.methods.views.place_box)
    view_placement: str = "inside"

    def __init__(self, network: nn.Module, info: NetworkInfo,
                 clock: Optional[Callable[[], Tuple[int, int]]] = None, full_forward: bool = False,
                 device: Optional[torch.device] = None, owner: str = "", **settings):
        unknown = set(settings) - set(self.settings)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown settings {sorted(unknown)}")
        for name, value in settings.items():
            setattr(self, name, value)
        self.network = unwrap(network)  # the online network after_step reads (EMA teachers)
        self.info = info
        self.owner = owner or type(self).__name__  # the name log lines start with (the trainer's)
        # (global_step, total_steps) of the trainer's one step counter, read by per-step schedules while logging
        self.clock = clock or (lambda: (0, 1))
        # True: the online forward goes through the network's __call__ (DDP), features are read with hooks
        self.full_forward = bool(full_forward)
        self.device = torch.device(device) if device is not None else next(self.network.parameters()).device
        self.modules = nn.ModuleDict()

    # ------------------------------------------------------------------ what a method defines
    def loss(self, batch: dict, network: nn.Module, train: bool, modules: Optional[nn.ModuleDict] = None
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The loss of a batch and the per-step values of :attr:`curve_keys`. ``network`` is the network to run
        (the trainer's, possibly DDP-wrapped, or a clone); ``modules`` the objective's modules to use with it
        (default :attr:`modules`)."""
        raise NotImplementedError

    def after_step(self, global_step: int, total_steps: int) -> None:
        """Called after every completed optimizer step (EMA teacher updates go here)."""

    def describe(self) -> List[str]:
        """Lines for the training log once the objective is built."""
        return []

    def all_curve_keys(self) -> Tuple[str, ...]:
        """Curves of this instance (some depend on settings, e.g. one per feature level)."""
        return tuple(self.curve_keys)

    # ------------------------------------------------------------------ helpers
    def to_device(self, tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def modules_or_own(self, modules: Optional[nn.ModuleDict]) -> nn.ModuleDict:
        return self.modules if modules is None else modules
