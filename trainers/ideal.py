"""IDEAL pre-training (Basak, Gupta, Jaiswal, Yin, Ha, "IDEAL: Improved DEnse locAL Contrastive Learning for
Semi-Supervised Medical Image Segmentation", ICASSP 2023, arXiv 2210.15075) on nnU-Net's own network.

The method is :class:`nnunet_ssl.methods.ideal.IDEALObjective` (dense InfoNCE on the aligned overlap of two views,
key encoder = EMA of the query network); this trainer only names it. The semi-supervised fine-tuning stage of
IDEAL is :class:`~nnunet_ssl_trainers.ideal_semi.IDEALSemiSupervisedTrainer`.

Variants: ``IDEALTrainer_tau02`` (temperature 0.2), ``IDEALTrainer_bottleneckOnly``, ``IDEALTrainer_cosineEMA``,
``IDEALTrainer_insideViews`` (``view_placement=inside``), ``IDEALTrainer_deepLevels`` (loss levels down to
``decoder3`` on any plans), ``IDEALTrainer_shallowLevels`` (``bottleneck,decoder1`` on any plans: the default until
2026-12-05).
Settings on top of the shared ones: ``temperature``, ``num_samples``, ``negative_exclusion_radius`` (float, case
voxels), ``cross_case_negatives`` (bool).
"""
from nnunet_ssl.methods.ideal import IDEALObjective, batch_case_ids  # noqa: F401
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer


class IDEALTrainer(nnUNetSSLTrainer):
    """IDEAL: dense InfoNCE between the aligned dense features of two views, query vs EMA key network."""
    objective_class = IDEALObjective


class IDEALTrainer_bottleneckOnly(IDEALTrainer):
    """One level: the bottleneck."""
    levels = "bottleneck"


class IDEALTrainer_tau02(IDEALTrainer):
    """Temperature 0.2."""
    temperature = 0.2


class IDEALTrainer_insideViews(IDEALTrainer):
    """Views placed inside the case like nnU-Net's patch sampler (PGL's and GMIM's placement), not centred
    anywhere in it."""
    view_placement = "inside"


class IDEALTrainer_deepLevels(IDEALTrainer):
    """Loss levels down to the third decoder stage (``bottleneck,decoder1,decoder2,decoder3``) on any plans: on
    ACDC's 2d network (5 downsamplings) the same levels as the default ``auto``."""
    levels = "bottleneck,decoder1,decoder2,decoder3"


class IDEALTrainer_shallowLevels(IDEALTrainer):
    """Loss levels ``bottleneck,decoder1`` on any plans (the default until 2026-12-05; ``auto`` resolves to them on
    hippocampus' 3d network). On ACDC's 2d network they lie at 1/32 and 1/16 of the patch and left the early encoder
    stages collapsed (docs/benchmarks.md)."""
    levels = "bottleneck,decoder1"


class IDEALTrainer_cosineEMA(IDEALTrainer):
    """Key-encoder momentum 0.99 -> 1.0 (cosine, BYOL's schedule)."""
    ema_final = 1.0
