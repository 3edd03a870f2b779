"""The benchmark's arms: how each one trains, from what start.

Every arm trains with the same plans (the dataset's default ``nnUNetPlans``), configuration and schedule (epochs,
iterations per epoch, batch size); they differ only in their start and in the fine-tuning route we recommend for
that start:

* ``scratch``: stock nnU-Net (``nnUNetTrainer_schedule`` = ``nnUNetTrainer`` with only the schedule shortened);
* MAE, GMIM and ReFs (on MAE) checkpoints carry a decoder trained to reconstruct the input, which fine-tuning does
  not transfer: the random decoder warms up alone first (``SSLFinetuneTrainer_decoderWarmup``), which removed
  their losses against scratch in earlier CPU runs;
* PGL transfers encoder and decoder, but its loss trains only the encoder and the decoder stages down to its
  finest loss level (1/4 of the input resolution): the later decoder stages and the output layer start untrained,
  so the decoder warms up alone on the frozen encoder too, and the whole net then trains with the encoder at 0.1x
  the learning rate (linear probe, then fine-tune): a frozen-feature probe and the validation pseudo Dice chose it,
  and PGL's route check kept it (docs/benchmarks.md);
* IDEAL took that route until its route check (2026-12-07) chose MAE's on the validation cases: the encoder only,
  decoder-only warm-up, then the whole net at nnU-Net's rate (``ideal-lpft`` keeps the old route's runs);
* ``ideal-semi``: IDEAL's own two-decoder semi-supervised fine-tuning on the labeled subset plus the unlabeled pool,
  on IDEAL's route (both decoders start random and warm up first).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Dict, Optional


@dataclass(frozen=True)
class Arm:
    name: str
    trainer: str  # fine-tuning trainer
    pretrain: Optional[str]  # pre-training method key (PRETRAIN_TRAINERS), None = from scratch
    uses_unlabeled: bool = False  # reads the unlabeled pool during fine-tuning
    settings: str = ""  # extra NNUNET_SSL_SETTINGS of the fine-tuning
    headline: bool = True  # False: uses extra labels of the same task or is a diagnostic
    route: str = ""  # the fine-tuning route, as the report states it
    epochs_factor: int = 1  # the schedule's epochs times this (diagnostic: is the schedule long enough?)
    # length check: the arm this one repeats with the fine-tuning (epochs_factor) or the pre-training
    # (PRETRAIN_EPOCHS_FACTOR) longer; the report pairs them (is that length long enough?)
    length_check: str = ""
    # route check: the arm whose route this one challenges with the same checkpoint on another route; the report
    # decides on validation pseudo Dice (nnunet_ssl.benchmark.route_checks)
    route_check: str = ""
    # the arm whose fine-tuning route this one follows (ideal-semi: ideal's warm-up and encoder rate): a route check
    # that replaces that arm's route holds this one's runs too (nnunet_ssl.benchmark.check_gate)
    shares_route: str = ""


NNUNET_EPOCHS = 1000  # nnU-Net's epochs where a schedule names none (the full profile)


def _times_epochs(values: Dict[str, object], factor: int) -> Dict[str, object]:
    out = dict(values)
    if factor != 1:
        out["num_epochs"] = int(round(int(values.get("num_epochs", NNUNET_EPOCHS)) * factor))
    return out


def arm_schedule(arm: Arm, values: Dict[str, object]) -> Dict[str, object]:
    """The schedule's numbers (``num_epochs``, ...; ints or their text) for ``arm``: its ``epochs_factor`` times
    the epochs, everything else unchanged (same order)."""
    return _times_epochs(values, arm.epochs_factor)


PRETRAIN_TRAINERS: Dict[str, str] = {"mae": "MAETrainer", "gmim": "GMIMTrainer", "pgl": "PGLTrainer",
                                     "ideal": "IDEALTrainer", "refs": "ReFsTrainer",
                                     "ideal-inside": "IDEALTrainer_insideViews",
                                     "ideal-shallow": "IDEALTrainer_shallowLevels",
                                     # ReFs diagnostics: without gradient matching; with PGL as its SSL objective
                                     "refs-nomatch": "ReFsTrainer_noMatching", "refs-pgl": "ReFsTrainer_PGL"}
# the length checks' pre-trainings: "<method>-<f>x" runs <method>'s trainer for f times the profile's epochs. PGL's
# ACDC pre-training at 1.5x (150 epochs, about 2.2 h at 52 s an epoch) is the longest that fits a 3-hour session, where
# 2x (2.9 h) does not: the length a "too short" could adopt there
LONGER_PRETRAINING: Dict[str, str] = {"ideal-2x": "ideal", "pgl-2x": "pgl", "pgl-1.5x": "pgl"}
PRETRAIN_TRAINERS.update({long: PRETRAIN_TRAINERS[base] for long, base in LONGER_PRETRAINING.items()})
# pre-trainings longer than the profile's (its epochs times this)
PRETRAIN_EPOCHS_FACTOR: Dict[str, float] = {"ideal-2x": 2, "pgl-2x": 2, "pgl-1.5x": 1.5}


def needs_reference(method: str) -> bool:
    """Whether ``method``'s pre-training (a key of :data:`PRETRAIN_TRAINERS`) reads a ReFs reference dataset."""
    return PRETRAIN_TRAINERS[method].startswith("ReFsTrainer")


