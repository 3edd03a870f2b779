"""What does a frozen network's representation tell about a segmentation task? A dense linear probe.

* :func:`dense_features`: per-voxel features at the input's resolution. ``encoder``: every encoder stage's output,
  interpolated (bilinear / trilinear) to the input size and concatenated (a hypercolumn); ``decoder``: the last
  decoder stage's output (what nnU-Net's output layer sees); ``both``: the two concatenated.
* :class:`LinearProbe`: softmax regression on those features, fitted (L-BFGS, L2 penalty) on class-balanced voxel
  samples of labeled images (biases then corrected to the images' class frequencies), features standardised with
  the training sample's statistics; scored by per-case Dice on held-out images (:func:`probe_dice`, nnU-Net's
  convention: a class absent from both reference and prediction is left out of the mean).

The same probe on a randomly initialised network of the same plans is the reference. Fine-tuning starts from the
pre-trained representation and can keep what it knows; a pre-training whose features probe no better than random
ones (random convolutional features already separate intensity and texture) gives fine-tuning nothing to keep,
whatever the fine-tuning route. ``scripts/probe_features.py`` runs it on preprocessed nnU-Net datasets.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ssl.weights.network_parts import decoder_features, encoder_features, unwrap

PARTS = ("encoder", "decoder", "both")


def total_stride(network: nn.Module) -> List[int]:
    """Per spatial axis, the product of the encoder's strides: inputs must be a multiple of it."""
    strides = np.asarray(unwrap(network).encoder.strides, dtype=int)
    return [int(v) for v in strides.prod(axis=0)]


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> Tuple[torch.Tensor, List[slice]]:
    """Zero-pad the spatial axes of ``x`` ``(B, C, *spatial)`` at their end to a multiple of ``multiple``; returns the
    padded tensor and the slices that crop it back."""
    spatial = x.shape[2:]
    extra = [(-s) % m for s, m in zip(spatial, multiple)]
    pad = [v for e in reversed(extra) for v in (0, e)]
    return F.pad(x, pad), [slice(0, s) for s in spatial]


@torch.no_grad()
def dense_features(network: nn.Module, x: torch.Tensor, part: str = "encoder") -> torch.Tensor:
    """``(B, F, *spatial)`` features of ``x`` ``(B, C, *spatial)`` at its resolution (see the module docstring)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    xp, crop = pad_to_multiple(x, total_stride(network))
    skips = encoder_features(network, xp)
    mode = "bilinear" if xp.dim() == 4 else "trilinear"

    def full_size(f):
        return f if f.shape[2:] == xp.shape[2:] else F.interpolate(f, size=xp.shape[2:], mode=mode,
                                                                   align_corners=False)

    maps = [full_size(f) for f in skips] if part in ("encoder", "both") else []
    if part in ("decoder", "both"):
        maps.append(full_size(decoder_features(network, skips)[-1]))
    return torch.cat(maps, 1)[(slice(None), slice(None), *crop)].float()


def sample_voxels(features: torch.Tensor, labels: torch.Tensor, per_class: int, num_classes: int,
                  generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """At most ``per_class`` random voxels of every class: ``(N, F)`` features and ``(N,)`` labels."""
    f = features.transpose(0, 1).flatten(1)  # (F, voxels)
    y = labels.flatten()
    xs, ys = [], []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()
        if idx.numel() == 0:
            continue
        if idx.numel() > per_class:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:per_class]]
        xs.append(f[:, idx].T)
        ys.append(torch.full((idx.numel(),), c, dtype=torch.long))
    if not xs:
        return features.new_zeros((0, features.shape[1])), torch.zeros(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)


class LinearProbe:
    """Softmax regression on standardised features (see the module docstring)."""

    def __init__(self, num_classes: int, weight_decay: float = 1e-3, max_iter: int = 200):
        self.num_classes, self.weight_decay, self.max_iter = num_classes, weight_decay, max_iter
        self.mean = self.std = self.linear = None

    def fit(self, x: torch.Tensor, y: torch.Tensor, class_voxels: Optional[torch.Tensor] = None) -> "LinearProbe":
        """``x`` ``(N, F)``, ``y`` ``(N,)`` class indices of a sample; ``class_voxels``: how many voxels of each class
        the images it was drawn from hold. A class-balanced sample teaches the probe a uniform prior, which makes it
        paint small structures far too large; the biases are shifted by log(image prior / sample prior) so that
        the probe predicts with the images' class frequencies (the Bayes correction of a prior shift)."""
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6)
        z = ((x - self.mean) / self.std).double()
        self.linear = nn.Linear(x.shape[1], self.num_classes).double()
        opt = torch.optim.LBFGS(self.linear.parameters(), max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(self.linear(z), y) + self.weight_decay * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        if class_voxels is not None:
            sample = torch.bincount(y, minlength=self.num_classes).double()
            images = class_voxels.double()
            seen = (sample > 0) & (images > 0)
            with torch.no_grad():
                self.linear.bias[seen] += (images[seen] / images[seen].sum()).log() - \
                    (sample[seen] / sample[seen].sum()).log()
        self.linear = self.linear.float()
        return self

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class map ``(B, *spatial)`` of dense features ``(B, F, *spatial)``."""
        w = self.linear.weight / self.std  # the standardisation folded into the weights: no copy of the features
        b = self.linear.bias - w @ self.mean
        logits = torch.einsum("bf...,kf->bk...", features, w) + b.view(1, -1, *([1] * (features.dim() - 2)))
        return logits.argmax(1)


def confusion(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` counts of true positives, false positives and false negatives per class."""
    out = np.zeros((num_classes, 3), dtype=np.int64)
    for c in range(num_classes):
        p, r = pred == c, ref == c
        out[c] = [int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())]
    return out


def probe_dice(per_case: Iterable[np.ndarray]) -> Dict[str, object]:
    """Per-class mean Dice over cases (foreground classes 1 ...) and their mean, from per-case :func:`confusion`
    counts; a class empty in both reference and prediction of a case is left out of that class's mean."""
    per_class: Dict[int, List[float]] = {}
    for counts in per_case:
        for c in range(1, counts.shape[0]):
            tp, fp, fn = counts[c]
            if tp + fp + fn > 0:
                per_class.setdefault(c, []).append(2 * tp / (2 * tp + fp + fn))
    means = {c: float(np.mean(v)) for c, v in sorted(per_class.items())}
    return {"per_class": means, "mean": float(np.mean(list(means.values()))) if means else math.nan}
