"""Masked image modeling objectives on nnU-Net's own network: MAE (baseline) and GMIM.

* :class:`MAEObjective`: fixed grid 8, ratio 0.75 in every cell, masked voxel blocks zeroed at the input, the
  network (encoder AND decoder) reconstructs the input, MSE on masked units only, averaged over the masked units
  (``recon_normalisation=masked``, He et al. 2022 average over the removed patches).
* :class:`GMIMObjective`: entropy-adaptive grid and per-cell ratios
  (:class:`~nnunet_ssl.methods.gmim_maskers.GMIMMasker`), hierarchical re-masking of the first encoder stages'
  outputs (p 0.3, 0.5x/0.25x/0.125x the cell ratio), and the Siamese target: a stop-gradient copy of the online
  encoder refreshed every step (momentum 0) sees a second crop
  of the same case (``target_crop_shift``, default 0.25 as in the official code), no flips; separate trainable
  dense projectors on both bottlenecks; loss ``1.0 * MSE + 0.005 * L_cc`` (Barlow-Twins-style cross-correlation,
  per sample over bottleneck voxels paired by grid position). The MSE counts masked units but is divided by ALL
  voxels (``recon_normalisation=all``, the official code's normalisation).

Module names (checkpoint ``ssl_state``): GMIM ``target_encoder``, ``online_projector``, ``target_projector`` (only
with ``cc_weight > 0``); MAE owns no modules.
"""
from typing import Optional

import torch
from torch import nn

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.methods.heads import DenseProjector
from nnunet_ssl.methods.gmim_maskers import GMIMMasker, HierarchicalFeatureMasker
from nnunet_ssl.methods.objective import Objective
from nnunet_ssl.methods.objectives import CrossCorrelationLoss, MaskedMSELoss
from nnunet_ssl.methods.objectives.masked_reconstruction import RECON_NORMALISATIONS
from nnunet_ssl.methods.sample_variation import varying_samples
from nnunet_ssl.methods.teachers import StopGradientCopy
from nnunet_ssl.methods.views import PLACEMENTS
from nnunet_ssl.settings import Setting
from nnunet_ssl.weights.network_parts import capture_output, unwrap

__all__ = ["MAEObjective", "GMIMObjective"]

MAE_SETTINGS = {"mask_ratio": Setting(float, min=0, max=1, max_exclusive=True), "mask_grid": Setting(int, min=1),
                "recon_normalisation": Setting(str, choices=RECON_NORMALISATIONS)}


class MAEObjective(Objective):
    """Masked-autoencoder-style baseline: fixed grid and ratio, no hierarchy, no target branch."""

    settings = MAE_SETTINGS
    data = "one_view"
    curve_keys = ("recon_loss", "masked_fraction")
    reconstructs_input = True
    # the reconstruction-trained decoder blocks the encoder's gradient in fine-tuning (README, low-label benchmark)
    decoder_transfers = False
    mask_ratio = 0.75
    mask_grid = 8
    recon_weight = 1.0
    recon_normalisation = "masked"  # MAE's mean over masked units; GMIM: "all" (its reference code)

    def __init__(self, network, info, **kwargs):
        super().__init__(network, info, **kwargs)
        if self.recon_normalisation not in RECON_NORMALISATIONS:
            raise UserInputError(f"recon_normalisation='{self.recon_normalisation}': use 'all' (divide by all "
                                 f"voxels, GMIM's reference code) or 'masked' (divide by the masked voxels, MAE).")
        self.recon_loss = MaskedMSELoss(self.recon_normalisation)
        self.masker = self.build_masker()

    def build_masker(self) -> GMIMMasker:
        return GMIMMasker.mae(grid=self.mask_grid, ratio=self.mask_ratio)

    def loss(self, batch, network, train, modules: Optional[nn.ModuleDict] = None):
        x = self.to_device(batch["data"])
        res = self.masker.mask(x)
        recon = network(res.masked)
        loss = self.recon_loss(recon, x, res.mask)
        curves = {"recon_loss": float(loss.detach()), "masked_fraction": float(res.mask.mean())}
        return self.recon_weight * loss, curves


