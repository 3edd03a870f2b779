"""ReFs' supervised reference task: a labeled nnU-Net dataset, its loader, a segmentation head and nnU-Net's Dice+CE.

The reference dataset is any labeled dataset preprocessed with the plans of the unlabeled one
(``NNUNET_SSL_REFERENCE_DATASET``, :func:`nnunet_ssl.data.reference.resolve_reference`). Its labels may differ from
the downstream task: it gets its own deep-supervision head (:class:`ReferenceHead`, 1x1 convs on every decoder
stage) that lives in the trainer's ``ssl_modules["ref_head"]`` (outside the network, dropped after pre-training).
The batches come from nnU-Net's own loader and training transforms built for the reference labels (deep
supervision on), the loss is nnU-Net's own (:meth:`nnUNetTrainer._build_loss` for those labels).
"""
import contextlib
import warnings

import torch
from torch import nn

from nnunet_ssl.data.reference import resolve_reference
from nnunet_ssl.methods.heads import conv_for
from nnunet_ssl.weights.network_parts import decoder_features, decoder_stage_channels, spatial_ndim, unwrap
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA


class ReferenceHead(nn.Module):
    """1x1 convolutions on every decoder stage: deep-supervision logits for the reference labels."""

    def __init__(self, channels_coarse_first, num_classes: int, ndim: int):
        super().__init__()
        conv = conv_for(ndim)
        self.layers = nn.ModuleList([conv(c, num_classes, 1) for c in channels_coarse_first])

    def forward(self, decoder_outputs_coarse_first):
        return [layer(f) for layer, f in zip(self.layers, decoder_outputs_coarse_first)][::-1]


class ReferenceTask:
    """Built from an initialised pre-training trainer (network, plans); raises ``UserInputError`` when the
    reference dataset is missing or planned differently."""

    def __init__(self, trainer, weight: float = 1.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.dataset = resolve_reference(trainer.plans_manager.dataset_name, trainer.plans_manager.plans,
                                             trainer.configuration_name, trainer.num_input_channels,
                                             trainer.dataset_json)
        for w in caught:
            trainer.print_to_log_file(f"WARNING: {w.message}")
        self.weight = weight
        self.label_manager = trainer.plans_manager.get_label_manager(self.dataset.dataset_json)
        net = unwrap(trainer.network)
        self.head = ReferenceHead(decoder_stage_channels(net), self.label_manager.num_segmentation_heads,
                                  spatial_ndim(net))
        with self.as_reference_task(trainer):
            self.loss_fn = nnUNetTrainer._build_loss(trainer)

    @contextlib.contextmanager
    def as_reference_task(self, trainer):
        """Let nnU-Net's own loss/transform builders work for the reference labels (deep supervision on)."""
        saved = (trainer.label_manager, trainer.enable_deep_supervision)
        trainer.label_manager, trainer.enable_deep_supervision = self.label_manager, True
        try:
            yield
        finally:
            trainer.label_manager, trainer.enable_deep_supervision = saved

    def make_loader(self, trainer):
        """nnU-Net's loader and training transforms for the reference labels, as one of the trainer's extra
        loaders (:meth:`~nnunet_ssl_trainers.ssl_base.nnUNetSSLTrainer.extra_loader`)."""
        folder = self.dataset.folder
        dataset_class = infer_dataset_class(folder)
        dataset = dataset_class(folder, dataset_class.get_identifiers(folder))
        patch = trainer.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch, mirror_axes = \
            trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        with self.as_reference_task(trainer):
            transforms = trainer.get_training_transforms(
                patch, rotation, trainer._get_deep_supervision_scales(), mirror_axes, dummy_2d,
                use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
                foreground_labels=lm.foreground_labels,
                regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
        loader = nnUNetDataLoader(dataset, trainer.batch_size, initial_patch, patch, lm,
                                  oversample_foreground_percent=0.33, transforms=transforms)
        n_proc = get_allowed_n_proc_DA()
        return trainer.extra_loader(loader, max(1, n_proc // 2) if n_proc > 0 else 0, num_cached=max(3, n_proc // 2))

    def loss(self, network: nn.Module, head: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        """``weight`` x nnU-Net's Dice+CE of the head on ``network``'s decoder stages (the caller's autocast)."""
        data = batch["data"].to(device, non_blocking=True)
        target = [t.to(device, non_blocking=True) for t in batch["target"]]
        logits = head(decoder_features(network, network.encoder(data)))
        return self.weight * self.loss_fn(logits, target)
