"""What a pre-training checkpoint holds, and restoring a trainer from one (``--c``).

Besides nnU-Net's fields (network, optimizer, grad scaler, logs, epoch, init args, trainer name, mirroring axes) a
pre-training checkpoint holds the objective's modules (``ssl_state``: heads, predictors, EMA teachers), an
``nnunet_ssl`` block (best validation SSL loss, NaN/Inf counter, whether the decoder transfers, the run's initial
weight norm for :mod:`nnunet_ssl.weights.health`, and for a checkpoint written mid-epoch by a signal the steps done
and their per-step values) and nnssl's ``nnssl_adaptation_plan``.

``current_epoch`` is the epoch ``--c`` starts: the next one for an end-of-epoch checkpoint, the one in progress for
a mid-epoch checkpoint (:mod:`nnunet_ssl_trainers.pretraining_loop` then continues it at its next step).
"""
from typing import List, Optional, Tuple

from nnunet_ssl.weights.checkpoint import adaptation_plan, load_checkpoint_for_resume, to_cpu
from nnunet_ssl.weights.network_parts import unwrap


def pretraining_checkpoint(t, progress: Optional[Tuple[int, List[dict]]] = None) -> dict:
    net = unwrap(t.network)
    return {
        "network_weights": to_cpu(net.state_dict()),
        "optimizer_state": to_cpu(t.optimizer.state_dict()),
        "grad_scaler_state": t.grad_scaler.state_dict() if t.grad_scaler is not None else None,
        "logging": t.logger.get_checkpoint(),
        "_best_ema": t._best_ema,
        "current_epoch": t.current_epoch + 1 if progress is None else t.current_epoch,
        "init_args": t.my_init_kwargs,
        "trainer_name": t.__class__.__name__,
        "inference_allowed_mirroring_axes": t.inference_allowed_mirroring_axes,
        "ssl_state": to_cpu({k: unwrap(m).state_dict() for k, m in t.ssl_modules.items()}),
        "nnunet_ssl": {"best_val_loss": t._best_val_loss, "kind": "pretraining",
                       "configuration": t.configuration_name,
                       "nonfinite_in_a_row": t._nonfinite_in_a_row,
                       "transfer_decoder": t.decoder_transfers,
                       "initial_weight_norm": t.initial_weight_norm,
                       "epoch_progress": None if progress is None else
                       {"steps_done": progress[0], "step_outputs": progress[1]}},
        "nnssl_adaptation_plan": adaptation_plan(net, t.plans_manager.plans, t.configuration_name,
                                                 t.num_input_channels),
    }


def restore_pretraining_checkpoint(t, filename_or_checkpoint) -> None:
    ckpt = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
        load_checkpoint_for_resume(filename_or_checkpoint, t.device)
    weights = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt["network_weights"].items()}
    unwrap(t.network).load_state_dict(weights)
    for name, state in ckpt.get("ssl_state", {}).items():
        if name in t.ssl_modules:
            unwrap(t.ssl_modules[name]).load_state_dict(state)
    t.my_init_kwargs = ckpt["init_args"]
    t.current_epoch = ckpt["current_epoch"]
    t.logger.load_checkpoint(ckpt["logging"])
    t._best_ema = ckpt.get("_best_ema")
    meta = ckpt.get("nnunet_ssl", {})
    t._best_val_loss = meta.get("best_val_loss")
    t._nonfinite_in_a_row = meta.get("nonfinite_in_a_row", 0)
    t.initial_weight_norm = meta.get("initial_weight_norm", t.initial_weight_norm)
    progress = meta.get("epoch_progress")
    t._epoch_progress = (int(progress["steps_done"]), [dict(o) for o in progress["step_outputs"]]) \
        if progress else None
    t.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                  t.inference_allowed_mirroring_axes)
    t.optimizer.load_state_dict(ckpt["optimizer_state"])
    if t.grad_scaler is not None and ckpt.get("grad_scaler_state") is not None:
        t.grad_scaler.load_state_dict(ckpt["grad_scaler_state"])