def pretrain_schedule(method: str, values: Dict[str, object]) -> Dict[str, object]:
    """The pre-training schedule's numbers for ``method``: the profile's ``values`` with the epochs times its
    :data:`PRETRAIN_EPOCHS_FACTOR`."""
    return _times_epochs(values, PRETRAIN_EPOCHS_FACTOR.get(method, 1))

_WARM = "decoder-only warm-up, then whole net"
_ENC = "encoder_lr_factor=0.1"
_LPFT = "decoder-only warm-up, then whole net, encoder at 0.1x"
_PGL = Arm("pgl", "SSLFinetuneTrainer_decoderWarmup", "pgl", settings=_ENC, route="encoder + decoder; " + _LPFT)
_ENCODER_ONLY = "load_decoder=false"
# arms that transfer IDEAL's decoder say so since IDEAL's checkpoints stopped recommending it (2026-12-07); their
# runs before that loaded it by the checkpoint's recommendation, and their run.json says so
_WITH_DECODER = "load_decoder=true"
# IDEAL's route since its route check (2026-12-07): MAE's (the encoder only, then the whole net at nnU-Net's rate)
_IDEAL = Arm("ideal", "SSLFinetuneTrainer_decoderWarmup", "ideal", settings=_ENCODER_ONLY, route="encoder; " + _WARM)


def _longer_pretraining(base: Arm, factor: str = "2x") -> Arm:
    """Diagnostic of the pre-training length: ``base``'s fine-tuning from its method's pre-training ``factor`` as
    long (``<method>-<factor>``, e.g. ``pgl-1.5x``); paired against ``base`` on the validation cases, it says whether
    the longer pre-training changes the fine-tuning (:mod:`length_checks`)."""
    return replace(base, name=f"{base.name}-pre{factor}", pretrain=f"{base.pretrain}-{factor}", headline=False,
                   length_check=base.name, route=base.route + f" (pre-trained {factor} as long)")


