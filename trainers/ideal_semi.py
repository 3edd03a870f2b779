"""IDEAL's semi-supervised fine-tuning (Basak et al., ICASSP 2023): two decoders, bidirectional consistency.

    export NNUNET_SSL_UNLABELED_DATASET=502           # made by: nnunet_ssl ingest -i IMAGES -d 502 --downstream 501
    NNUNET_SSL_PRETRAINED=/path/checkpoint_final.pth \\
    NNUNET_SSL_SETTINGS="label_budget=10,budget_rest=unlabeled" \\
        nnUNetv2_train 501 3d_fullres 0 -tr IDEALSemiSupervisedTrainer
    nnUNetv2_predict -i IN -o OUT -d 501 -c 3d_fullres -f 0 -tr IDEALSemiSupervisedTrainer

* Network (:mod:`nnunet_ssl.methods.two_decoder_unet`): the plans' nnU-Net U-Net plus ``decoder_b`` (interpolation + conv
  upsampling). Inference (stock ``nnUNetv2_predict``, the final validation) averages both decoders' softmax.
* Each iteration: one labeled batch (nnU-Net's loader, label budget applied) and one unlabeled batch from the
  unlabeled pool (:mod:`nnunet_ssl.data.unlabeled_pool`): ``NNUNET_SSL_UNLABELED_DATASET`` and/or the fold's training
  cases outside the label budget (``budget_rest=unlabeled``). Loss (:mod:`nnunet_ssl.methods.semi_supervised`): nnU-Net's
  Dice+CE (deep supervision) on both decoders + ramped-up weight x cross pseudo supervision on the unlabeled batch.
* Inherits from :class:`SSLFinetuneTrainer`: warm-up schedule, ``NNUNET_SSL_PRETRAINED`` (encoder and decoder A
  load by name; ``decoder_b`` starts from its random initialisation) and the label budget.

Settings (``NNUNET_SSL_SETTINGS``), besides the fine-tuning and label-budget ones: ``consistency_weight`` (maximum
weight, default 1.0), ``consistency_rampup_epochs`` (default
:func:`~nnunet_ssl.methods.semi_supervised.default_rampup_epochs`: 10 % of ``num_epochs``, at least the first 2000
iterations' epochs, at most half), ``cps_confidence_threshold``
(default 0.9: only voxels where the teaching decoder's softmax maximum is >= 0.9 teach; 0.0 = every voxel),
``unlabeled_batch_size`` (default: the labeled batch size), ``cps_dice`` (default off: each pseudo-label term is
cross-entropy only; on: cross-entropy plus nnU-Net's soft Dice without background, as nnU-Net's own loss treats a
label). The defaults are our choice; the paper does not give them. Label training only (no regions), no cascade.
"""
import os
from typing import List

import numpy as np
import torch
from torch import autocast

from nnunet_ssl.data.augmenter import finish_augmenter, make_augmenter
from nnunet_ssl.distributed import mean_over_ranks
from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.methods.objectives.cross_pseudo_supervision import CrossPseudoSupervisionLoss
from nnunet_ssl.methods.semi_supervised import (consistency_weight_at, default_rampup_epochs,
                                                two_decoder_semi_supervised_loss)
from nnunet_ssl.methods.two_decoder_unet import TwoDecoderUNet
from nnunet_ssl.settings import Setting
from nnunet_ssl.ssl_logging import SSLLocalLogger
from nnunet_ssl.weights.health import global_weight_norm
from nnunet_ssl.weights.network_parts import unwrap
from nnunet_ssl.data.unlabeled_pool import (UNLABELED_DATASET_ENV, PoolSource, UnlabeledDataLoader, UnlabeledPool,
                                            resolve_unlabeled_dataset)
from nnunet_ssl_trainers.finetune import DECODER_WARMUP_EPOCHS, SSLFinetuneTrainer
from nnunet_ssl_trainers.optimizer_step import GUARD_SETTINGS, GuardedOptimizerStep, NonFiniteLossError
from nnunet_ssl_trainers.pretraining_loop import exit_after_nonfinite
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context


def build_two_decoder_unet(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                           enable_deep_supervision: bool = True) -> TwoDecoderUNet:
    """The nnU-Net network of the plans (``get_network_from_plans``) turned into a :class:`TwoDecoderUNet`."""
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    unet = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=enable_deep_supervision)
    net = TwoDecoderUNet(unet, num_output_channels)
    net.decoder_b.apply(InitWeights_He(1e-2))
    return net


