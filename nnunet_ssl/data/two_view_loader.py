"""Two-view loader over an nnU-Net preprocessed dataset (PGL, IDEAL pre-training; GMIM with ``spatial=False``).

Each sample is one case drawn at random (with replacement, infinite, like nnU-Net's ``nnUNetDataLoader``); two
views are cut from it with :mod:`nnunet_ssl.methods.views` (random box + flips each) and then each view gets nnU-Net's
intensity augmentations independently. The batch carries the view geometry so that features of the two views can
be aligned (:mod:`nnunet_ssl.methods.alignment`):

``{'data_v1', 'data_v2'}``: float32 ``(B, C, *patch)``; ``{'box_v1', 'box_v2'}``: float32 ``(B, 2, ndim)`` in case
voxel coordinates (in-slice for 2d); ``{'flip_v1', 'flip_v2'}``: bool ``(B, ndim)``; ``keys``: case identifiers;
2d only: ``slice_idx`` int64 ``(B,)``, the slice (index along the case's first axis) both views were cut from.

Randomness: box/flip/case/slice sampling uses numpy's global state (seeded per worker by batchgenerators'
augmenters, as for nnU-Net's loader); the batchgeneratorsv2 transforms use torch's global RNG, which this loader
reseeds once from numpy inside each background worker process (forked workers would otherwise share one torch
RNG state and produce identical intensity augmentations).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import DataLoader
from threadpoolctl import threadpool_limits

from nnunet_ssl.methods.views import (ViewSamplingConfig, extract_view, place_box, sample_box, sample_flips,
                                     sample_two_boxes)


def shifted_box(box: np.ndarray, shift: float, case_shape_spatial: Sequence[int], rng=None,
                placement: str = ViewSamplingConfig.placement) -> np.ndarray:
    """A box of the same size as ``box`` ``(2, ndim)``, moved along each axis by ``(u2 - u1) * side`` with
    ``u1, u2 ~ U[0, shift]``: where two same-size crops land when each is drawn uniformly from one region enlarged
    by ``shift`` of the side (the official GMIM code's pair of crops: 32 voxels over a 128 crop, ``shift`` 0.25).
    The moved box is then placed like the first (:func:`nnunet_ssl.methods.views.place_box`, ``placement``), so the
    boxes overlap by at least ``1 - shift`` of the side on every axis.
    """
    rng = np.random if rng is None else rng
    box = np.asarray(box, dtype=np.float64)
    side = box[1] - box[0]
    u1 = np.array([rng.uniform(0, shift) for _ in side])
    u2 = np.array([rng.uniform(0, shift) for _ in side])
    lo = box[0] + (u2 - u1) * side
    return place_box(np.stack((lo, lo + side)), case_shape_spatial, placement)


def intensity_only_transforms(low_res_ignore_axes: Optional[Tuple[int, ...]] = None):
    """nnU-Net's intensity augmentations as a batchgeneratorsv2 ``ComposeTransforms`` (no spatial, no mirroring).

    Same transforms, probabilities and parameters as ``nnUNetTrainer.get_training_transforms`` (nnunetv2 2.8.1):
    Gaussian noise, Gaussian blur, multiplicative brightness, contrast, low-resolution simulation, inverted gamma,
    gamma. ``low_res_ignore_axes``: axes the low-resolution simulation leaves alone (nnU-Net passes ``(0,)`` when
    it uses dummy 2d augmentation for anisotropic 3d data). Apply per sample to ``{'image': (C, *patch) tensor}``.
    """
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    def gamma(p_invert: float, p_apply: float):
        return RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=p_invert,
                                              synchronize_channels=False, p_per_channel=1, p_retain_stats=1),
                               apply_probability=p_apply)

    steps = [
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.1),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5, benchmark=True),
                        apply_probability=0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=low_res_ignore_axes,
                                                       allowed_channels=None, p_per_channel=0.5),
                        apply_probability=0.25),
        gamma(p_invert=1, p_apply=0.1),
        gamma(p_invert=0, p_apply=0.3),
    ]
    return ComposeTransforms(steps)


class TwoViewDataLoader(DataLoader):
    """Infinite random two-view batches from an nnU-Net dataset object.

    ``dataset``: an ``nnunetv2.training.dataloading.nnunet_dataset`` instance (``nnUNetDatasetBlosc2`` /
    ``nnUNetDatasetNumpy``), e.g. ``infer_dataset_class(folder)(folder, identifiers)``; only the image
    (``load_case(k)[0]``) is used, segmentations are ignored.
    ``patch_size``: 3 entries = 3d views of the case; 2 entries = 2d views of a random slice along the first axis
    (nnU-Net's 2d configuration), boxes in in-slice coordinates.
    ``intensity_transforms``: a batchgeneratorsv2 transform applied to ``{'image': view}`` per view and sample
    (e.g. :func:`intensity_only_transforms`), or a pair ``(for view 1, for view 2)`` (either may be None), or None.
    ``spatial``: False = no flips, view 1's box is drawn with ``view_cfg``'s scale range and view 2 either shares
    it (``crop_shift`` 0: the views differ only by the intensity augmentation) or is the same-size box moved by
    :func:`shifted_box` (``crop_shift`` > 0, below 1: a second crop of the case overlapping the first; GMIM's
    Siamese target view). ``crop_shift`` must be 0 with ``spatial=True``.
    """

    def __init__(self, dataset, batch_size: int, patch_size: Sequence[int],
                 view_cfg: Optional[ViewSamplingConfig] = None, intensity_transforms=None, spatial: bool = True,
                 sampling_probabilities=None, crop_shift: float = 0.0):
        # like nnUNetDataLoader: 1 thread hint, no seed, no incomplete batches, shuffle, infinite
        super().__init__(dataset, batch_size, 1, None, True, False, True, sampling_probabilities)
        self.indices = list(dataset.identifiers)
        if len(self.indices) == 0:
            raise ValueError("TwoViewDataLoader got a dataset without cases")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 entries, got {patch_size}")
        self.view_cfg = view_cfg if view_cfg is not None else ViewSamplingConfig()
        if isinstance(intensity_transforms, (tuple, list)):
            if len(intensity_transforms) != 2:
                raise ValueError("intensity_transforms must be one transform or a pair (view 1, view 2)")
            self.transforms = tuple(intensity_transforms)
        else:
            self.transforms = (intensity_transforms, intensity_transforms)
        self.spatial = bool(spatial)
        self.crop_shift = float(crop_shift)
        if not 0.0 <= self.crop_shift < 1.0:
            raise ValueError(f"crop_shift must lie in [0, 1) (fraction of the crop side), got {crop_shift}")
        if self.spatial and self.crop_shift > 0:
            raise ValueError("crop_shift applies to spatial=False only (spatial views draw both boxes themselves)")
        self._creator_pid = os.getpid()
        self._torch_seeded_pid = None

    @property
    def ndim(self) -> int:
        return len(self.patch_size)

    def _maybe_seed_torch(self):
        pid = os.getpid()
        if pid != self._creator_pid and self._torch_seeded_pid != pid:
            torch.manual_seed(int(np.random.randint(0, 2 ** 31 - 1)))
            self._torch_seeded_pid = pid

    def _views_of_case(self, data):
        """Cut two views (tensors), boxes and flips from one case array (C, *spatial) (3d or 2d slice)."""
        shape = tuple(int(s) for s in data.shape[1:])
        z = -1
        if self.ndim == 2:
            if len(shape) == 3:
                z = min(int(np.random.random() * shape[0]), shape[0] - 1)
                data = data[:, z]
                shape = shape[1:]
            elif len(shape) != 2:
                raise ValueError(f"case of shape {tuple(data.shape)} cannot give 2d views")
        elif len(shape) != 3:
            raise ValueError(f"case of shape {tuple(data.shape)} cannot give 3d views")
        cfg = self.view_cfg
        if self.spatial:
            box1, box2 = sample_two_boxes(shape, self.patch_size, cfg, np.random)
            flip1 = sample_flips(self.ndim, cfg, np.random)
            flip2 = sample_flips(self.ndim, cfg, np.random)
            v1 = extract_view(data, box1, flip1, self.patch_size)
            v2 = extract_view(data, box2, flip2, self.patch_size)
        else:
            box1 = sample_box(shape, self.patch_size, cfg, np.random)
            flip1 = np.zeros(self.ndim, dtype=bool)
            flip2 = flip1.copy()
            v1 = extract_view(data, box1, flip1, self.patch_size)
            if self.crop_shift > 0:
                box2 = shifted_box(box1, self.crop_shift, shape, np.random, cfg.placement)
                v2 = extract_view(data, box2, flip2, self.patch_size)
            else:
                box2 = box1.copy()
                v2 = v1.clone()
        views = []
        for v, t in zip((v1, v2), self.transforms):
            if t is not None:
                v = t(**{'image': v})['image']
            views.append(v)
        return views, (box1, box2), (flip1, flip2), z

    def generate_train_batch(self):
        self._maybe_seed_torch()
        keys = self.get_indices()
        B, nd = len(keys), self.ndim
        data_v = [None, None]
        boxes = [torch.empty((B, 2, nd), dtype=torch.float32) for _ in range(2)]
        flips = [torch.empty((B, nd), dtype=torch.bool) for _ in range(2)]
        slice_idx = torch.full((B,), -1, dtype=torch.long)
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for b, k in enumerate(keys):
                data = self._data.load_case(k)[0]
                views, bxs, fls, slice_idx[b] = self._views_of_case(data)
                for i in range(2):
                    if data_v[i] is None:
                        data_v[i] = torch.empty((B, *views[i].shape), dtype=torch.float32)
                    data_v[i][b] = views[i]
                    boxes[i][b] = torch.from_numpy(bxs[i])
                    flips[i][b] = torch.from_numpy(fls[i])
        batch = {'data_v1': data_v[0], 'data_v2': data_v[1], 'box_v1': boxes[0], 'box_v2': boxes[1],
                 'flip_v1': flips[0], 'flip_v2': flips[1], 'keys': keys}
        if nd == 2:
            batch['slice_idx'] = slice_idx  # index along the case's first axis of the slice both views come from
        return batch


def make_two_view_augmenter(loader: TwoViewDataLoader, num_processes: int, pin_memory: bool = False,
                            num_cached: Optional[int] = None):
    """Wrap ``loader`` like nnU-Net's ``get_dataloaders`` (:func:`nnunet_ssl.data.augmenter.make_augmenter`): the
    transforms already run inside the loader. Call ``._finish()`` on a multi-process augmenter when done."""
    from nnunet_ssl.data.augmenter import make_augmenter
    return make_augmenter(loader, num_processes, pin_memory, num_cached)
