"""A small synthetic nnU-Net dataset, made on the fly, for the demo and for quick checks.

Each case is a 3d volume (1 mm isotropic) with a smooth textured background, a multiplicative bias field and
noise, containing one "organ" (label 1, brighter ellipsoid) with an attached "lesion" (label 2, darker, textured
ellipsoid partly inside it). Shapes, positions, contrasts and bias vary per case, so segmentation needs
appearance and context - something pre-training on unlabeled volumes can learn. Deterministic for a seed.
"""
import json
import os
from typing import Tuple

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter


def _ellipsoid(shape, center, radii, rotation_angle):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), 0)
    d = grid - np.asarray(center, dtype=np.float32)[:, None, None, None]
    c, s = np.cos(rotation_angle), np.sin(rotation_angle)
    x = c * d[0] - s * d[1]
    y = s * d[0] + c * d[1]
    z = d[2]
    return (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1.0


def make_case(rng: np.random.Generator, shape: Tuple[int, int, int] = (40, 40, 40)):
    """Return (image float32, label uint8) of one synthetic case."""
    shape = tuple(shape)
    background = gaussian_filter(rng.normal(0, 1, shape), sigma=3.0)
    background = 100 + 40 * background / (background.std() + 1e-6)
    center = [s / 2 + rng.uniform(-s / 6, s / 6) for s in shape]
    radii = [s * rng.uniform(0.18, 0.3) for s in shape]
    organ = _ellipsoid(shape, center, radii, rng.uniform(0, np.pi))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    lesion_center = [c + 0.5 * r * d for c, r, d in zip(center, radii, direction)]
    lesion_radii = [r * rng.uniform(0.45, 0.65) for r in radii]
    lesion = _ellipsoid(shape, lesion_center, lesion_radii, rng.uniform(0, np.pi))
    texture = gaussian_filter(rng.normal(0, 1, shape), sigma=1.0)
    image = background.copy()
    image[organ] += rng.uniform(50, 90) + 10 * texture[organ]
    image[lesion] = 60 + rng.uniform(-15, 15) + 20 * texture[lesion] / (texture.std() + 1e-6)
    smooth = gaussian_filter(rng.normal(0, 1, shape), sigma=10.0)
    bias = np.exp(0.2 * smooth / (smooth.std() + 1e-6))
    image = image * bias / bias.mean() + rng.normal(0, 8, shape)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return image.astype(np.float32), label


def _write(array, path, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, path, useCompression=True)


def make_synthetic_dataset(raw_root: str, dataset_id: int = 990, name: str = "SynthOrgans", n_train: int = 10,
                           n_test: int = 10, n_unlabeled: int = 40, shape=(40, 40, 40), seed: int = 0) -> dict:
    """Write ``DatasetXXX_NAME`` (imagesTr/labelsTr/imagesTs/labelsTs) plus a folder of unlabeled images.

    Returns the paths: dataset folder, ``unlabeled`` folder (outside the dataset, as a user would have it),
    ``imagesTs`` and ``labelsTs``.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    unlabeled = os.path.join(raw_root, f"{name}_unlabeled_images")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    os.makedirs(unlabeled, exist_ok=True)
    for i in range(n_train + n_test):
        image, label = make_case(rng, shape)
        split = "Tr" if i < n_train else "Ts"
        case = f"synth_{i:03d}"
        _write(image, os.path.join(folder, f"images{split}", f"{case}_0000.nii.gz"))
        _write(label, os.path.join(folder, f"labels{split}", f"{case}.nii.gz"))
    for i in range(n_unlabeled):
        image, _ = make_case(rng, shape)
        _write(image, os.path.join(unlabeled, f"unl_{i:03d}_0000.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                   "numTraining": n_train, "file_ending": ".nii.gz",
                   "description": "nnunet_ssl synthetic demo dataset"}, f, indent=2)
    return {"dataset_folder": folder, "unlabeled": unlabeled, "imagesTs": os.path.join(folder, "imagesTs"),
            "labelsTs": os.path.join(folder, "labelsTs")}