class IDEALSemiSupervisedTrainer(SSLFinetuneTrainer):
    uses_unlabeled_pool = True
    curve_keys = ("sup_loss", "cps_loss", "consistency_weight")
    tunable_settings = dict(SSLFinetuneTrainer.tunable_settings, consistency_weight=Setting(float, min=0),
                            consistency_rampup_epochs=Setting(int, min=0),
                            cps_confidence_threshold=Setting(float, min=0, max=1),
                            unlabeled_batch_size=Setting(int, min=1), cps_dice=Setting(bool), **GUARD_SETTINGS)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.consistency_weight = 1.0
        self.consistency_rampup_epochs = None  # -> default_rampup_epochs(...) in initialize
        self.cps_confidence_threshold = 0.9  # 0.0 merged the two hippocampus classes (README, benchmarks item 8)
        self.unlabeled_batch_size = None  # -> the labeled batch size
        self.cps_dice = False  # pseudo-labels teach with CE only; True: CE + nnU-Net's soft Dice (cps_dice_loss)
        self.cps_loss = None
        self.unlabeled_pool = None
        self.dataloader_unlabeled = None
        self.initial_weight_norm = None  # set by on_train_start (nnunet_ssl.weights.health)
        # the one guarded optimizer step of nnunet_ssl (nnU-Net's clip at 12 plus the NaN/Inf guard)
        self.grad_clip = 12.0
        self.max_nonfinite_in_a_row = 20
        self._nonfinite_in_a_row = 0
        self.step_guard = GuardedOptimizerStep(self, lambda: self.network.parameters())
        self.logger.local_logger = SSLLocalLogger(self.curve_keys, with_dice=True,
                                                  curves_title="semi-supervised curves")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return build_two_decoder_unet(plans_manager, configuration_manager, num_input_channels,
                                      num_output_channels, enable_deep_supervision)

    # ------------------------------------------------------------------ setup
    def initialize(self):
        try:
            if self.label_manager.has_regions:
                raise UserInputError(
                    f"{self.__class__.__name__} needs label (softmax) training, but this dataset defines regions "
                    f"(sigmoid outputs, overlapping classes) where argmax pseudo-labels are undefined. Fix: use "
                    f"SSLFinetuneTrainer for region-based datasets.")
            if self.is_cascaded:
                raise UserInputError(
                    f"{self.__class__.__name__} does not support cascade configurations ({self.configuration_name}): "
                    f"the unlabeled pool has no previous-stage segmentations. Fix: use 3d_fullres, 3d_lowres or 2d.")
        except UserInputError as e:
            exit_on_user_error(e)
        super().initialize()  # applies NNUNET_SSL_SETTINGS, builds the network and nnU-Net's loss
        try:
            if self.consistency_rampup_epochs is None:
                self.consistency_rampup_epochs = default_rampup_epochs(self.num_epochs,
                                                                       self.num_iterations_per_epoch)
            if self.consistency_weight < 0 or self.consistency_rampup_epochs < 0:
                raise UserInputError(f"consistency_weight={self.consistency_weight} and consistency_rampup_epochs="
                                     f"{self.consistency_rampup_epochs} must be >= 0.")
            if not 0.0 <= self.cps_confidence_threshold <= 1.0:
                raise UserInputError(f"cps_confidence_threshold={self.cps_confidence_threshold} must be in [0, 1].")
            if self.unlabeled_batch_size is not None and self.unlabeled_batch_size < 1:
                raise UserInputError(f"unlabeled_batch_size={self.unlabeled_batch_size} must be >= 1.")
        except UserInputError as e:
            exit_on_user_error(e)
        self.cps_loss = CrossPseudoSupervisionLoss(self.cps_confidence_threshold,
                                                   dice=self.cps_dice_loss() if self.cps_dice else None)
        self.print_to_log_file(
            f"IDEAL semi-supervised: consistency_weight={self.consistency_weight}, ramp-up over "
            f"{self.consistency_rampup_epochs} epoch(s), cps_confidence_threshold={self.cps_confidence_threshold}, "
            f"cps_dice={self.cps_dice}")

    def cps_dice_loss(self):
        """nnU-Net's soft Dice as its ``_build_loss`` sets it up for labels (no background, the plans' batch Dice,
        smooth 1e-5), for the pseudo-label terms (``cps_dice``)."""
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
        from nnunetv2.utilities.helpers import softmax_helper_dim1
        return MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1,
                                           batch_dice=self.configuration_manager.batch_dice, do_bg=False,
                                           smooth=1e-5, ddp=self.is_ddp)

    def unlabeled_sources(self) -> List[PoolSource]:
        sources = []
        value = os.environ.get(UNLABELED_DATASET_ENV, "").strip()
        if value:
            sources.append(resolve_unlabeled_dataset(value, self.plans_manager.plans, self.configuration_name,
                                                     self.num_input_channels, self.plans_manager.dataset_name))
        rest = self.unlabeled_rest_keys()
        if rest:
            sources.append(PoolSource(name=f"{self.plans_manager.dataset_name} (training cases of fold {self.fold} "
                                           f"outside the label budget)",
                                      folder=self.preprocessed_dataset_folder, identifiers=list(rest), prefix=""))
        if not sources:
            raise UserInputError(
                f"{self.__class__.__name__} needs unlabeled data and none is configured. Fix: set "
                f"{UNLABELED_DATASET_ENV}=<id or DatasetXXX_NAME> to an unlabeled dataset ingested with this "
                f"dataset's plans (nnunet_ssl ingest -i IMAGES -d ID --downstream {self.plans_manager.dataset_name} "
                f"-p {self.plans_manager.plans_name}), and/or use only part of the labels and put the other training "
                f"cases of the fold into the pool: NNUNET_SSL_SETTINGS=\"label_budget=N,budget_rest=unlabeled\".")
        return sources

    def get_unlabeled_dataloader(self):
        pool = UnlabeledPool(self.unlabeled_sources())
        self.unlabeled_pool = pool
        self.print_to_log_file(pool.describe())
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # nnU-Net's training augmentation; labels of the pool are never used (no deep-supervision targets needed)
        transforms = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None, ignore_label=None)
        batch_size = self.unlabeled_batch_size or self.batch_size
        loader = UnlabeledDataLoader(pool, batch_size, initial_patch_size, patch_size, self.label_manager,
                                     transforms=transforms)
        n_proc = get_allowed_n_proc_DA()
        augmenter = make_augmenter(loader, n_proc, self.device.type == "cuda", num_cached=max(6, n_proc // 2))
        _ = next(augmenter)
        return augmenter

    def get_dataloaders(self):
        dl_tr, dl_val = super().get_dataloaders()  # do_split applies the label budget here
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        return dl_tr, dl_val

    def on_train_end(self):
        super().on_train_end()
        finish_augmenter(self.dataloader_unlabeled)

    def on_train_start(self):
        super().on_train_start()  # loads the pre-trained weights: the start the divergence check compares with
        self.initial_weight_norm = global_weight_norm(unwrap(self.network).state_dict().values())

    def run_training(self):
        try:
            super().run_training()
        except NonFiniteLossError as e:  # a message naming the checkpoint to continue from, not a traceback
            exit_after_nonfinite(self, e, lambda: [finish_augmenter(a) for a in (
                self.dataloader_train, self.dataloader_val, self.dataloader_unlabeled)])

    # ------------------------------------------------------------------ steps
    def current_consistency_weight(self) -> float:
        return consistency_weight_at(self.current_epoch, self.consistency_weight, self.consistency_rampup_epochs)

    def _forward_both(self, x: torch.Tensor):
        if isinstance(self.network, TwoDecoderUNet):
            return self.network.forward_both(x)
        return self.network(x, both=True)  # DDP / torch.compile wrappers: go through their __call__

    def _deep_supervision_weights(self):
        return getattr(self.loss, "weight_factors", None) if self.enable_deep_supervision else None

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        weight = self.current_consistency_weight()
        data_u = None
        if weight != 0.0:
            data_u = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss, parts = two_decoder_semi_supervised_loss(self._forward_both, self.loss, self.cps_loss, data, target,
                                                           data_u, weight, self._deep_supervision_weights())
        self.step_guard(loss)
        cps = parts["cps_loss"]
        return {"loss": loss.detach().cpu().numpy(), "sup_loss": float(parts["sup_loss"].cpu()),
                "cps_loss": float(cps.cpu()) if cps is not None else float("nan"), "consistency_weight": weight}

    # ------------------------------------------------------------------ logging
    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        for k in self.curve_keys:
            value = mean_over_ranks([o[k] for o in train_outputs if k in o])
            self.logger.log(k, value, self.current_epoch)
            self.print_to_log_file(k, np.round(value, decimals=4))


class IDEALSemiSupervisedTrainer_decoderWarmup(IDEALSemiSupervisedTrainer):
    """Both decoders warm up first with the shared encoder frozen (100 of 1000 epochs, the same share of shorter
    runs), as ``SSLFinetuneTrainer_decoderWarmup``: IDEAL's pre-training leaves the later decoder stages untrained
    and decoder B starts random, and their first full-rate gradients would otherwise distort the encoder."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_duration_decoder = DECODER_WARMUP_EPOCHS
