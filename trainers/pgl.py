"""PGL pre-training (Xie, Zhang, Liao, Xia, Shen, "PGL: Prior-Guided Local Self-supervised Learning for 3D Medical
Image Segmentation", arXiv 2011.12640) on nnU-Net's own network.

The method is :class:`nnunet_ssl.methods.pgl.PGLObjective` (two views, alignment, levels and EMA schedule of
:class:`~nnunet_ssl.methods.aligned_views.AlignedViewsObjective`); this trainer only names it.

Variants: ``PGLTrainer_ema0996`` (EMA base 0.996), ``PGLTrainer_bottleneckOnly`` (one level),
``PGLTrainer_encoderOnly`` (bottleneck + encoder1: no decoder stage is trained by the SSL loss). The two variants
that train no decoder stage transfer the encoder only (``decoder_transfers = False``: their decoder is as untrained
as a fresh one), so they take the encoder-only fine-tuning route.
"""
from nnunet_ssl.methods.pgl import PGLObjective
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer


class PGLTrainer(nnUNetSSLTrainer):
    """PGL: local consistency between the aligned dense features of two views, online vs EMA target."""
    objective_class = PGLObjective


class PGLTrainer_ema0996(PGLTrainer):
    """EMA base momentum 0.996."""
    ema_base = 0.996


class PGLTrainer_bottleneckOnly(PGLTrainer):
    """One level: the bottleneck."""
    levels = "bottleneck"
    decoder_transfers = False


class PGLTrainer_encoderOnly(PGLTrainer):
    """Bottleneck + encoder1: no decoder stage is trained by the SSL loss."""
    levels = "bottleneck,encoder1"
    decoder_transfers = False
