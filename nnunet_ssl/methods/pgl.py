"""PGL objective (Xie, Zhang, Liao, Xia, Shen, "PGL: Prior-Guided Local Self-supervised Learning for 3D Medical
Image Segmentation", arXiv 2011.12640) on nnU-Net's own network.

**paper**: two augmented views; their spatial transforms (crop/scale, flip) tell which voxels correspond; the
feature maps of the shared region are aligned and a local consistency loss pulls the online prediction of one
view towards the EMA target projection of the other; online branch = encoder + local (spatial) projector +
predictor, target branch = EMA (BYOL style).

**choice** (docs/methods.md): views, alignment, levels and EMA schedule from
:class:`~nnunet_ssl.methods.aligned_views.AlignedViewsObjective` (levels ``auto`` by default: the
bottleneck and the decoder stages down to 1/4 of the input resolution; momentum 0.99 -> 1.0 cosine); per level
:class:`~nnunet_ssl.methods.heads.DenseProjector` +
:class:`~nnunet_ssl.methods.heads.DensePredictor` (1x1 convs, 256 hidden, 128 out); loss per level
``0.5 * (L(p1, z2) + L(p2, z1))`` with ``L`` = mean over the aligned voxels of ``2 - 2 cos``
(:func:`~nnunet_ssl.methods.objectives.symmetric_local_consistency`), averaged over levels.
"""
from nnunet_ssl.methods.aligned_views import AlignedViewsObjective
from nnunet_ssl.methods.heads import DensePredictor, DenseProjector
from nnunet_ssl.methods.objectives import symmetric_local_consistency

__all__ = ["PGLObjective"]


class PGLObjective(AlignedViewsObjective):
    def make_projector(self, channels, ndim):
        return DenseProjector(channels, self.projector_hidden, self.projector_dim, ndim)

    def make_predictor(self, ndim):
        return DensePredictor(self.projector_dim, self.projector_hidden, self.projector_dim, ndim)

    def level_loss(self, online1, online2, target1, target2, mask):
        # online = predictor(projector(.)) of each view, target = EMA projection; view 1 predicts view 2 and back
        return symmetric_local_consistency(online1, target2, online2, target1, mask)
