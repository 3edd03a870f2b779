"""GMIM against its reference code (github mobiletomb/Gmim, read, not copied): issue 20 item 5.

* Reconstruction normalisation: the reference zeroes the visible units of prediction and input and takes the plain
  mean squared error over ALL voxels, ``sum((pred - x)^2 * mask) / numel``; ``MaskedMSELoss`` divides by the masked
  voxels only. GMIM now uses the reference's form by default (``recon_normalisation=all``), MAE keeps ``masked``.
* Siamese target crop: the reference cuts two same-size crops at independent random positions from one region
  enlarged by 32 voxels per axis over a 128 crop (shift 0.25 of the side); GMIM's target input is now such a second,
  overlapping crop of the case (intensity augmentation only); ``GMIMTrainer_sharedCrop`` keeps the shared crop.
"""
import numpy as np
import pytest
import torch

from nnunet_ssl.methods.objectives import MaskedMSELoss
from nnunet_ssl.data.two_view_loader import TwoViewDataLoader
from nnunet_ssl.methods.views import ViewSamplingConfig, extract_view, overlap_fraction

from view_placement import assert_placed
from aligned_views_trainers import make_trainer, nnunet_folders  # noqa: F401 (fixture)
from test_two_view_loader import PATCH_3D, _write_dataset, dataset  # noqa: F401 (fixture)


# --------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 2, 3, 4, 5)])
def test_all_normalisation_is_the_reference_mean_over_every_voxel(shape):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = (torch.rand((shape[0], 1, *shape[2:]), generator=g) < 0.4).float()
    value = MaskedMSELoss(normalisation="all")(pred, target, mask)
    expected = ((pred - target) ** 2 * mask).sum() / pred.numel()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    # the reference's computation: visible units zeroed in both, then torch's MSELoss (mean over all elements)
    reference = torch.nn.MSELoss()(pred * mask, target * mask)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
    # "masked" (the default of the class, MAE's form) divides by the masked elements
    masked = MaskedMSELoss(normalisation="masked")(pred, target, mask)
    assert masked.item() == pytest.approx(expected.item() * pred.numel() / mask.expand_as(pred).sum().item(),
                                          rel=1e-6)
    assert MaskedMSELoss()(pred, target, mask).item() == masked.item()
    with pytest.raises(ValueError):
        MaskedMSELoss(normalisation="voxels")


def test_gmim_defaults_to_the_reference_normalisation_and_mae_keeps_masked(nnunet_folders, monkeypatch):
    from nnunet_ssl_trainers.masked_modeling import GMIMTrainer, MAETrainer
    gmim = make_trainer(GMIMTrainer)
    assert gmim.objective.recon_loss.normalisation == "all"
    assert make_trainer(MAETrainer).objective.recon_loss.normalisation == "masked"
    # the recorded reconstruction loss of a GMIM step is sum((recon - x)^2 * mask) / numel
    seen = {}
    mask_fn = gmim.objective.masker.mask

    def recording_mask(x, generator=None):
        seen["res"] = mask_fn(x, generator)
        return seen["res"]

    gmim.objective.masker.mask = recording_mask
    gmim.network.register_forward_hook(lambda m, i, o: seen.__setitem__("recon", o))
    patch = tuple(gmim.configuration_manager.patch_size)
    g = torch.Generator().manual_seed(1)
    batch = {"data_v1": torch.randn(2, 1, *patch, generator=g), "data_v2": torch.randn(2, 1, *patch, generator=g)}
    _, curves = gmim.ssl_loss(batch, train=True)
    recon = seen["recon"][0] if isinstance(seen["recon"], (list, tuple)) else seen["recon"]
    expected = ((recon.detach() - batch["data_v1"]) ** 2 * seen["res"].mask).sum() / recon.numel()
    assert curves["recon_loss"] == pytest.approx(expected.item(), rel=1e-5)
    # our former normalisation stays available as a setting
    t = make_trainer(GMIMTrainer, settings="recon_normalisation=masked", monkeypatch=monkeypatch)
    assert t.objective.recon_loss.normalisation == "masked"
    monkeypatch.setenv("NNUNET_SSL_SETTINGS", "recon_normalisation=voxels")
    with pytest.raises(SystemExit):
        make_trainer(GMIMTrainer)