class GMIMObjective(MAEObjective):
    """GMIM: adaptive grid masking, hierarchical masks and the Siamese cross-correlation target."""

    settings = dict(MAE_SETTINGS, base_ratio=Setting(float, min=0, max=1, max_exclusive=True),
                    ratio_spread=Setting(float, min=0, max=1), cc_weight=Setting(float, min=0),
                    hierarchical_probability=Setting(float, min=0, max=1), projector_dim=Setting(int, min=1),
                    target_crop_shift=Setting(float, min=0, max=1, max_exclusive=True),
                    view_placement=Setting(str, choices=PLACEMENTS))
    # the target view: a second, overlapping crop (target_crop_shift) without flips, intensity augmentation only
    data = "second_crop"
    curve_keys = ("recon_loss", "cc_loss", "masked_fraction", "mean_grid")
    base_ratio = 0.5
    ratio_spread = 0.3
    cc_weight = 0.005
    cc_offdiag = 0.005
    hierarchical_probability = 0.3
    hierarchical_factors = (0.5, 0.25, 0.125)
    projector_dim = 128
    recon_normalisation = "all"  # the official code: masked squared errors / all voxels
    target_crop_shift = 0.25  # the official code: 32 voxels of play per axis for 128 crops

    def __init__(self, network, info, **kwargs):
        shift = kwargs.get("target_crop_shift", self.target_crop_shift)
        if not 0.0 <= float(shift) < 1.0:
            raise UserInputError(f"target_crop_shift={shift}: it must lie in [0, 1) (fraction of "
                                 f"the crop side; 0 = the target sees the online crop).")
        super().__init__(network, info, **kwargs)
        self.cc_loss = CrossCorrelationLoss(lambda_offdiag=self.cc_offdiag)
        net = self.network
        width = net.encoder.output_channels[-1]
        if self.cc_weight > 0:
            # the copy is made before the hooks below are registered, so the target is never re-masked
            self.modules["target_encoder"] = StopGradientCopy(net.encoder)
            self.modules["online_projector"] = DenseProjector(width, width, self.projector_dim, info.ndim)
            self.modules["target_projector"] = DenseProjector(width, width, self.projector_dim, info.ndim)
        self.hierarchical = HierarchicalFeatureMasker(self.hierarchical_probability, self.hierarchical_factors)
        self._hier_ratio = None
        stages = net.encoder.stages
        # the hooks read this objective's current ratio (None outside a training forward); a fish clone of the
        # network shares them
        self._hooks = [stages[i].register_forward_hook(self.hierarchical.forward_hook(i, lambda: self._hier_ratio))
                       for i in range(min(len(self.hierarchical_factors), len(stages) - 1))]

    def build_masker(self) -> GMIMMasker:
        return GMIMMasker(base_ratio=self.base_ratio, spread=self.ratio_spread)

    def loss(self, batch, network, train, modules: Optional[nn.ModuleDict] = None):
        modules = self.modules_or_own(modules)
        x = self.to_device(batch["data_v1"])
        res = self.masker.mask(x)
        self._hier_ratio = res.mean_cell_ratio if train else None
        net = unwrap(network)
        try:
            with capture_output(net.encoder) as tap:
                recon = network(res.masked)
        finally:
            self._hier_ratio = None
        skips = tap.output
        recon_loss = self.recon_loss(recon, x, res.mask)
        loss = self.recon_weight * recon_loss
        cc = torch.zeros((), device=x.device)
        if self.cc_weight > 0:
            target = modules["target_encoder"]
            if train:
                target.refresh(net.encoder)
            with torch.no_grad():
                target_bottleneck = target(self.to_device(batch["data_v2"]))[-1]
            za = modules["online_projector"](skips[-1])
            zb = modules["target_projector"](target_bottleneck)
            # a constant view has a zero-variance projection: left out (nnunet_ssl.methods.sample_variation)
            keep = varying_samples(x) & varying_samples(batch["data_v2"]).to(x.device)
            if bool(keep.all()):
                cc = self.cc_loss(za, zb)
            elif bool(keep.any()):
                cc = self.cc_loss(za[keep], zb[keep])
            else:
                cc = (za * 0.0).sum() + (zb * 0.0).sum()  # every parameter still gets a (zero) gradient
            loss = loss + self.cc_weight * cc
        curves = {"recon_loss": float(recon_loss.detach()), "cc_loss": float(cc.detach()),
                  "masked_fraction": float(res.mask.mean()), "mean_grid": float(sum(res.grids) / len(res.grids))}
        return loss, curves
