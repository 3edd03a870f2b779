"""ReFs: hybrid pre-training with a supervised reference dataset and gradient matching on the shared encoder.

    NNUNET_SSL_REFERENCE_DATASET=REF nnUNetv2_train SSL_DATASET 3d_fullres all -tr ReFsTrainer

Each step draws one unlabeled batch (the SSL objective of the chosen SSL trainer) and one batch of the labeled
reference dataset (nnU-Net's Dice+CE with deep supervision, through the same encoder and decoder and a
reference segmentation head of its own that lives in ``ssl_modules`` and is dropped after pre-training).
Gradients are matched on the encoder parameters only (:mod:`nnunet_ssl.gradient_matching`):

* ``fish`` (default): a clone takes an inner SGD step (``fish_inner_lr``) on the SSL loss, then on the reference
  loss; the pseudo-gradient ``(theta - theta_clone) / fish_inner_lr`` goes to nnU-Net's optimizer. To first order
  the step descends ``L_ssl + L_ref - (fish_inner_lr/2) <g_ssl, g_ref>`` (averaged over both task orders; the
  default order alternates). Decoder and heads get their own task gradients.
* ``cosine``: ``L_ssl + L_ref + cosine_lambda * (1 - cos(g_ssl, g_ref))`` with double backward.

Logged every epoch (training log and progress.png), in both modes: ``grad_cosine`` (cosine of the two tasks'
encoder gradients at the current weights), ``ssl_loss``, ``ref_loss``, plus the SSL objective's own curves. In fish
mode the cosine needs a third forward/backward, so it is measured on every ``cosine_every``-th step of an epoch
(default 10, always the first step; ``cosine_every=1`` = every step) and the epoch value averages those steps.

The SSL objective is pluggable: ``ReFsTrainer`` uses MAE reconstruction (our default: the cheapest objective and
the one the literature found strongest for nnU-Net CNNs); ``ReFsTrainer_GMIM``, ``ReFsTrainer_PGL``,
``ReFsTrainer_IDEAL`` use the other objectives; ``..._cosine`` variants use cosine matching.

DDP: the forwards run on the unwrapped network; the fish matcher averages both tasks' gradients over the ranks
before the clone step (so every rank takes the same step), and in cosine mode all gradients are averaged after the
backward (the penalty itself uses each rank's local gradients).
"""
import contextlib
import warnings

import torch
from torch import distributed as dist
from torch import nn

from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.gradient_matching import FishGradientMatcher, cosine_matching_penalty
from nnunet_ssl.heads import conv_for
from nnunet_ssl.network_parts import decoder_features, decoder_stage_channels, spatial_ndim, unwrap
from nnunet_ssl.reference import resolve_reference
from nnunet_ssl_trainers.ideal import IDEALTrainer
from nnunet_ssl_trainers.masked_modeling import GMIMTrainer, MAETrainer
from nnunet_ssl_trainers.pgl import PGLTrainer
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

REFS_SETTINGS = {"matching": str, "fish_inner_lr": float, "fish_order": str, "cosine_lambda": float,
                 "ref_weight": float, "cosine_every": int}


@contextlib.contextmanager
def same_randomness(cpu_state, cuda_state=None):
    """Run a block with a given torch RNG state (so repeated SSL losses draw the same masks), then restore."""
    saved_cpu = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if cuda_state is not None else None
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    try:
        yield
    finally:
        torch.set_rng_state(saved_cpu)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)


class ReferenceHead(nn.Module):
    """1x1 convolutions on every decoder stage: deep-supervision logits for the reference labels."""

    def __init__(self, channels_coarse_first, num_classes: int, ndim: int):
        super().__init__()
        conv = conv_for(ndim)
        self.layers = nn.ModuleList([conv(c, num_classes, 1) for c in channels_coarse_first])

    def forward(self, decoder_outputs_coarse_first):
        return [layer(f) for layer, f in zip(self.layers, decoder_outputs_coarse_first)][::-1]


