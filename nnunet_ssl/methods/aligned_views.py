"""Shared machinery of PGL and IDEAL: two views, online vs EMA target network, aligned dense feature levels.

Both methods (docs/methods.md) compare dense features of two augmented views of one case on the region the views
share. :class:`AlignedViewsObjective` does everything they have in common; a method subclass only chooses its heads
(:meth:`~AlignedViewsObjective.make_projector`, :meth:`~AlignedViewsObjective.make_predictor`) and its per-level
loss (:meth:`~AlignedViewsObjective.level_loss`):

* **views** (``data = "two_views"``): random box + flips per view, nnU-Net's intensity augmentations, geometry in
  the batch (``box_v1``, ``flip_v1``, ``box_v2``, ``flip_v2``);
* **online branch**: the network's encoder plus as many decoder stages as the highest decoder level needs,
  followed by per-level heads ``modules["projectors"]`` (and ``["predictors"]`` if the method has them);
* **target branch**: ``modules["target_network"]``, an :class:`~nnunet_ssl.methods.teachers.EMATeacher` of the whole
  network, and ``modules["target_projectors"]``, an EMA of the online projectors. No gradient. Updated after every
  optimizer step (:meth:`~AlignedViewsObjective.after_step`) with momentum
  ``cosine_momentum(step, total_steps, ema_base, ema_final)`` (``ema_final = None``: constant ``ema_base``) on the
  trainer's one step counter (so ``--c`` resumes the schedule; the teachers are in the checkpoint);
* **levels** (setting ``levels``): ``bottleneck``; ``decoderK`` = output of the K-th decoder stage above the
  bottleneck (before the segmentation layer; ``decoder1`` is the first one); ``encoderK`` = the encoder stage
  output K stages below the bottleneck (same resolution as ``decoderK``). Default ``auto`` = the bottleneck and
  every decoder stage up to the first whose cells lie at most :data:`AUTO_FINEST_STRIDE` input voxels apart
  (:func:`auto_levels`): ``bottleneck,decoder1`` on a 3d network of 3 downsamplings (hippocampus),
  ``bottleneck,decoder1,decoder2,decoder3`` on a 2d one of 5 (ACDC). Until 2026-12-05 the default was
  ``bottleneck,decoder1`` on every network, which on ACDC's 2d one (1/32 and 1/16 of the patch) collapsed the
  early encoder stages and lost 14 Dice points to stock nnU-Net after fine-tuning (docs/benchmarks.md);
* **alignment**: per level, the heads' outputs of both views are resampled onto one grid of the views' overlap
  box with :func:`nnunet_ssl.methods.alignment.align_views` (flips undone; :func:`aligned_pair`), grid size = the
  level's feature-map size (setting ``align_size`` > 0: that many cells per axis instead). The level's cells are
  placed where the network's convolutions put them (:func:`level_cell_geometry`). Samples whose views do not
  overlap are masked out of the loss;
* **loss** = mean over levels of ``level_loss`` (averaged, not summed, so the scale does not depend on the number
  of levels). Curves: ``loss_<level>`` per level, ``ema_momentum``, ``overlapping_samples`` (fraction of the
  samples whose two views overlap, i.e. that contribute to the loss).

Forward path (DDP): normally the encoder and the needed decoder stages of the unwrapped network run directly (the
rest of the decoder is skipped). With ``full_forward`` (the trainer sets it under DDP) the online forward goes
through the network's ``__call__`` (so DDP synchronises the gradients), encoder skips and decoder stage outputs are
read with forward hooks, and a zero-weight term on the segmentation output keeps every used parameter in the graph.

Settings (``NNUNET_SSL_SETTINGS``): ``ema_base``, ``ema_final``, ``levels`` (inside ``NNUNET_SSL_SETTINGS`` separate
level names with ``+``, because ``,`` separates settings: ``levels=bottleneck+decoder1+encoder1``),
``projector_dim``, ``projector_hidden``, ``align_size``.
"""
import re
from contextlib import ExitStack
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.methods.alignment import CellGeometry, align_views, decoder_cell_geometry, encoder_cell_geometry
from nnunet_ssl.methods.objective import Objective
from nnunet_ssl.methods.teachers import EMATeacher, cosine_momentum
from nnunet_ssl.methods.views import PLACEMENTS
from nnunet_ssl.settings import Setting
from nnunet_ssl.weights.network_parts import capture_output, decoder_features, unwrap

__all__ = ["AlignedViewsObjective", "aligned_pair", "auto_levels", "parse_levels", "level_spec", "level_channels",
           "level_cell_geometry", "overlap_mask"]

