"""Weight transfer from a pre-training checkpoint into a fine-tuning network.

Rules (each key of the fine-tuning network ends up in exactly one bucket of the :class:`TransferReport`):

* encoder (``encoder.*`` and its alias ``decoder.encoder.*``): loaded. A shape mismatch here means the checkpoint
  comes from another architecture: refused with the first mismatching layer and both shapes. The one exception is
  the input projection of the stem when only the input-channel count differs: it is adapted as nnssl does
  (the pre-trained filters averaged over their input channels, repeated for every new channel and rescaled so an
  image fed identically to every channel gives the same response).
* decoder (``decoder.stages``, ``decoder.transpconvs``): loaded where shapes match (``load_decoder=True``),
  otherwise skipped with the reason.
* segmentation layers (``.seg_layers.``): never loaded (task-specific output).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.weights.network_parts import encoder_stage_of, is_encoder_key, unwrap


def _strip_wrappers(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


@dataclass
class TransferReport:
    loaded: List[str] = field(default_factory=list)
    adapted: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    unused_in_checkpoint: List[str] = field(default_factory=list)

    def headline(self) -> str:
        """One line: how many tensors were loaded, adapted, kept, unused."""
        return (f"nnunet_ssl weight transfer: {len(self.loaded)} tensors loaded, {len(self.adapted)} adapted, "
                f"{len(self.skipped)} kept at their initialisation, "
                f"{len(self.unused_in_checkpoint)} checkpoint tensors unused.")

    def summary(self) -> str:
        """The headline and one line per tensor (for the training log)."""
        lines = [self.headline()]
        lines += [f"  loaded   {k}" for k in self.loaded]
        lines += [f"  adapted  {k}: {why}" for k, why in self.adapted]
        lines += [f"  skipped  {k}: {why}" for k, why in self.skipped]
        lines += [f"  unused   {k}" for k in self.unused_in_checkpoint]
        return "\n".join(lines)


def _in_proj_keys(network: nn.Module, plan: dict) -> List[str]:
    keys = list(getattr(network, "keys_to_in_proj", ()) or ())
    keys += list((plan or {}).get("keys_to_in_proj", ()) or ())
    # the decoder holds the encoder, so every stem key also exists as decoder.<key>
    return [prefix + k + ".weight" for k in keys for prefix in ("", "decoder.")]


def adapt_in_proj(weight: torch.Tensor, new_in_channels: int) -> torch.Tensor:
    """Stem filters for a different input-channel count (mean over old channels, repeated, rescaled)."""
    old = weight.shape[1]
    mean = weight.mean(dim=1, keepdim=True)
    reps = [1, new_in_channels] + [1] * (weight.ndim - 2)
    return mean.repeat(*reps) * (old / new_in_channels)


def transfer_weights(network: nn.Module, checkpoint: Dict, load_decoder: bool = True,
                     adapt_stem: bool = True, reinit_encoder_stages: int = 0) -> TransferReport:
    """Copy pre-trained weights into ``network`` in place and report what happened to every key.

    ``reinit_encoder_stages=N`` leaves the first N encoder stages (the stem with stage 0) at the network's own
    initialisation: pre-training can collapse the features of early stages onto a few directions
    (:mod:`nnunet_ssl.weights.feature_rank`), and fine-tuning then learns more slowly than from random weights."""
    net = unwrap(network)
    source = {_strip_wrappers(k): v for k, v in checkpoint["network_weights"].items()}
    plan = checkpoint.get("nnssl_adaptation_plan") or {}
    target = net.state_dict()
    in_proj = set(_in_proj_keys(net, plan))
    report = TransferReport()
    new_state = {}

    encoder_keys = [k for k in target if is_encoder_key(k)]
    if not any(k in source for k in encoder_keys):
        raise UserInputError(
            "The checkpoint shares no encoder layer with this network (first encoder layer here: "
            f"'{encoder_keys[0]}', not in the checkpoint; checkpoint keys start with "
            f"{sorted(source)[:3]}). It was trained with another architecture: pre-train with the plans of this "
            "dataset (nnunet_ssl ingest --downstream ...).")

    for key, value in target.items():
        if ".seg_layers." in key:
            report.skipped.append((key, "segmentation layer (task-specific, always re-initialised)"))
            continue
        encoder = is_encoder_key(key)
        stage = encoder_stage_of(key)
        if stage is not None and stage < reinit_encoder_stages:
            report.skipped.append((key, f"encoder stage {stage} kept at its initialisation (reinit_encoder_stages="
                                        f"{reinit_encoder_stages})"))
            continue
        if not encoder and not load_decoder:
            report.skipped.append((key, "decoder transfer disabled"))
            continue
        if key not in source:
            if encoder:
                raise UserInputError(
                    f"Incompatible checkpoint: encoder layer '{key}' (shape {tuple(value.shape)}) is missing from "
                    f"it. It was trained with another architecture; pre-train with this dataset's plans.")
            report.skipped.append((key, "not in checkpoint"))
            continue
        src = source[key]
        if tuple(src.shape) == tuple(value.shape):
            new_state[key] = src.to(dtype=value.dtype)
            report.loaded.append(key)
            continue
        if (key in in_proj and adapt_stem and src.ndim == value.ndim and src.shape[0] == value.shape[0]
                and tuple(src.shape[2:]) == tuple(value.shape[2:])):
            new_state[key] = adapt_in_proj(src, value.shape[1]).to(dtype=value.dtype)
            report.adapted.append((key, f"input channels {src.shape[1]} -> {value.shape[1]} (stem adapted)"))
            continue
        if encoder:
            raise UserInputError(
                f"Incompatible checkpoint: first mismatching layer '{key}': checkpoint shape {tuple(src.shape)}, "
                f"this network {tuple(value.shape)}. The checkpoint was pre-trained with another architecture "
                f"(features, kernel sizes or stages differ); pre-train with this dataset's plans.")
        report.skipped.append((key, f"shape mismatch: checkpoint {tuple(src.shape)} vs network {tuple(value.shape)}"))

    report.unused_in_checkpoint = [k for k in source if k not in target]
    # several keys may name one tensor (the decoder holds the encoder): give every alias the loaded value, so
    # load_state_dict cannot overwrite a loaded tensor with an alias's old value
    loaded_by_storage = {target[k].data_ptr(): v for k, v in new_state.items()}
    for key, value in target.items():
        if key not in new_state and value.data_ptr() in loaded_by_storage:
            new_state[key] = loaded_by_storage[value.data_ptr()]
    merged = dict(target)
    merged.update(new_state)
    net.load_state_dict(merged)
    return report


def recommended_load_decoder(checkpoint: Dict,
                             decoder_transfers_of: Optional[Callable[[str], Optional[bool]]] = None
                             ) -> Tuple[bool, str]:
    """Whether fine-tuning should load this checkpoint's decoder, and why.

    For our pre-training checkpoints the trainer that wrote it decides as the code stands now
    (``decoder_transfers_of(trainer_name)``: its ``decoder_transfers``, so a checkpoint written before a method's
    recommendation changed follows the new one, e.g. IDEAL's since 2026-12-07); where that trainer cannot be asked,
    the checkpoint's own record (``checkpoint["nnunet_ssl"]["transfer_decoder"]``, its ``decoder_transfers`` then). A
    decoder trained to reconstruct the input (MAE, GMIM, ReFs on MAE) is not transferred: at the first fine-tuning
    step it passes the encoder 2-25 % of the gradient a random decoder passes (``scripts/probe_finetune_start.py``),
    and nnU-Net then stays longer in its all-background phase. An nnssl checkpoint (an ``nnssl_adaptation_plan``
    without our block): encoder and stem only, as nnssl's own fine-tuning loads it (its decoders are trained to
    reconstruct). Any other checkpoint (stock nnU-Net's, supervised): decoder loaded."""
    meta = checkpoint.get("nnunet_ssl") or {}
    name = checkpoint.get("trainer_name") or "unknown trainer"
    value = None
    if meta.get("kind") == "pretraining" and decoder_transfers_of is not None:
        value = decoder_transfers_of(name)
    if value is None:
        value = meta.get("transfer_decoder")
    if value is None and not meta and "nnssl_adaptation_plan" in checkpoint:
        return False, (f"{name} checkpoint (nnssl): encoder and stem loaded, decoder left at its initialisation, as "
                       f"nnssl's own fine-tuning does; load_decoder=True loads it")
    if value is None or value:
        return True, f"{name} checkpoint: decoder loaded where shapes match"
    return False, (f"{name} checkpoint: decoder left at its initialisation (its method transfers the encoder alone: a "
                   f"decoder trained to reconstruct the input blocks the gradient to the encoder, PGL's encoder-only "
                   f"variant never trains it, IDEAL's route check chose the encoder alone; docs/methods.md); "
                   f"load_decoder=True loads it")
