"""IDEAL pre-training objective (Basak, Gupta, Jaiswal, Yin, Ha, "IDEAL: Improved DEnse locAL Contrastive Learning for
Semi-Supervised Medical Image Segmentation", ICASSP 2023, arXiv 2210.15075) on nnU-Net's own network.

**paper**: dense (voxel-level) contrastive pre-training on two views with query and key encoders; the projection
head is a 1x1 convolution so the projection stays dense.

**choice** (METHODS.md): views, alignment, levels from
:class:`~nnunet_ssl.methods.aligned_views.AlignedViewsObjective` (``auto`` by default: the bottleneck and the
decoder stages down to 1/4 of the input resolution);
key encoder = EMA of the query network with constant momentum 0.99 (``ema_final`` = None; set ``ema_final=1.0``
or use ``IDEALTrainer_cosineEMA`` for BYOL's 0.99 -> 1 schedule); per level a 1x1-conv
:class:`~nnunet_ssl.methods.heads.DenseProjector` (no predictor); loss per level
:class:`~nnunet_ssl.methods.objectives.DenseInfoNCELoss` (q = online projection, k = EMA projection of the other view,
positives = corresponding voxels of the overlap, negatives = other sampled voxels of both views, temperature 0.1,
at most ``num_samples`` = 1024 voxels per sample), symmetrised over the two views, averaged over levels.
The semi-supervised fine-tuning stage of IDEAL (two decoders, bidirectional consistency) is a separate trainer.

Negatives near the anchor (**choice**): the aligned maps are interpolations of the level's feature map, so cells
closer than one feature cell to the anchor mix the anchor's (and its positive's) own features. The loss gets the
case voxel coordinates of the overlap grid's cells and drops negatives of the same case closer than
``negative_exclusion_radius`` (case voxels; default None = one feature cell of the level, per sample the larger
of the two views' cell sides ``box side / feature-map size`` over the axes; 0 = no exclusion, the behaviour before
this setting existed). ``cross_case_negatives`` (default off) adds the other cases of the batch as negatives;
batch entries of one case (same key, and slice in 2d) share a coordinate frame, so the radius applies between
them too.

Settings on top of the shared ones: ``temperature``, ``num_samples``, ``negative_exclusion_radius`` (float, case
voxels), ``cross_case_negatives`` (bool).
"""

from typing import List, Optional

import torch
from torch import nn

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.methods.aligned_views import AlignedViewsObjective
from nnunet_ssl.methods.alignment import overlap_box
from nnunet_ssl.methods.heads import DenseProjector
from nnunet_ssl.methods.objectives import DenseInfoNCELoss
from nnunet_ssl.methods.views import view_cell_centres
from nnunet_ssl.settings import Setting

__all__ = ["IDEALObjective", "batch_case_ids"]


def batch_case_ids(batch: dict) -> Optional[list]:
    """One int per sample, equal for samples of the same case (key, and slice for 2d); None without keys."""
    keys = batch.get("keys")
    if keys is None:
        return None
    slices = batch.get("slice_idx")
    slices = [-1] * len(keys) if slices is None else [int(z) for z in slices]
    ids = {}
    return [ids.setdefault((str(key), z), len(ids)) for key, z in zip(keys, slices)]


class IDEALObjective(AlignedViewsObjective):
    settings = dict(AlignedViewsObjective.settings, temperature=Setting(float, min=0, min_exclusive=True),
                    num_samples=Setting(int, min=1), negative_exclusion_radius=Setting(float, min=0),
                    cross_case_negatives=bool)
    ema_final = None  # constant key-encoder momentum ema_base (0.99)
    # IDEAL was benchmarked with view centres anywhere in the case (up to half a view of padding); PGL and GMIM
    # keep views inside the case like nnU-Net's sampler (IDEALTrainer_insideViews; docs/methods.md)
    view_placement = "centre"
    # IDEAL's route check (2026-12-07, validation cases of hippocampus and ACDC): fine-tuning from the encoder alone,
    # decoder-first warm-up, then the whole net at nnU-Net's rate beat loading the decoder with the encoder at 0.1x
    decoder_transfers = False
    temperature = 0.1
    num_samples = 1024
    negative_exclusion_radius = None  # None = one feature cell of the level (case voxels); 0 = off
    cross_case_negatives = False

    def __init__(self, network, info, **kwargs):
        r = kwargs.get("negative_exclusion_radius", self.negative_exclusion_radius)
        if r is not None and not float(r) >= 0:
            raise UserInputError(f"negative_exclusion_radius must be >= 0 (case voxels; 0 = no exclusion), got {r}.")
        self._views = None  # geometry of the batch in loss, read by level_loss
        super().__init__(network, info, **kwargs)
        self.contrastive = DenseInfoNCELoss(self.temperature, self.num_samples,
                                            cross_case_negatives=self.cross_case_negatives)

    def describe(self) -> List[str]:
        r = self.negative_exclusion_radius
        return super().describe() + [f"IDEAL negatives: exclusion radius "
                                     f"{'one feature cell of the level' if r is None else f'{float(r)} case voxels'}, "
                                     f"cross-case negatives {'on' if self.cross_case_negatives else 'off'}"]

    def make_projector(self, channels, ndim):
        return DenseProjector(channels, self.projector_hidden, self.projector_dim, ndim)

    # the loss needs the case coordinates of the aligned cells: loss keeps the batch geometry for level_loss,
    # alignment_size (called per level just before level_loss) the level's feature-map size
    def loss(self, batch, network, train, modules: Optional[nn.ModuleDict] = None):
        self._views = {"boxes": tuple(torch.as_tensor(batch[k]) for k in ("box_v1", "box_v2")),
                       "case_ids": batch_case_ids(batch)}
        try:
            return super().loss(batch, network, train, modules)
        finally:
            self._views = None

    def alignment_size(self, features):
        if self._views is not None:
            self._views["feature_size"] = tuple(int(s) for s in features.shape[2:])
        return super().alignment_size(features)

    def negatives_context(self, aligned: torch.Tensor) -> dict:
        """Keyword arguments of the loss for the current level: cell coordinates, radius, case ids."""
        if self._views is None or "feature_size" not in self._views:
            # outside loss (no geometry): the loss uses cell indices; one cell there excludes only the anchor
            return {} if self.negative_exclusion_radius is None else {"radius": self.negative_exclusion_radius}
        box1, box2 = (b.to(torch.float64) for b in self._views["boxes"])
        size = tuple(aligned.shape[2:])
        roi, _ = overlap_box(box1, box2)
        coords = torch.stack([view_cell_centres(roi[b], None, size) for b in range(roi.shape[0])])
        radius = self.negative_exclusion_radius
        if radius is None:
            feature = torch.tensor(self._views["feature_size"], dtype=torch.float64)
            radius = torch.maximum((box1[:, 1] - box1[:, 0]) / feature, (box2[:, 1] - box2[:, 0]) / feature)
            radius = radius.max(dim=1).values
        return {"coords": coords.to(aligned.device), "radius": radius, "case_ids": self._views["case_ids"]}

    def level_loss(self, online1, online2, target1, target2, mask):
        # query = online projection of one view, key = EMA projection of the other at the same overlap cell
        kw = self.negatives_context(online1)
        return 0.5 * (self.contrastive(online1, target2, mask, **kw) + self.contrastive(online2, target1, mask, **kw))
