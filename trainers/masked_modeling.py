"""GMIM and MAE pre-training trainers (masked image modeling on nnU-Net's own network).

* ``MAETrainer``: fixed grid 8, ratio 0.75 in every cell, masked voxel blocks zeroed at the input, the nnU-Net
  network (encoder AND decoder) reconstructs the input, MSE on masked units only, averaged over the masked units
  (``recon_normalisation=masked``, MAE's own form: He et al. 2022 average the loss over the removed patches). The
  baseline for GMIM.
* ``GMIMTrainer``: entropy-adaptive grid and per-cell ratios (:class:`nnunet_ssl.methods.masking.GMIMMasker`),
  hierarchical re-masking of the first encoder stages' outputs (p 0.3, 0.5x/0.25x/0.125x the cell ratio), and the
  Siamese target: a stop-gradient copy of the online encoder refreshed every step (momentum 0) sees a second crop
  of the same case, same size, shifted per axis by ``(u2 - u1) * side`` with ``u ~ U[0, target_crop_shift]``
  (default 0.25: the official code's two 128 crops from one 160 region), no flips, intensity augmentation only;
  separate trainable dense projectors on both bottlenecks; loss ``1.0 * MSE + 0.005 * L_cc`` (Barlow-Twins-style
  cross-correlation, per sample over bottleneck voxels, online and target voxels paired by grid position as in the
  official code). The MSE counts masked units only but is divided by ALL voxels (``recon_normalisation=all``,
  the official code's normalisation, which the 1 : 0.005 balance was tuned with; ``masked`` gives a value about
  1 / masking ratio = 2x larger).
* Variants: ``GMIMTrainer_sharedCrop`` (the target sees the online crop itself, ``target_crop_shift=0``),
  ``GMIMTrainer_noHierarchy``, ``GMIMTrainer_noSiamese``. Settings on top of the shared ones: ``mask_ratio``,
  ``mask_grid``, ``recon_normalisation`` (``all`` or ``masked``) and for GMIM ``base_ratio``, ``ratio_spread``,
  ``cc_weight``, ``hierarchical_probability``, ``projector_dim``, ``target_crop_shift`` (in [0, 1)).

The reconstruction output layer has as many channels as the input (``build_network_architecture``), so the
checkpoint's ``network_weights`` is the full nnU-Net network and stock ``-pretrained_weights`` loads everything
but the output layer.
"""
import torch

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.methods.heads import DenseProjector
from nnunet_ssl.methods.masking import GMIMMasker, HierarchicalFeatureMasker
from nnunet_ssl.weights.network_parts import capture_output, spatial_ndim, unwrap
from nnunet_ssl.methods.objectives import CrossCorrelationLoss, MaskedMSELoss
from nnunet_ssl.methods.objectives.masked_reconstruction import RECON_NORMALISATIONS
from nnunet_ssl.methods.teachers import StopGradientCopy
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer
from nnunet_ssl_trainers.two_view import TwoViewDataMixin
from nnunet_ssl_trainers.variants import variant
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class MAETrainer(nnUNetSSLTrainer):
    """Masked-autoencoder-style baseline: fixed grid and ratio, no hierarchy, no target branch."""

    # the reconstruction-trained decoder blocks the encoder's gradient in fine-tuning (README, low-label benchmark)
    decoder_transfers = False
    ssl_curve_keys = ("recon_loss", "masked_fraction")
    tunable_settings = dict(nnUNetSSLTrainer.tunable_settings, mask_ratio=float, mask_grid=int,
                            recon_normalisation=str)

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mask_ratio = 0.75
        self.mask_grid = 8
        self.recon_weight = 1.0
        self.recon_normalisation = "masked"  # MAE's mean over masked units; GMIM: "all" (its reference code)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        # the output layer reconstructs the input channels
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_input_channels, enable_deep_supervision)

    def build_masker(self) -> GMIMMasker:
        return GMIMMasker.mae(grid=self.mask_grid, ratio=self.mask_ratio)

    def build_ssl_modules(self):
        if self.recon_normalisation not in RECON_NORMALISATIONS:
            raise UserInputError(f"recon_normalisation='{self.recon_normalisation}': use 'all' (divide by all "
                                 f"voxels, GMIM's reference code) or 'masked' (divide by the masked voxels, MAE).")
        self.recon_loss = MaskedMSELoss(self.recon_normalisation)
        self.masker = self.build_masker()

    def online_input(self, batch):
        return batch["data"].to(self.device, non_blocking=True)

    def reconstruct(self, x, train: bool):
        res = self.masker.mask(x)
        recon = self.network(res.masked)
        loss = self.recon_loss(recon, x, res.mask)
        return loss, res

    def ssl_loss(self, batch, train):
        x = self.online_input(batch)
        loss, res = self.reconstruct(x, train)
        curves = {"recon_loss": float(loss.detach()), "masked_fraction": float(res.mask.mean())}
        return self.recon_weight * loss, curves


