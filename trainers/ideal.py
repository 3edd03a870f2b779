"""IDEAL pre-training (Basak, Gupta, Jaiswal, Yin, Ha, "IDEAL: Improved DEnse locAL Contrastive Learning for
Semi-Supervised Medical Image Segmentation", ICASSP 2023, arXiv 2210.15075) on nnU-Net's own network.

**paper**: dense (voxel-level) contrastive pre-training on two views with query and key encoders; the projection
head is a 1x1 convolution so the projection stays dense.

**choice** (METHODS.md): views, alignment, levels from
:class:`~nnunet_ssl_trainers.aligned_views.AlignedViewsTrainer` (``bottleneck`` and ``decoder1`` by default);
key encoder = EMA of the query network with constant momentum 0.99 (``ema_final`` = None; set ``ema_final=1.0``
or use ``IDEALTrainer_cosineEMA`` for BYOL's 0.99 -> 1 schedule); per level a 1x1-conv
:class:`~nnunet_ssl.heads.DenseProjector` (no predictor); loss per level
:class:`~nnunet_ssl.objectives.DenseInfoNCELoss` (q = online projection, k = EMA projection of the other view,
positives = corresponding voxels of the overlap, negatives = other sampled voxels of both views, temperature 0.1,
at most ``num_samples`` = 1024 voxels per sample), symmetrised over the two views, averaged over levels.
The semi-supervised fine-tuning stage of IDEAL (two decoders, bidirectional consistency) is a separate trainer.

Variants: ``IDEALTrainer_tau02`` (temperature 0.2), ``IDEALTrainer_bottleneckOnly``, ``IDEALTrainer_cosineEMA``.
Settings on top of the shared ones: ``temperature``, ``num_samples``.
"""
import torch

from nnunet_ssl.heads import DenseProjector
from nnunet_ssl.objectives import DenseInfoNCELoss
from nnunet_ssl_trainers.aligned_views import AlignedViewsTrainer
from nnunet_ssl_trainers.variants import variant


class IDEALTrainer(AlignedViewsTrainer):
    tunable_settings = dict(AlignedViewsTrainer.tunable_settings, temperature=float, num_samples=int)

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_final = None  # constant key-encoder momentum ema_base (0.99)
        self.temperature = 0.1
        self.num_samples = 1024

    def build_ssl_modules(self):
        self.contrastive = DenseInfoNCELoss(self.temperature, self.num_samples)
        super().build_ssl_modules()

    def make_projector(self, channels, ndim):
        return DenseProjector(channels, self.projector_hidden, self.projector_dim, ndim)

    def level_loss(self, online1, online2, target1, target2, mask):
        # query = online projection of one view, key = EMA projection of the other at the same overlap cell
        return 0.5 * (self.contrastive(online1, target2, mask) + self.contrastive(online2, target1, mask))


IDEALTrainer_tau02 = variant("IDEALTrainer_tau02", IDEALTrainer, __name__, "Temperature 0.2.", temperature=0.2)
IDEALTrainer_bottleneckOnly = variant("IDEALTrainer_bottleneckOnly", IDEALTrainer, __name__,
                                      "One level: the bottleneck.", levels="bottleneck")
IDEALTrainer_cosineEMA = variant("IDEALTrainer_cosineEMA", IDEALTrainer, __name__,
                                 "Key-encoder momentum 0.99 -> 1.0 (cosine, BYOL's schedule).", ema_final=1.0)
