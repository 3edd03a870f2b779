"""Mixin: nnU-Net data loading replaced by two augmented views per case with their geometry.

Used by PGL, IDEAL, GMIM (no flips; a second overlapping crop, or the same crop; intensity only) and ReFs. The
loader (:mod:`nnunet_ssl.data.two_view_loader`) reads nnU-Net's preprocessed cases through nnU-Net's dataset class and
split, applies nnU-Net's intensity augmentations per view and runs inside nnU-Net's multi-process augmenter
(``nnUNet_n_proc_DA`` workers).
"""
from nnunet_ssl.data.two_view_loader import TwoViewDataLoader, intensity_only_transforms, make_two_view_augmenter
from nnunet_ssl.methods.views import ViewSamplingConfig
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA


class TwoViewDataMixin:
    two_view_spatial = True  # False: no flips; view 2 = view 1's crop shifted by target_crop_shift (0: shared)
    target_crop_shift = 0.0  # two_view_spatial False only: TwoViewDataLoader's crop_shift (fraction of the side)

    def view_sampling_config(self) -> ViewSamplingConfig:
        return ViewSamplingConfig()

    def make_two_view_loader(self, dataset, train: bool) -> TwoViewDataLoader:
        patch = self.configuration_manager.patch_size
        transforms = intensity_only_transforms() if train else None
        return TwoViewDataLoader(dataset, self.batch_size, patch, self.view_sampling_config(),
                                 intensity_transforms=transforms, spatial=self.two_view_spatial,
                                 crop_shift=0.0 if self.two_view_spatial else self.target_crop_shift)

    def get_dataloaders(self):
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        # nnU-Net's training pipeline sets inference_allowed_mirroring_axes here; keep that side effect
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        n_proc = get_allowed_n_proc_DA()
        pin = self.device.type == "cuda"
        dl_tr = make_two_view_augmenter(self.make_two_view_loader(dataset_tr, True), n_proc, pin)
        dl_val = make_two_view_augmenter(self.make_two_view_loader(dataset_val, False), max(1, n_proc // 2)
                                         if n_proc > 0 else 0, pin)
        _ = next(dl_tr)
        _ = next(dl_val)
        return dl_tr, dl_val
