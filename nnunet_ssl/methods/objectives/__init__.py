"""Self-supervised and semi-supervised objectives (pure torch, no nnunetv2 import). One loss per module:

- :class:`LocalConsistencyLoss`, :func:`symmetric_local_consistency`: PGL per-voxel ``2 - 2 cos`` (local_consistency)
- :class:`DenseInfoNCELoss`: IDEAL dense InfoNCE with sampled negatives (dense_infonce)
- :class:`CrossCorrelationLoss`: GMIM Barlow-Twins-style cross-correlation (cross_correlation)
- :class:`MaskedMSELoss`: MSE on masked units only (masked_reconstruction)
- :class:`CrossPseudoSupervisionLoss`: IDEAL bidirectional consistency between two decoders
  (cross_pseudo_supervision)
"""
from nnunet_ssl.methods.objectives.cross_correlation import CrossCorrelationLoss
from nnunet_ssl.methods.objectives.cross_pseudo_supervision import CrossPseudoSupervisionLoss
from nnunet_ssl.methods.objectives.dense_infonce import DenseInfoNCELoss
from nnunet_ssl.methods.objectives.local_consistency import LocalConsistencyLoss, symmetric_local_consistency
from nnunet_ssl.methods.objectives.masked_reconstruction import MaskedMSELoss

__all__ = [
    "CrossCorrelationLoss",
    "CrossPseudoSupervisionLoss",
    "DenseInfoNCELoss",
    "LocalConsistencyLoss",
    "MaskedMSELoss",
    "symmetric_local_consistency",
]