# Our choice: "border" (RoIAlign-like clamping outside the feature map's outermost cell centres) rather than zero
# padding, so overlap cells near a view's edge are not pulled towards 0.
ALIGN_PADDING = "border"

_LEVEL_RE = re.compile(r"^(bottleneck|encoder(\d+)|decoder(\d+))$")
AUTO_LEVELS = "auto"
# our choice for levels=auto (the default): the finest level's cell spacing in input voxels (1/4 of the input
# resolution, where the former default bottleneck,decoder1 ends on hippocampus' 3d network; on ACDC's 2d network it
# ended at 1/16 and left the early encoder stages collapsed: docs/benchmarks.md)
AUTO_FINEST_STRIDE = 4


def parse_levels(text) -> Tuple[str, ...]:
    """``"bottleneck,decoder1"`` / ``"bottleneck+decoder1"`` / a sequence -> ``("bottleneck", "decoder1")``.

    Separators ``,``, ``+``, ``;`` or spaces; duplicates dropped, order kept. Names are checked for their form here
    and against the network in :func:`level_spec`.
    """
    names = re.split(r"[,+;\s]+", text) if isinstance(text, str) else [str(t) for t in text]
    out = []
    for n in (n.strip() for n in names):
        if not n:
            continue
        if not _LEVEL_RE.match(n) or n in ("encoder0", "decoder0"):
            raise UserInputError(f"levels: '{n}' is not a level name. Use 'bottleneck', 'decoderK' (K-th decoder "
                                 f"stage above the bottleneck, K >= 1) or 'encoderK' (encoder stage K below the "
                                 f"bottleneck), e.g. NNUNET_SSL_SETTINGS=levels=bottleneck+decoder1, or levels=auto "
                                 f"alone (down to 1/{AUTO_FINEST_STRIDE} of the input resolution).")
        if n not in out:
            out.append(n)
    if not out:
        raise UserInputError("levels is empty: name at least one level, e.g. levels=bottleneck+decoder1.")
    return tuple(out)


def auto_levels(network: nn.Module, finest_stride: float = AUTO_FINEST_STRIDE) -> Tuple[str, ...]:
    """``levels=auto``: the bottleneck, then ``decoder1``, ``decoder2``, ... up to the first level whose cells lie at
    most ``finest_stride`` input voxels apart along every axis (the network's last decoder stage if none does)."""
    net = unwrap(network)
    names = ["bottleneck"]
    finest = encoder_cell_geometry(net)[-1]
    for k, cells in enumerate(decoder_cell_geometry(net), start=1):
        if max(finest.stride) <= finest_stride:
            break
        names.append(f"decoder{k}")
        finest = cells
    return tuple(names)


def resolve_levels(text, network: nn.Module) -> Tuple[str, ...]:
    """The level names of a ``levels`` setting on ``network``: :func:`auto_levels` for ``auto``, else
    :func:`parse_levels`."""
    if isinstance(text, str) and text.strip() == AUTO_LEVELS:
        return auto_levels(network)
    return parse_levels(text)


def level_spec(level: str, num_stages: int) -> Tuple[str, int]:
    """``(kind, k)`` of a level name for a network with ``num_stages`` encoder stages; ``k`` is the index into
    the encoder's skip list (``kind == 'encoder'``, bottleneck = ``num_stages - 1``) or the 0-based decoder stage."""
    m = _LEVEL_RE.match(level)
    if m is None:
        raise UserInputError(f"'{level}' is not a level name (bottleneck, decoderK, encoderK)")
    if level == "bottleneck":
        return "encoder", num_stages - 1
    k = int(m.group(2) or m.group(3))
    if not 1 <= k <= num_stages - 1:
        raise UserInputError(f"level '{level}' does not exist in a network with {num_stages} stages: K must lie in "
                             f"1..{num_stages - 1}. Change the levels setting (e.g. levels=bottleneck+decoder1).")
    if m.group(2) is not None:
        return "encoder", num_stages - 1 - k
    return "decoder", k - 1


def level_channels(network: nn.Module, level: str) -> int:
    """Feature channels at a level (a decoder stage outputs as many channels as the skip it merges)."""
    channels = list(unwrap(network).encoder.output_channels)
    kind, k = level_spec(level, len(channels))
    return channels[k] if kind == "encoder" else channels[-2 - k]


def level_cell_geometry(network: nn.Module, level: str) -> CellGeometry:
    """Where the cells of a level sit in the network input, read from the network's modules
    (:func:`nnunet_ssl.methods.alignment.encoder_cell_geometry` / :func:`~nnunet_ssl.methods.alignment.decoder_cell_geometry`)."""
    net = unwrap(network)
    kind, k = level_spec(level, len(net.encoder.output_channels))
    return (encoder_cell_geometry(net) if kind == "encoder" else decoder_cell_geometry(net))[k]