class GMIMTrainer(TwoViewDataMixin, MAETrainer):
    """GMIM: adaptive grid masking, hierarchical masks and the Siamese cross-correlation target."""

    ssl_curve_keys = ("recon_loss", "cc_loss", "masked_fraction", "mean_grid")
    tunable_settings = dict(MAETrainer.tunable_settings, base_ratio=float, ratio_spread=float, cc_weight=float,
                            hierarchical_probability=float, projector_dim=int, target_crop_shift=float)
    # the target view: a second, overlapping crop (target_crop_shift) without flips, intensity augmentation only
    two_view_spatial = False

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.base_ratio = 0.5
        self.ratio_spread = 0.3
        self.cc_weight = 0.005
        self.cc_offdiag = 0.005
        self.hierarchical_probability = 0.3
        self.hierarchical_factors = (0.5, 0.25, 0.125)
        self.projector_dim = 128
        self.cc_loss = CrossCorrelationLoss(lambda_offdiag=self.cc_offdiag)
        self.recon_normalisation = "all"  # the official code: masked squared errors / all voxels
        self.target_crop_shift = 0.25  # the official code: 32 voxels of play per axis for 128 crops

    def build_masker(self) -> GMIMMasker:
        return GMIMMasker(base_ratio=self.base_ratio, spread=self.ratio_spread)

    def build_ssl_modules(self):
        if not 0.0 <= float(self.target_crop_shift) < 1.0:
            raise UserInputError(f"target_crop_shift={self.target_crop_shift}: it must lie in [0, 1) (fraction of "
                                 f"the crop side; 0 = the target sees the online crop).")
        super().build_ssl_modules()
        net = unwrap(self.network)
        ndim = spatial_ndim(net)
        width = net.encoder.output_channels[-1]
        if self.cc_weight > 0:
            # the copy is made before the hooks below are registered, so the target is never re-masked
            self.ssl_modules["target_encoder"] = StopGradientCopy(net.encoder)
            self.ssl_modules["online_projector"] = DenseProjector(width, width, self.projector_dim, ndim)
            self.ssl_modules["target_projector"] = DenseProjector(width, width, self.projector_dim, ndim)
        self.hierarchical = HierarchicalFeatureMasker(self.hierarchical_probability, self.hierarchical_factors)
        self._hier_ratio = None
        stages = net.encoder.stages
        self._hooks = [stages[i].register_forward_hook(self.hierarchical.forward_hook(i, lambda: self._hier_ratio))
                       for i in range(min(len(self.hierarchical_factors), len(stages) - 1))]

    def online_input(self, batch):
        return batch["data_v1"].to(self.device, non_blocking=True)

    def ssl_loss(self, batch, train):
        x = self.online_input(batch)
        res = self.masker.mask(x)
        self._hier_ratio = res.mean_cell_ratio if train else None
        net = unwrap(self.network)
        try:
            with capture_output(net.encoder) as tap:
                recon = self.network(res.masked)
        finally:
            self._hier_ratio = None
        skips = tap.output
        recon_loss = self.recon_loss(recon, x, res.mask)
        loss = self.recon_weight * recon_loss
        cc = torch.zeros((), device=x.device)
        if self.cc_weight > 0:
            target = self.ssl_modules["target_encoder"]
            if train:
                target.refresh(net.encoder)
            with torch.no_grad():
                target_bottleneck = target(batch["data_v2"].to(self.device, non_blocking=True))[-1]
            za = self.ssl_modules["online_projector"](skips[-1])
            zb = self.ssl_modules["target_projector"](target_bottleneck)
            cc = self.cc_loss(za, zb)
            loss = loss + self.cc_weight * cc
        curves = {"recon_loss": float(recon_loss.detach()), "cc_loss": float(cc.detach()),
                  "masked_fraction": float(res.mask.mean()), "mean_grid": float(sum(res.grids) / len(res.grids))}
        return loss, curves


GMIMTrainer_noHierarchy = variant("GMIMTrainer_noHierarchy", GMIMTrainer, __name__,
                                  "Ablation: no hierarchical re-masking of encoder features.",
                                  hierarchical_probability=0.0)
GMIMTrainer_sharedCrop = variant("GMIMTrainer_sharedCrop", GMIMTrainer, __name__,
                                  "The Siamese target sees the online crop itself (intensity augmentation only), "
                                  "as before the second crop.", target_crop_shift=0.0)
GMIMTrainer_noSiamese = variant("GMIMTrainer_noSiamese", GMIMTrainer, __name__,
                                "Ablation: adaptive + hierarchical masking only, no cross-correlation target.",
                                cc_weight=0.0)
