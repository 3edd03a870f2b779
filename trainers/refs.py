"""ReFs: hybrid pre-training with a supervised reference dataset and gradient matching on the shared encoder.

    NNUNET_SSL_REFERENCE_DATASET=REF nnUNetv2_train SSL_DATASET 3d_fullres all -tr ReFsTrainer

Each step draws one unlabeled batch (the SSL objective of the chosen SSL trainer) and one batch of the labeled
reference dataset (nnU-Net's Dice+CE with deep supervision, through the same encoder and decoder and a
reference segmentation head of its own that lives in ``ssl_modules`` and is dropped after pre-training).
Gradients are matched on the encoder parameters only (:mod:`nnunet_ssl.methods.gradient_matching`):

* ``fish`` (default): a clone takes an inner SGD step (``fish_inner_lr``) on the SSL loss, then on the reference
  loss; the pseudo-gradient ``(theta - theta_clone) / fish_inner_lr`` goes to nnU-Net's optimizer. To first order
  the step descends ``L_ssl + L_ref - (fish_inner_lr/2) <g_ssl, g_ref>`` (averaged over both task orders; the
  default order alternates). Decoder and heads get their own task gradients.
* ``cosine``: ``L_ssl + L_ref + cosine_lambda * (1 - cos(g_ssl, g_ref))`` with double backward.
* ``none`` (``ReFsTrainer_noMatching``, or ``NNUNET_SSL_SETTINGS=matching=none``): no matching, one optimizer step
  on ``L_ssl + L_ref`` (same loaders and heads): the baseline that shows what gradient matching adds.

Logged every epoch (training log and progress.png), in every mode: ``grad_cosine`` (cosine of the two tasks'
encoder gradients at the current weights), ``ssl_loss``, ``ref_loss``, plus the SSL objective's own curves. In fish
and none mode the cosine costs extra backward passes (fish: a third forward/backward), so it is measured on every
``cosine_every``-th step of an epoch (default 10, always the first step; ``cosine_every=1`` = every step) and the
epoch value averages those steps.

Randomness: fish runs the SSL objective up to twice per step (at the weights and at the clone); every run must draw
the same masks (MAE/GMIM) and voxel samples (IDEAL), and the next step new ones. :class:`ReplayedRandomness` does
that for every generator the draws use (:func:`device_generators`: the CPU one and, on a GPU, the CUDA one, which
is where masks of CUDA tensors are drawn): each run starts from the step's initial states; after the step the
generators stand where the last run left them, as if the objective had run once.

Mixed precision (on any device with a GradScaler, i.e. float16 autocast on CUDA in nnU-Net): the losses whose
gradients ReFs takes itself (fish's task gradients, the cosine mode's g_ssl/g_ref, the measured cosine) are scaled
by ``INNER_LOSS_SCALE`` (1024) first; the joint loss of cosine/none mode goes through the GradScaler.

Schedules per step (EMA momentum of ``ReFsTrainer_PGL``/``_IDEAL``, ``cosine_every``) read the base trainer's one
step counter (``global_step``), which this ``train_step`` advances like the base's.

The SSL objective is pluggable: ``ReFsTrainer`` uses MAE reconstruction (our default: the cheapest objective and
the one the literature found strongest for nnU-Net CNNs); ``ReFsTrainer_GMIM``, ``ReFsTrainer_PGL``,
``ReFsTrainer_IDEAL`` use the other objectives; ``..._cosine`` variants use cosine matching.

DDP: the forwards run on the unwrapped network; the fish matcher averages both tasks' gradients over the ranks
before the clone step (so every rank takes the same step), and in cosine and none mode all gradients are averaged
after the backward (the penalty and the measured cosine use each rank's local gradients).
"""
import contextlib
import warnings

import torch
from torch import distributed as dist
from torch import nn

from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.methods.gradient_matching import (FishGradientMatcher, cosine_matching_penalty, gradient_cosine,
                                                  scaled_task_gradients)
from nnunet_ssl.methods.heads import conv_for
from nnunet_ssl.weights.network_parts import decoder_features, decoder_stage_channels, spatial_ndim, unwrap
from nnunet_ssl.data.reference import resolve_reference
from nnunet_ssl_trainers.ideal import IDEALTrainer
from nnunet_ssl_trainers.masked_modeling import GMIMTrainer, MAETrainer
from nnunet_ssl_trainers.pgl import PGLTrainer
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

REFS_SETTINGS = {"matching": str, "fish_inner_lr": float, "fish_order": str, "cosine_lambda": float,
                 "ref_weight": float, "cosine_every": int}
MATCHING_MODES = ("fish", "cosine", "none")
# static scale of the losses whose gradients ReFs takes itself (fish's task gradients, the cosine mode's g_ssl and
# g_ref) while float16 mixed precision is on (the trainer has a GradScaler, on whatever device)
INNER_LOSS_SCALE = 1024.0


class _ModuleGenerator:
    """``get_state``/``set_state`` of a device's default generator reached through its torch module (e.g. MPS)."""

    def __init__(self, module):
        self.module = module

    def get_state(self):
        return self.module.get_rng_state()

    def set_state(self, state):
        self.module.set_rng_state(state)