class ReFsMixin:
    """Adds the reference task and gradient matching to an nnunet_ssl SSL trainer (see the module doc)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.matching = "fish"
        self.fish_inner_lr = 0.01
        self.fish_order = "alternate"
        self.cosine_lambda = 0.1
        self.ref_weight = 1.0
        # fish: measure the logged gradient cosine on every k-th step of an epoch (always the first). Measuring
        # costs a third forward/backward; k=1 measures every step (scripts/benchmark_cost.py shows the price)
        self.cosine_every = 10
        self._epoch_step = 0
        self.reference = None
        self.dataloader_ref = None

    def all_curve_keys(self):
        return tuple(dict.fromkeys(super().all_curve_keys() + ("ssl_loss", "ref_loss", "grad_cosine")))

    # ------------------------------------------------------------------ setup
    def build_ssl_modules(self):
        super().build_ssl_modules()
        if self.matching not in ("fish", "cosine"):
            exit_on_user_error(UserInputError(f"matching='{self.matching}' is not a ReFs mode: use fish or cosine."))
        if self.cosine_every < 1:
            exit_on_user_error(UserInputError(f"cosine_every={self.cosine_every}: it must be >= 1 (1 = measure the "
                                              f"gradient cosine at every step, k = every k-th step)."))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.reference = resolve_reference(self.plans_manager.dataset_name, self.plans_manager.plans,
                                                   self.configuration_name, self.num_input_channels,
                                                   self.dataset_json)
            for w in caught:
                self.print_to_log_file(f"WARNING: {w.message}")
        except UserInputError as e:
            exit_on_user_error(e)
        self.print_to_log_file(f"ReFs reference dataset: {self.reference.name} ({self.reference.folder}); "
                               f"gradient matching: {self.matching}")
        self.ref_label_manager = self.plans_manager.get_label_manager(self.reference.dataset_json)
        net = unwrap(self.network)
        self.ssl_modules["ref_head"] = ReferenceHead(decoder_stage_channels(net),
                                                     self.ref_label_manager.num_segmentation_heads, spatial_ndim(net))
        with self._as_reference_task():
            self.ref_loss_fn = nnUNetTrainer._build_loss(self)
        self.matcher = FishGradientMatcher(inner_lr=self.fish_inner_lr, order=self.fish_order, apply="grad",
                                           loss_scale=1024.0 if self.device.type == "cuda" else 1.0)

    @contextlib.contextmanager
    def _as_reference_task(self):
        """Let nnU-Net's own loss/transform builders work for the reference labels (deep supervision on)."""
        saved = (self.label_manager, self.enable_deep_supervision)
        self.label_manager, self.enable_deep_supervision = self.ref_label_manager, True
        try:
            yield
        finally:
            self.label_manager, self.enable_deep_supervision = saved

    def get_dataloaders(self):
        dl_tr, dl_val = super().get_dataloaders()
        self.dataloader_ref = self._reference_loader()
        return dl_tr, dl_val

    def _reference_loader(self):
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        folder = self.reference.folder
        dataset_class = infer_dataset_class(folder)
        dataset = dataset_class(folder, dataset_class.get_identifiers(folder))
        patch = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.ref_label_manager
        with self._as_reference_task():
            transforms = self.get_training_transforms(
                patch, rotation, self._get_deep_supervision_scales(), mirror_axes, dummy_2d,
                use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
                foreground_labels=lm.foreground_labels,
                regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
        loader = nnUNetDataLoader(dataset, self.batch_size, initial_patch, patch, lm,
                                  oversample_foreground_percent=0.33, transforms=transforms)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, max(1, n_proc // 2), max(3, n_proc // 2), None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def on_train_end(self):
        super().on_train_end()
        finish = getattr(self.dataloader_ref, "_finish", None)
        if finish is not None:
            finish()

    # ------------------------------------------------------------------ the two tasks
    @contextlib.contextmanager
    def _using(self, bundle: nn.ModuleDict):
        """Make the SSL objective run on ``bundle`` (the real modules or the fish clone)."""
        saved = (self.network, self.ssl_modules)
        self.network, self.ssl_modules = bundle["net"], bundle["ssl"]
        try:
            yield
        finally:
            self.network, self.ssl_modules = saved

    def reference_loss(self, bundle: nn.ModuleDict, batch: dict) -> torch.Tensor:
        net = bundle["net"]
        data = batch["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in batch["target"]]
        with self.autocast_context():
            logits = bundle["ssl"]["ref_head"](decoder_features(net, net.encoder(data)))
            return self.ref_weight * self.ref_loss_fn(logits, target)

    def _bundle(self) -> nn.ModuleDict:
        """Network + heads as one module (made once: the fish matcher caches its clone per module)."""
        if getattr(self, "_refs_bundle", None) is None:
            self._refs_bundle = nn.ModuleDict({"net": unwrap(self.network), "ssl": self.ssl_modules})
        return self._refs_bundle

    def _shared_names(self, bundle):
        return [n for n, p in bundle.named_parameters() if n.startswith("net.encoder.") and p.requires_grad]

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._epoch_step = 0

    def train_step(self, batch: dict) -> dict:
        ref_batch = next(self.dataloader_ref)
        self.matcher.measure_cosine = self._epoch_step % self.cosine_every == 0
        self._epoch_step += 1
        self.optimizer.zero_grad(set_to_none=True)
        bundle = self._bundle()
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None)
        curves = {}

        def ssl_fn(module):
            with self._using(module), same_randomness(*rng), self.autocast_context():
                loss, c = self.ssl_loss(batch, train=True)
                if "first" not in curves:
                    curves["first"], curves["rng_after"] = c, torch.get_rng_state()
            return loss

        def ref_fn(module):
            return self.reference_loss(module, ref_batch)

        if self.matching == "fish":
            result = self.matcher.step(bundle, self._shared_names(bundle), ssl_fn, ref_fn)
            l_ssl, l_ref, cosine = result["loss_ssl"], result["loss_ref"], result["cosine"]
            if result["skipped"]:
                done = self._nonfinite_guard(False)
            else:
                done = self.step_with_current_gradients(use_scaler=False)
        else:
            loss_ssl = ssl_fn(bundle)
            loss_ref = ref_fn(bundle)
            shared = [p for n, p in bundle.named_parameters() if n in set(self._shared_names(bundle))]
            penalty, cosine = cosine_matching_penalty(loss_ssl, loss_ref, shared, self.cosine_lambda)
            l_ssl, l_ref = float(loss_ssl.detach()), float(loss_ref.detach())
            done = self.apply_update(loss_ssl + loss_ref + penalty)
        torch.set_rng_state(curves["rng_after"])  # as if the SSL loss had drawn its masks once
        out = {"loss": float(l_ssl) + float(l_ref), "ssl_loss": float(l_ssl), "ref_loss": float(l_ref),
               "grad_cosine": float("nan") if cosine is None else float(cosine),
               "skipped_steps": 0.0 if done else 1.0}
        out.update(curves["first"])
        return out

    def _sync_head_gradients(self):
        """The forwards bypass the DDP wrapper, so average every gradient here (cosine mode)."""
        if not self.is_ddp:
            return
        world = dist.get_world_size()
        for p in self.trainable_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world


def _refs_variant(name: str, ssl_class, matching: str = "fish"):
    """ReFs on top of ``ssl_class`` (generated like nnU-Net's ``nnUNetTrainer_Xepochs`` variants)."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super(cls, self).__init__(plans, configuration, fold, dataset_json, device)
        self.matching = matching

    cls = type(name, (ReFsMixin, ssl_class), {
        "__init__": __init__, "__module__": __name__,
        "tunable_settings": dict(ssl_class.tunable_settings, **REFS_SETTINGS),
        "__doc__": f"ReFs with the {ssl_class.__name__} objective and '{matching}' gradient matching."})
    return cls


ReFsTrainer = _refs_variant("ReFsTrainer", MAETrainer)
ReFsTrainer_cosine = _refs_variant("ReFsTrainer_cosine", MAETrainer, "cosine")
ReFsTrainer_GMIM = _refs_variant("ReFsTrainer_GMIM", GMIMTrainer)
ReFsTrainer_GMIM_cosine = _refs_variant("ReFsTrainer_GMIM_cosine", GMIMTrainer, "cosine")
ReFsTrainer_PGL = _refs_variant("ReFsTrainer_PGL", PGLTrainer)
ReFsTrainer_PGL_cosine = _refs_variant("ReFsTrainer_PGL_cosine", PGLTrainer, "cosine")
ReFsTrainer_IDEAL = _refs_variant("ReFsTrainer_IDEAL", IDEALTrainer)