# --------------------------------------------------------------------------------------------- second crop
def _check_shifted_crops(batch, cases, patch, shift, intensity_free=True):
    boxes1, boxes2 = batch["box_v1"].double(), batch["box_v2"].double()
    side = boxes1[:, 1] - boxes1[:, 0]
    torch.testing.assert_close(boxes2[:, 1] - boxes2[:, 0], side, rtol=0, atol=1e-4)  # same size (float32 boxes)
    offset = (boxes2[:, 0] - boxes1[:, 0]) / side
    assert (offset.abs() <= shift + 1e-6).all()  # per axis at most `shift` of the side: always overlapping
    assert not batch["flip_v1"].any() and not batch["flip_v2"].any()
    for b, key in enumerate(batch["keys"]):
        assert overlap_fraction(boxes1[b].numpy(), boxes2[b].numpy()) >= (1 - shift) ** len(patch) - 1e-6
        if intensity_free:
            case = cases[key]
            if len(patch) == 2:
                case = case[:, int(batch["slice_idx"][b])]
            for v, box in (("data_v1", boxes1[b]), ("data_v2", boxes2[b])):
                torch.testing.assert_close(batch[v][b], extract_view(case, box, None, patch), rtol=0, atol=1e-4)
    return offset


@pytest.mark.parametrize("patch", [PATCH_3D, (12, 16)])
def test_loader_second_crop_is_a_shifted_overlapping_box(dataset, patch):
    ds, cases = dataset
    np.random.seed(0)
    dl = TwoViewDataLoader(ds, 4, patch, ViewSamplingConfig(), intensity_transforms=None, spatial=False,
                           crop_shift=0.25)
    offsets = torch.cat([_check_shifted_crops(next(dl), cases, patch, 0.25) for _ in range(10)])
    assert (offsets.abs().amax(dim=1) > 0).all()  # the target crop is elsewhere in every sample
    assert offsets.abs().max() > 0.15  # and the shifts use the range
    with pytest.raises(ValueError):
        TwoViewDataLoader(ds, 2, patch, spatial=False, crop_shift=1.0)
    with pytest.raises(ValueError):
        TwoViewDataLoader(ds, 2, patch, spatial=False, crop_shift=-0.1)


def test_gmim_target_view_is_a_second_overlapping_crop(nnunet_folders, tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunet_ssl_trainers.index import GMIMTrainer, GMIMTrainer_sharedCrop
    cases = _write_dataset(tmp_path, num_channels=1)
    ds = infer_dataset_class(str(tmp_path))(str(tmp_path), None)
    trainer = make_trainer(GMIMTrainer)
    assert trainer.target_crop_shift == 0.25
    assert trainer.view_sampling_config().placement == "inside"  # crops keep to the case like nnU-Net's patches
    patch = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    np.random.seed(1)
    torch.manual_seed(1)
    for train in (False, True):  # validation loader: no intensity augmentation, so views can be checked exactly
        loader = trainer.make_two_view_loader(ds, train)
        batch = next(loader)
        offsets = _check_shifted_crops(batch, cases, patch, 0.25, intensity_free=not train)
        assert (offsets.abs().amax(dim=1) > 0).all()
        assert not torch.equal(batch["data_v1"], batch["data_v2"])
        for b, key in enumerate(batch["keys"]):
            for v in ("box_v1", "box_v2"):
                assert_placed(batch[v][b].double().numpy(), cases[key].shape[1:], "inside", tol=1e-4)
    shared = make_trainer(GMIMTrainer_sharedCrop)
    assert shared.target_crop_shift == 0.0
    batch = next(shared.make_two_view_loader(ds, False))
    assert torch.equal(batch["box_v1"], batch["box_v2"]) and torch.equal(batch["data_v1"], batch["data_v2"])
