"""GMIM and MAE pre-training trainers (masked image modeling on nnU-Net's own network).

The method is :mod:`nnunet_ssl.methods.masked_modeling` (:class:`MAEObjective`, :class:`GMIMObjective`); these
trainers only name it. ``MAETrainer`` trains on nnU-Net's own loader (one view); ``GMIMTrainer`` on two crops of a
case (the Siamese target's second crop, ``target_crop_shift``). The reconstruction output layer has as many channels
as the input (``build_network_architecture``), so the checkpoint's ``network_weights`` is the full nnU-Net network
and stock ``-pretrained_weights`` loads everything but the output layer.

Settings (``NNUNET_SSL_SETTINGS``) on top of the shared ones: ``mask_ratio``, ``mask_grid``,
``recon_normalisation`` (``all`` or ``masked``) and for GMIM ``base_ratio``, ``ratio_spread``, ``cc_weight``,
``hierarchical_probability``, ``projector_dim``, ``target_crop_shift`` (in [0, 1)).
"""
from nnunet_ssl.methods.masked_modeling import GMIMObjective, MAEObjective
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer


class MAETrainer(nnUNetSSLTrainer):
    """Masked-autoencoder-style baseline: fixed grid 8 and ratio 0.75, no hierarchy, no target branch."""
    objective_class = MAEObjective


class GMIMTrainer(nnUNetSSLTrainer):
    """GMIM: adaptive grid masking, hierarchical masks and the Siamese cross-correlation target."""
    objective_class = GMIMObjective


class GMIMTrainer_noHierarchy(GMIMTrainer):
    """Ablation: no hierarchical re-masking of encoder features."""
    hierarchical_probability = 0.0


class GMIMTrainer_sharedCrop(GMIMTrainer):
    """The Siamese target sees the online crop itself (intensity augmentation only), as before the second crop."""
    target_crop_shift = 0.0


class GMIMTrainer_noSiamese(GMIMTrainer):
    """Ablation: adaptive + hierarchical masking only, no cross-correlation target."""
    cc_weight = 0.0