def device_generators(device) -> list:
    """The generators random draws on ``device`` use: the CPU generator and, for an accelerator, that device's own
    default generator (``torch.rand(..., device='cuda')``, ``torch.randperm(..., device='cuda')`` draw there)."""
    device = torch.device(device)
    generators = [torch.default_generator]
    if device.type == "cuda":
        torch.cuda.init()
        index = device.index if device.index is not None else torch.cuda.current_device()
        generators.append(torch.cuda.default_generators[index])
    elif device.type != "cpu":
        module = getattr(torch, device.type, None)
        if module is not None and hasattr(module, "get_rng_state") and hasattr(module, "set_rng_state"):
            generators.append(_ModuleGenerator(module))
    return generators


class ReplayedRandomness:
    """One step's randomness for an objective that runs several times in the step (fish: at theta and at the clone).

    Made at the start of the step. Every :meth:`replay` block starts from the generators' states of that moment (so
    every run draws the same masks / voxel samples) and restores the states it found afterwards; :meth:`advance`,
    at the end of the step, leaves every generator where the LAST replay left it: as if the objective had drawn
    once, so the next step draws new numbers. ``generators``: objects with ``get_state``/``set_state`` (every
    generator the draws may use; :func:`device_generators`).
    """

    def __init__(self, generators):
        self.generators = list(generators)
        self.start = self._states()
        self.end = None

    def _states(self):
        return [g.get_state() for g in self.generators]

    def _set(self, states):
        for g, state in zip(self.generators, states):
            g.set_state(state)

    @contextlib.contextmanager
    def replay(self):
        outside = self._states()
        self._set(self.start)
        try:
            yield
        finally:
            self.end = self._states()
            self._set(outside)

    def advance(self):
        if self.end is not None:
            self._set(self.end)


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
        self.reference = None
        self.dataloader_ref = None

    def all_curve_keys(self):
        return tuple(dict.fromkeys(super().all_curve_keys() + ("ssl_loss", "ref_loss", "grad_cosine")))

    # ------------------------------------------------------------------ setup
    def build_ssl_modules(self):
        super().build_ssl_modules()
        if self.matching not in MATCHING_MODES:
            exit_on_user_error(UserInputError(f"matching='{self.matching}' is not a ReFs mode: use fish, cosine or "
                                              f"none."))
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
                                           loss_scale=self.inner_loss_scale())

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

    def inner_loss_scale(self) -> float:
        """Scale of the losses whose gradients ReFs takes itself: :data:`INNER_LOSS_SCALE` while mixed precision
        with a GradScaler is on (float16 gradients would underflow), else 1."""
        return INNER_LOSS_SCALE if self.grad_scaler is not None else 1.0

    def random_generators(self) -> list:
        """The generators the SSL objective's random draws use (replayed within a step, see the module doc)."""
        return device_generators(self.device)

    def train_step(self, batch: dict) -> dict:
        ref_batch = next(self.dataloader_ref)
        measure = self._iteration_in_epoch % self.cosine_every == 0
        self.optimizer.zero_grad(set_to_none=True)
        bundle = self._bundle()
        randomness = ReplayedRandomness(self.random_generators())
        scale = self.inner_loss_scale()
        curves = {}

        def ssl_fn(module):
            with self._using(module), randomness.replay(), self.autocast_context():
                loss, c = self.ssl_loss(batch, train=True)
            curves.setdefault("ssl", c)  # the curves of the first run
            return loss

        def ref_fn(module):
            return self.reference_loss(module, ref_batch)

        if self.matching == "fish":
            self.matcher.measure_cosine, self.matcher.loss_scale = measure, scale
            result = self.matcher.step(bundle, self._shared_names(bundle), ssl_fn, ref_fn)
            l_ssl, l_ref, cosine = result["loss_ssl"], result["loss_ref"], result["cosine"]
            if result["skipped"]:
                done = self._nonfinite_guard(False)
            else:
                done = self.step_with_current_gradients(use_scaler=False)
        else:
            loss_ssl = ssl_fn(bundle)
            loss_ref = ref_fn(bundle)
            names = set(self._shared_names(bundle))
            shared = [p for n, p in bundle.named_parameters() if n in names]
            loss = loss_ssl + loss_ref
            if self.matching == "cosine":
                penalty, cosine = cosine_matching_penalty(loss_ssl, loss_ref, shared, self.cosine_lambda,
                                                          loss_scale=scale)
                loss = loss + penalty
            else:  # none: plain joint training; the cosine is only measured (an extra backward to the encoder)
                cosine = gradient_cosine(*scaled_task_gradients(loss_ssl, loss_ref, shared, scale)) \
                    if measure else None
            l_ssl, l_ref = float(loss_ssl.detach()), float(loss_ref.detach())
            done = self.apply_update(loss)
        randomness.advance()
        self.advance_step()
        out = {"loss": float(l_ssl) + float(l_ref), "ssl_loss": float(l_ssl), "ref_loss": float(l_ref),
               "grad_cosine": float("nan") if cosine is None else float(cosine),
               "skipped_steps": 0.0 if done else 1.0}
        out.update(curves["ssl"])
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
ReFsTrainer_noMatching = _refs_variant("ReFsTrainer_noMatching", MAETrainer, "none")
ReFsTrainer_GMIM = _refs_variant("ReFsTrainer_GMIM", GMIMTrainer)
ReFsTrainer_GMIM_cosine = _refs_variant("ReFsTrainer_GMIM_cosine", GMIMTrainer, "cosine")
ReFsTrainer_PGL = _refs_variant("ReFsTrainer_PGL", PGLTrainer)
ReFsTrainer_PGL_cosine = _refs_variant("ReFsTrainer_PGL_cosine", PGLTrainer, "cosine")
ReFsTrainer_IDEAL = _refs_variant("ReFsTrainer_IDEAL", IDEALTrainer)
