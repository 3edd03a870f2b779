"""ReFs: hybrid pre-training with a supervised reference dataset and gradient matching on the shared encoder.

    NNUNET_SSL_REFERENCE_DATASET=REF nnUNetv2_train SSL_DATASET 3d_fullres all -tr ReFsTrainer

A ReFs trainer holds two tasks and composes them: an SSL objective (:mod:`nnunet_ssl.methods`, the same objects the
SSL trainers use) on the unlabeled batch, and the supervised reference task
(:class:`~nnunet_ssl_trainers.reference_task.ReferenceTask`: a labeled reference dataset, its loader, a
segmentation head of its own in ``ssl_modules["ref_head"]``, dropped after pre-training, and nnU-Net's Dice+CE with
deep supervision through the same encoder and decoder).
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
step counter (``global_step``), which this ``train_step`` advances like the base's; every optimizer step goes
through the base trainer's one guarded step.

The SSL objective is pluggable (``objective_class``): ``ReFsTrainer`` uses MAE reconstruction (our default: the
cheapest objective and the one the literature found strongest for nnU-Net CNNs); ``ReFsTrainer_GMIM``,
``ReFsTrainer_PGL``, ``ReFsTrainer_IDEAL`` use the other objectives; ``..._cosine`` variants use cosine matching,
``ReFsTrainer_noMatching`` none. Each variant is a short subclass of ``ReFsTrainer`` naming them.

DDP: the forwards run on the unwrapped network; the fish matcher averages both tasks' gradients over the ranks
before the clone step (so every rank takes the same step), and in cosine and none mode all gradients are averaged
after the backward (the penalty and the measured cosine use each rank's local gradients).
"""

import torch
from torch import distributed as dist
from torch import nn

from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.methods.gradient_matching import (FISH_ORDERS, FishGradientMatcher, cosine_matching_penalty,
                                                  gradient_cosine, scaled_task_gradients)
from nnunet_ssl.methods.ideal import IDEALObjective
from nnunet_ssl.methods.masked_modeling import GMIMObjective, MAEObjective
from nnunet_ssl.methods.pgl import PGLObjective
from nnunet_ssl.methods.randomness import ReplayedRandomness, device_generators  # noqa: F401
from nnunet_ssl.settings import Setting
from nnunet_ssl.weights.network_parts import unwrap
from nnunet_ssl_trainers.reference_task import ReferenceHead, ReferenceTask  # noqa: F401
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer

MATCHING_MODES = ("fish", "cosine", "none")
REFS_SETTINGS = {"matching": Setting(str, choices=MATCHING_MODES),
                 "fish_inner_lr": Setting(float, min=0, min_exclusive=True),
                 "fish_order": Setting(str, choices=FISH_ORDERS), "cosine_lambda": Setting(float, min=0),
                 "ref_weight": Setting(float, min=0), "cosine_every": Setting(int, min=1)}
# static scale of the losses whose gradients ReFs takes itself (fish's task gradients, the cosine mode's g_ssl and
# g_ref) while float16 mixed precision is on (the trainer has a GradScaler, on whatever device)
INNER_LOSS_SCALE = 1024.0


