"""``AlignedViewsTrainer``: the shared base objective of PGL and IDEAL under a trainer name.

The machinery (two views, online vs EMA target network, aligned dense levels) is
:mod:`nnunet_ssl.methods.aligned_views`; :class:`~nnunet_ssl_trainers.pgl.PGLTrainer` and
:class:`~nnunet_ssl_trainers.ideal.IDEALTrainer` name its two concrete objectives. This trainer names the abstract
base objective (no heads, no per-level loss), so it is a base to derive from, not a method to run.
"""
from nnunet_ssl.methods.aligned_views import (AlignedViewsObjective, aligned_pair, level_cell_geometry,  # noqa: F401
                                              level_channels, level_spec, overlap_mask, parse_levels)
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer


class AlignedViewsTrainer(nnUNetSSLTrainer):
    objective_class = AlignedViewsObjective