ARMS: Dict[str, Arm] = {a.name: a for a in (
    Arm("scratch", "nnUNetTrainer_schedule", None, route="stock nnUNetTrainer from scratch"),
    Arm("mae", "SSLFinetuneTrainer_decoderWarmup", "mae", route="encoder; " + _WARM),
    Arm("gmim", "SSLFinetuneTrainer_decoderWarmup", "gmim", route="encoder; " + _WARM),
    _PGL,
    _IDEAL,
    Arm("ideal-semi", "IDEALSemiSupervisedTrainer_decoderWarmup", "ideal", uses_unlabeled=True,
        settings=_ENCODER_ONLY, shares_route="ideal",
        route="encoder; two decoders, cross pseudo supervision on the unlabeled pool; " + _WARM),
    Arm("refs", "SSLFinetuneTrainer_decoderWarmup", "refs",
        route="encoder; " + _WARM + " (reference = the other dataset's labels)"),
    # diagnostic of the schedule: stock nnU-Net with twice the epochs (same label subsets, iterations per epoch and
    # batch); paired against scratch, it says whether scratch's end point still moves with more training
    Arm("scratch-2x", "nnUNetTrainer_schedule", None, headline=False, epochs_factor=2, length_check="scratch",
        route="stock nnUNetTrainer from scratch, twice the epochs"),
    # diagnostic of one run's noise: stock nnU-Net again on the same label subset and schedule (nnU-Net seeds nothing,
    # so only the random start, the batches and the augmentation differ); paired against scratch, it says how far two
    # runs of one setting land apart, the floor of any one-seed difference (GMIM's ACDC seed 2: -5.1 points)
    Arm("scratch-rep", "nnUNetTrainer_schedule", None, headline=False,
        route="stock nnUNetTrainer from scratch, run again (another random start)"),
    # the pre-training length checks: IDEAL's and PGL's EMA validation losses moved 6.1 % and 13 % of their range
    # over the last fifth on hippocampus (the report's rule: 5 %)
    _longer_pretraining(_IDEAL),
    _longer_pretraining(_PGL),
    _longer_pretraining(_PGL, "1.5x"),
    # diagnostics (not in the headline, not run by default): the same checkpoints with the first encoder stages
    # left at their random initialisation (pre-training collapses early-stage features; docs/benchmarks.md)
    Arm("ideal-reinit2", "SSLFinetuneTrainer", "ideal", settings="reinit_encoder_stages=2," + _WITH_DECODER,
        headline=False,
        route="encoder stages >= 2 + decoder; whole-net warm-up"),
    Arm("mae-reinit1", "SSLFinetuneTrainer_decoderWarmup", "mae", settings="reinit_encoder_stages=1",
        headline=False, route="encoder stages >= 1; " + _WARM),
    # diagnostics of the IDEAL route: whole-net fine-tuning at nnU-Net's rate (the route until 2026-12-03: level
    # with scratch on ACDC, and it lowered the encoder's probe on hippocampus), and only the encoder rate at 0.1x
    Arm("ideal-wholenet", "SSLFinetuneTrainer", "ideal", settings=_WITH_DECODER, headline=False,
        route="encoder + decoder; whole-net warm-up"),
    Arm("ideal-enclr", "SSLFinetuneTrainer", "ideal", settings=_ENC + "," + _WITH_DECODER, headline=False,
        route="encoder + decoder; whole-net warm-up, encoder at 0.1x"),
    # diagnostic of the MAE route, chosen like IDEAL's: on validation pseudo Dice of seed 0 against ``mae``: the
    # decoder-first warm-up as ``mae``, then the encoder at 0.1x (IDEAL's route; on hippocampus it beat whole-net
    # fine-tuning of the same checkpoint by 6 pseudo-Dice points)
    Arm("mae-lpft", "SSLFinetuneTrainer_decoderWarmup", "mae", settings=_ENC, headline=False, route_check="mae",
        route="encoder; " + _LPFT),
    # diagnostics of PGL's and IDEAL's route, the counterpart of mae-lpft (2026-12-07): on ACDC both were level with
    # stock (PGL +0.4 on seed 0, IDEAL -0.2 on seed 1) where MAE and GMIM gained on mae's route, although a frozen
    # probe ranks PGL's and IDEAL's ACDC encoders above MAE's; MAE on PGL's route still gained (mae-lpft), so what
    # is left of the route is the transferred decoder and the encoder's 0.1x: these arms take mae's route (encoder
    # only, decoder-first warm-up, then the whole net at nnU-Net's rate); seed 0 of hippocampus and ACDC's PGL seed
    # 0 / IDEAL seed 1 decide the route, on validation pseudo Dice as mae-lpft did (docs/benchmarks.md)
    Arm("pgl-maeroute", "SSLFinetuneTrainer_decoderWarmup", "pgl", settings="load_decoder=false", headline=False,
        route_check="pgl", route="encoder; " + _WARM + " (mae's route)"),
    # IDEAL's route check was decided for mae's route (2026-12-07): its runs became ``ideal``'s, and ``ideal-lpft``
    # keeps the runs of IDEAL's route until then (encoder + decoder, the encoder at 0.1x after the warm-up)
    Arm("ideal-lpft", "SSLFinetuneTrainer_decoderWarmup", "ideal", settings=_ENC + "," + _WITH_DECODER, headline=False,
        route_check="ideal",
        route="encoder + decoder; " + _LPFT + " (IDEAL's route until 2026-12-07)"),
    # diagnostic of IDEAL's views: pre-trained with views kept to the case like PGL's and GMIM's (the placement
    # since 2026-12-03; ``ideal`` centres them anywhere in the case, up to half a view of padding), same route
    Arm("ideal-inside", "SSLFinetuneTrainer_decoderWarmup", "ideal-inside", settings=_ENCODER_ONLY, headline=False,
        route="encoder; " + _WARM + " (views inside the case in pre-training)"),
    # diagnostic of IDEAL's loss levels: pre-trained with bottleneck,decoder1 on any plans (IDEAL's default until
    # 2026-12-05; on ACDC's 2d network 1/32 and 1/16 of the patch, which collapsed the early encoder stages), same
    # route; on hippocampus' 3d network levels=auto resolves to the same levels
    Arm("ideal-shallow", "SSLFinetuneTrainer_decoderWarmup", "ideal-shallow", settings=_ENC + "," + _WITH_DECODER,
        headline=False,
        route="encoder + decoder; " + _LPFT + " (pre-trained with levels bottleneck,decoder1)"),
    # diagnostics of ReFs (on hippocampus its 3 seeds were level with stock and with MAE, its SSL objective, seed by
    # seed, and the encoder-gradient cosine of the two tasks stayed near 0): refs-nomatch pre-trains on the same two
    # tasks without gradient matching (does matching add anything?); refs-pgl puts PGL, the better SSL objective on
    # hippocampus, inside ReFs (does the reference task add anything to a stronger objective? paired against pgl);
    # refs-pgl's checkpoint carries PGL's encoder + decoder, so it takes PGL's route
    Arm("refs-nomatch", "SSLFinetuneTrainer_decoderWarmup", "refs-nomatch", headline=False,
        route="encoder; " + _WARM + " (pre-trained without gradient matching)"),
    Arm("refs-pgl", "SSLFinetuneTrainer_decoderWarmup", "refs-pgl", settings=_ENC, headline=False,
        route="encoder + decoder; " + _LPFT + " (ReFs with PGL as its SSL objective)"),
    # ideal-semi with nnU-Net's soft Dice added to the pseudo-label terms (cps_dice): on ACDC seed 1 ideal-semi's
    # cross-entropy consistency term sat at 0.02 at weight 0.85 (the decoders agree on the confident voxels, mostly
    # background), so the unlabeled pool barely teaches; seed 1's validation pseudo Dice (last fifth) decides which
    # of the two runs seeds 2 and 0 (fixed 2026-12-05, before either run finished)
    Arm("ideal-semi-dice", "IDEALSemiSupervisedTrainer_decoderWarmup", "ideal", uses_unlabeled=True,
        settings=_ENCODER_ONLY + ",cps_dice=true", headline=False,
        route="encoder; two decoders, cross pseudo supervision (CE + Dice) on the unlabeled pool; " + _WARM),
    # diagnostic: IDEAL's two-decoder semi-supervised fine-tuning from a random start, which separates what the
    # unlabeled pool gives during fine-tuning from what IDEAL's pre-training gives (ideal-semi = both; a random
    # encoder needs no decoder-first warm-up or lower rate)
    Arm("semi-scratch", "IDEALSemiSupervisedTrainer", None, uses_unlabeled=True, headline=False,
        route="random start; two decoders, cross pseudo supervision on the unlabeled pool"),
)}
DEFAULT_ARMS = [name for name, arm in ARMS.items() if arm.headline]
# the from-scratch stock arms (scratch and its schedule check): the report draws their pseudo-Dice curves
SCRATCH_ARMS = [name for name, arm in ARMS.items() if arm.trainer == ARMS["scratch"].trainer and arm.pretrain is None]


def headline_pretrained_arms():
    """The headline arms that start from a pre-training: those the headline rule ranks against scratch."""
    return [name for name, arm in ARMS.items() if arm.pretrain and arm.headline]


def method_defaults(method: str) -> dict:
    """The settings the pre-training trainer of ``method`` runs with besides the schedule (its
    ``method_defaults()``, as run.json stores them): recorded weights of other defaults are not re-used."""
    return json.loads(_method_defaults_json(method))


@lru_cache(maxsize=None)
def _method_defaults_json(method: str) -> str:
    # nnU-Net's trainer lookup walks its trainer modules: once per method, not once per run the pace estimates
    from nnunet_ssl.benchmark.cost_trainers import trainer_class
    return json.dumps(trainer_class(PRETRAIN_TRAINERS[method]).method_defaults(), default=str)