class ReFsTrainer(nnUNetSSLTrainer):
    """ReFs with the MAE objective and 'fish' gradient matching (see the module doc)."""

    objective_class = MAEObjective
    trainer_settings = dict(nnUNetSSLTrainer.trainer_settings, **REFS_SETTINGS)
    matching = "fish"
    fish_inner_lr = 0.01
    fish_order = "alternate"
    cosine_lambda = 0.1
    ref_weight = 1.0
    # fish: measure the logged gradient cosine on every k-th step of an epoch (always the first). Measuring costs a
    # third forward/backward; k=1 measures every step (scripts/benchmark_cost.py shows the price)
    cosine_every = 10

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.reference_task = None
        self.dataloader_ref = None
        self._refs_bundle = None

    def all_curve_keys(self):
        return tuple(dict.fromkeys(super().all_curve_keys() + ("ssl_loss", "ref_loss", "grad_cosine")))

    # ------------------------------------------------------------------ setup
    def build_ssl_modules(self):
        super().build_ssl_modules()  # the SSL objective and its modules
        if self.matching not in MATCHING_MODES:
            exit_on_user_error(UserInputError(f"matching='{self.matching}' is not a ReFs mode: use fish, cosine or "
                                              f"none."))
        if self.cosine_every < 1:
            exit_on_user_error(UserInputError(f"cosine_every={self.cosine_every}: it must be >= 1 (1 = measure the "
                                              f"gradient cosine at every step, k = every k-th step)."))
        try:
            self.reference_task = ReferenceTask(self, self.ref_weight)
        except UserInputError as e:
            exit_on_user_error(e)
        reference = self.reference_task.dataset
        self.print_to_log_file(f"ReFs reference dataset: {reference.name} ({reference.folder}); "
                               f"gradient matching: {self.matching}")
        self.ssl_modules["ref_head"] = self.reference_task.head
        self.matcher = FishGradientMatcher(inner_lr=self.fish_inner_lr, order=self.fish_order, apply="grad",
                                           loss_scale=self.inner_loss_scale())

    def get_dataloaders(self):
        dl_tr, dl_val = super().get_dataloaders()
        self.dataloader_ref = self.reference_task.make_loader(self)
        return dl_tr, dl_val

    # ------------------------------------------------------------------ the two tasks
    def bundle(self) -> nn.ModuleDict:
        """Network + heads as one module (made once: the fish matcher caches its clone per module)."""
        if self._refs_bundle is None:
            self._refs_bundle = nn.ModuleDict({"net": unwrap(self.network), "ssl": self.ssl_modules})
        return self._refs_bundle

    def ssl_task_loss(self, bundle: nn.ModuleDict, batch: dict):
        """The SSL objective on ``bundle`` (the real modules or the fish clone)."""
        return self.objective.loss(batch, bundle["net"], True, modules=bundle["ssl"])

    def reference_loss(self, bundle: nn.ModuleDict, batch: dict) -> torch.Tensor:
        with self.autocast_context():
            return self.reference_task.loss(bundle["net"], bundle["ssl"]["ref_head"], batch, self.device)

    @staticmethod
    def _shared_names(bundle):
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
        bundle = self.bundle()
        randomness = ReplayedRandomness(self.random_generators())
        scale = self.inner_loss_scale()
        curves = {}

        def ssl_fn(module):
            with randomness.replay(), self.autocast_context():
                loss, c = self.ssl_task_loss(module, batch)
            curves.setdefault("ssl", c)  # the curves of the first run
            return loss

        def ref_fn(module):
            return self.reference_loss(module, ref_batch)

        if self.matching == "fish":
            self.matcher.measure_cosine, self.matcher.loss_scale = measure, scale
            result = self.matcher.step(bundle, self._shared_names(bundle), ssl_fn, ref_fn)
            l_ssl, l_ref, cosine = result["loss_ssl"], result["loss_ref"], result["cosine"]
            if result["skipped"]:
                done = self.step_guard.guard(False)
            else:
                done = self.step_guard.step_with_current_gradients(use_scaler=False)
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
            done = self.optimizer_step(loss)
        randomness.advance()
        self.advance_step()
        out = {"loss": float(l_ssl) + float(l_ref), "ssl_loss": float(l_ssl), "ref_loss": float(l_ref),
               "grad_cosine": float("nan") if cosine is None else float(cosine),
               "skipped_steps": 0.0 if done else 1.0}
        out.update(curves["ssl"])
        return out

    def _sync_head_gradients(self):
        """The forwards bypass the DDP wrapper, so average every gradient here (cosine and none mode)."""
        if not self.is_ddp:
            return
        world = dist.get_world_size()
        for p in self.trainable_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world


class ReFsTrainer_cosine(ReFsTrainer):
    """ReFs with the MAE objective and 'cosine' gradient matching."""
    matching = "cosine"


class ReFsTrainer_noMatching(ReFsTrainer):
    """ReFs with the MAE objective and no gradient matching (joint training on L_ssl + L_ref)."""
    matching = "none"


class ReFsTrainer_GMIM(ReFsTrainer):
    """ReFs with the GMIM objective and 'fish' gradient matching."""
    objective_class = GMIMObjective


class ReFsTrainer_GMIM_cosine(ReFsTrainer):
    """ReFs with the GMIM objective and 'cosine' gradient matching."""
    objective_class = GMIMObjective
    matching = "cosine"


class ReFsTrainer_PGL(ReFsTrainer):
    """ReFs with the PGL objective and 'fish' gradient matching."""
    objective_class = PGLObjective


class ReFsTrainer_PGL_cosine(ReFsTrainer):
    """ReFs with the PGL objective and 'cosine' gradient matching."""
    objective_class = PGLObjective
    matching = "cosine"


class ReFsTrainer_IDEAL(ReFsTrainer):
    """ReFs with the IDEAL objective and 'fish' gradient matching."""
    objective_class = IDEALObjective