def overlap_mask(valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample overlap flags ``(B,)`` -> float mask ``(B, 1, 1, ...)`` broadcastable to ``like``."""
    return valid.to(device=like.device, dtype=torch.float32).view(-1, *([1] * (like.dim() - 1)))


def aligned_pair(f1: torch.Tensor, f2: torch.Tensor, geometry: Sequence[torch.Tensor], out_size,
                 cells: Optional[CellGeometry] = None, input_size: Optional[Sequence[int]] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one alignment call PGL and IDEAL use: ``f1``/``f2`` = feature maps of views 1/2, ``geometry`` =
    ``(box_v1, flip_v1, box_v2, flip_v2)``, ``cells`` = where the maps' cells sit in the views
    (:func:`level_cell_geometry`) and ``input_size`` = the views' (patch) size; without ``cells`` the cells tile the
    views evenly. Returns ``(a1, a2, valid)`` with ``a1[b, :, v]`` and ``a2[b, :, v]`` at the same case location
    (cell ``v`` of the overlap box); ``valid`` ``(B,)`` bool."""
    box1, flip1, box2, flip2 = geometry
    return align_views(f1, box1, flip1, f2, box2, flip2, out_size, padding_mode=ALIGN_PADDING, geometry=cells,
                       input_size=input_size)


class AlignedViewsObjective(Objective):
    """Base of PGL and IDEAL. Subclasses implement :meth:`make_projector` and :meth:`level_loss` and may add a
    predictor (:meth:`make_predictor`)."""

    settings = {"ema_base": Setting(float, min=0, max=1), "ema_final": Setting(float, min=0, max=1), "levels": str,
                "projector_dim": Setting(int, min=1), "projector_hidden": Setting(int, min=1),
                "align_size": Setting(int, min=0), "view_placement": Setting(str, choices=PLACEMENTS)}
    data = "two_views"
    curve_keys = ("ema_momentum", "overlapping_samples")  # plus loss_<level>, see all_curve_keys
    ema_base = 0.99
    ema_final = 1.0          # None = constant momentum ema_base
    levels = AUTO_LEVELS     # our choice: down to 1/AUTO_FINEST_STRIDE of the input resolution on any plans
    projector_dim = 128      # our choice (no paper gives head widths for nnU-Net backbones)
    projector_hidden = 256   # our choice
    align_size = 0           # 0 = align on the level's own feature-map size

    def __init__(self, network, info, **kwargs):
        super().__init__(network, info, **kwargs)
        net = self.network
        self.level_names = resolve_levels(self.levels, net)
        for name in ("ema_base", "ema_final"):
            if getattr(self, name) is not None and not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise UserInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        num_stages = len(net.encoder.output_channels)
        for lvl in self.level_names:
            level_spec(lvl, num_stages)
        projectors = nn.ModuleDict({lvl: self.make_projector(level_channels(net, lvl), info.ndim)
                                    for lvl in self.level_names})
        self.modules["projectors"] = projectors
        predictors = {lvl: self.make_predictor(info.ndim) for lvl in self.level_names}
        if any(p is not None for p in predictors.values()):
            self.modules["predictors"] = nn.ModuleDict(predictors)
        self.modules["target_network"] = EMATeacher(net)
        self.modules["target_projectors"] = EMATeacher(projectors)

    def describe(self) -> List[str]:
        final = self.ema_base if self.ema_final is None else self.ema_final
        schedule = f"constant {final}" if final == self.ema_base else \
            f"{self.ema_base} -> {final} (cosine over {self.clock()[1]} steps)"
        return [f"{self.owner}: levels {', '.join(self.level_names)}; EMA momentum {schedule}"]

    # ------------------------------------------------------------------ what a method defines
    def make_projector(self, channels: int, ndim: int) -> nn.Module:
        """Online projector of one level (its EMA is the target projector)."""
        raise NotImplementedError

    def make_predictor(self, ndim: int) -> Optional[nn.Module]:
        """Online-only predictor applied after the projector (None: no predictor)."""
        return None

    def level_loss(self, online1: torch.Tensor, online2: torch.Tensor, target1: torch.Tensor,
                   target2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of one level from the aligned head outputs (same overlap grid for all four) and the per-sample
        overlap mask ``(B, 1, 1, ...)``. Target maps carry no gradient."""
        raise NotImplementedError

    def all_curve_keys(self) -> Tuple[str, ...]:
        return tuple(f"loss_{lvl}" for lvl in self.level_names) + tuple(self.curve_keys)

    # ------------------------------------------------------------------ features
    def decoder_stages_needed(self) -> int:
        n = len(self.network.encoder.output_channels)
        specs = [level_spec(lvl, n) for lvl in self.level_names]
        return max([k + 1 for kind, k in specs if kind == "decoder"], default=0)

    def _pick_levels(self, skips, dec) -> Dict[str, torch.Tensor]:
        n = len(skips)
        out = {}
        for lvl in self.level_names:
            kind, k = level_spec(lvl, n)
            out[lvl] = skips[k] if kind == "encoder" else dec[k]
        return out

    def online_level_features(self, network: nn.Module, x: torch.Tensor
                              ) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """Online features per level and an optional zero-valued term to add to the loss (full-forward path)."""
        net = unwrap(network)
        n_dec = self.decoder_stages_needed()
        if not self.full_forward:
            skips = net.encoder(x)
            dec = decoder_features(net, skips, n_dec) if n_dec else []
            return self._pick_levels(skips, dec), None
        with ExitStack() as stack:
            enc_tap = stack.enter_context(capture_output(net.encoder))
            dec_taps = [stack.enter_context(capture_output(net.decoder.stages[s])) for s in range(n_dec)]
            out = network(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        anchor = sum(o.sum() for o in outs) * 0.0
        return self._pick_levels(enc_tap.output, [t.output for t in dec_taps]), anchor

    @torch.no_grad()
    def target_level_features(self, modules: nn.ModuleDict, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        teacher = modules["target_network"].module
        n_dec = self.decoder_stages_needed()
        skips = teacher.encoder(x)
        dec = decoder_features(teacher, skips, n_dec) if n_dec else []
        return self._pick_levels(skips, dec)

    @staticmethod
    def online_head(modules: nn.ModuleDict, level: str, features: torch.Tensor) -> torch.Tensor:
        z = modules["projectors"][level](features)
        if "predictors" in modules:
            z = modules["predictors"][level](z)
        return z

    @staticmethod
    @torch.no_grad()
    def target_head(modules: nn.ModuleDict, level: str, features: torch.Tensor) -> torch.Tensor:
        return modules["target_projectors"].module[level](features)

    def alignment_size(self, features: torch.Tensor) -> Tuple[int, ...]:
        ndim = features.dim() - 2
        if self.align_size > 0:
            return (int(self.align_size),) * ndim
        return tuple(int(s) for s in features.shape[2:])

    # ------------------------------------------------------------------ loss
    def batch_views(self, batch: dict):
        """``(x, geometry)``: both views stacked along the batch axis (one forward per branch) and
        ``(box_v1, flip_v1, box_v2, flip_v2)`` on the device."""
        x = torch.cat((self.to_device(batch["data_v1"]), self.to_device(batch["data_v2"])))
        geometry = tuple(torch.as_tensor(batch[k]).to(self.device)
                         for k in ("box_v1", "flip_v1", "box_v2", "flip_v2"))
        return x, geometry

    def loss(self, batch, network, train, modules: Optional[nn.ModuleDict] = None):
        modules = self.modules_or_own(modules)
        x, geometry = self.batch_views(batch)
        B = x.shape[0] // 2
        online, anchor = self.online_level_features(network, x)
        target = self.target_level_features(modules, x)
        losses = {}
        valid = None
        for lvl in self.level_names:
            o = self.online_head(modules, lvl, online[lvl])
            t = self.target_head(modules, lvl, target[lvl])
            size = self.alignment_size(o)
            cells = level_cell_geometry(network, lvl)
            o1, o2, valid = aligned_pair(o[:B], o[B:], geometry, size, cells, x.shape[2:])
            t1, t2, _ = aligned_pair(t[:B], t[B:], geometry, size, cells, x.shape[2:])
            losses[lvl] = self.level_loss(o1, o2, t1, t2, overlap_mask(valid, o1))
        loss = sum(losses.values()) / len(losses)
        if anchor is not None:
            loss = loss + anchor
        curves = {f"loss_{lvl}": float(v.detach()) for lvl, v in losses.items()}
        curves["overlapping_samples"] = float(valid.float().mean())
        curves["ema_momentum"] = self.current_momentum()
        return loss, curves

    # ------------------------------------------------------------------ EMA schedule
    def momentum_at(self, step: int, total_steps: int) -> float:
        final = self.ema_base if self.ema_final is None else self.ema_final
        return cosine_momentum(step, total_steps, self.ema_base, final)

    def current_momentum(self) -> float:
        """The momentum at the trainer's current global step (what :meth:`after_step` of this step uses)."""
        return self.momentum_at(*self.clock())

    def after_step(self, global_step, total_steps):
        m = self.momentum_at(global_step, total_steps)
        self.modules["target_network"].update(self.network, m)
        self.modules["target_projectors"].update(self.modules["projectors"], m)
