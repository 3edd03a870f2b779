"""The benchmark's arms: how each one trains, from what start.

Every arm trains with the same plans (the dataset's default ``nnUNetPlans``), configuration and schedule (epochs,
iterations per epoch, batch size); they differ only in their start and in the fine-tuning route we recommend for
that start:

* ``scratch``: stock nnU-Net (``nnUNetTrainer_schedule`` = ``nnUNetTrainer`` with only the schedule shortened);
* MAE, GMIM and ReFs (on MAE) checkpoints carry a decoder trained to reconstruct the input, which fine-tuning does
  not transfer: the random decoder warms up alone first (``SSLFinetuneTrainer_decoderWarmup``), which removed
  their losses against scratch in earlier CPU runs;
* PGL and IDEAL transfer encoder and decoder: ``SSLFinetuneTrainer`` (whole-net linear warm-up, then poly);
* ``ideal-semi``: IDEAL's own two-decoder semi-supervised fine-tuning on the labeled subset plus the unlabeled pool.
"""
from __future__ import annotations

from dataclasses import dataclass
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


PRETRAIN_TRAINERS: Dict[str, str] = {"mae": "MAETrainer", "gmim": "GMIMTrainer", "pgl": "PGLTrainer",
                                     "ideal": "IDEALTrainer", "refs": "ReFsTrainer"}

_WARM = "decoder-only warm-up, then whole net"
ARMS: Dict[str, Arm] = {a.name: a for a in (
    Arm("scratch", "nnUNetTrainer_schedule", None, route="stock nnUNetTrainer from scratch"),
    Arm("mae", "SSLFinetuneTrainer_decoderWarmup", "mae", route="encoder; " + _WARM),
    Arm("gmim", "SSLFinetuneTrainer_decoderWarmup", "gmim", route="encoder; " + _WARM),
    Arm("pgl", "SSLFinetuneTrainer", "pgl", route="encoder + decoder; whole-net warm-up"),
    Arm("ideal", "SSLFinetuneTrainer", "ideal", route="encoder + decoder; whole-net warm-up"),
    Arm("ideal-semi", "IDEALSemiSupervisedTrainer", "ideal", uses_unlabeled=True,
        route="encoder + decoder; two decoders, cross pseudo supervision on the unlabeled pool"),
    Arm("refs", "SSLFinetuneTrainer_decoderWarmup", "refs",
        route="encoder; " + _WARM + " (reference = the other dataset's labels)"),
    # diagnostics (not in the headline, not run by default): the same checkpoints with the first encoder stages
    # left at their random initialisation (pre-training collapses early-stage features; docs/benchmarks.md)
    Arm("ideal-reinit2", "SSLFinetuneTrainer", "ideal", settings="reinit_encoder_stages=2", headline=False,
        route="encoder stages >= 2 + decoder; whole-net warm-up"),
    Arm("mae-reinit1", "SSLFinetuneTrainer_decoderWarmup", "mae", settings="reinit_encoder_stages=1",
        headline=False, route="encoder stages >= 1; " + _WARM),
    # diagnostic: the IDEAL checkpoint's encoder fine-tuned at a tenth of the learning rate (discriminative
    # fine-tuning): frozen IDEAL features probe better than random ones on held-out patients (scripts/
    # probe_features.py), yet whole-net fine-tuning at nnU-Net's rate ended level with scratch on ACDC
    Arm("ideal-enclr", "SSLFinetuneTrainer", "ideal", settings="encoder_lr_factor=0.1", headline=False,
        route="encoder + decoder; encoder at 0.1 x the learning rate; whole-net warm-up"),
    # diagnostic: IDEAL's loss trains the encoder and the first decoder stage only, so the stages the output layer
    # sees start untrained: the decoder warms up alone on the frozen encoder (as for MAE), then the whole net
    # trains with the encoder at 0.1x (linear-probe-then-fine-tune: a random head's gradients distort features)
    Arm("ideal-lpft", "SSLFinetuneTrainer_decoderWarmup", "ideal", settings="encoder_lr_factor=0.1",
        headline=False, route="encoder + decoder; decoder-only warm-up, then whole net, encoder at 0.1x"),
    # diagnostic: IDEAL's two-decoder semi-supervised fine-tuning from a random start, which separates what the
    # unlabeled pool gives during fine-tuning from what IDEAL's pre-training gives (ideal-semi = both)
    Arm("semi-scratch", "IDEALSemiSupervisedTrainer", None, uses_unlabeled=True, headline=False,
        route="random start; two decoders, cross pseudo supervision on the unlabeled pool"),
)}
DEFAULT_ARMS = [name for name, arm in ARMS.items() if arm.headline]
