"""Run-time overrides of trainer hyperparameters through ``NNUNET_SSL_SETTINGS``.

nnU-Net selects hyperparameters by trainer class name (variants such as ``PGLTrainer_ema0996``). For quick runs,
tests and benchmarks every nnunet_ssl trainer also reads ``NNUNET_SSL_SETTINGS="name=value,name=value"``, for
example ``NNUNET_SSL_SETTINGS="num_epochs=2,num_iterations_per_epoch=3,batch_size=2"``. Each trainer declares
the names it accepts in ``tunable_settings`` (name -> type); an unknown name or a value of the wrong type stops
the run before training with a message listing the accepted names. The applied values are printed to the log.
Types: ``int``, ``float``, ``bool`` (1/0, true/false, yes/no, on/off) and ``str`` (taken as written, surrounding
quotes removed; a value cannot contain a comma), e.g. ``labeled_cases_file=/data/labeled.json``.
"""
import os
from typing import Dict

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.trainer_names import SETTINGS_ENV

ENV_VAR = SETTINGS_ENV

COMMON_SETTINGS = {
    "num_epochs": int,
    "num_iterations_per_epoch": int,
    "num_val_iterations_per_epoch": int,
    "initial_lr": float,
    "weight_decay": float,
    "save_every": int,
    "batch_size": int,
}


def _convert(name: str, raw: str, typ):
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is str:
            return raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
        return typ(raw)
    except ValueError:
        raise UserInputError(f"{ENV_VAR}: '{name}={raw}' is not a valid {typ.__name__}.") from None


def parse_settings(text: str, allowed: Dict[str, type]) -> Dict[str, object]:
    out = {}
    for item in [i.strip() for i in (text or "").split(",") if i.strip()]:
        if "=" not in item:
            raise UserInputError(f"{ENV_VAR}: '{item}' is not of the form name=value "
                                 f"(example: num_epochs=2,num_iterations_per_epoch=3).")
        name, raw = (s.strip() for s in item.split("=", 1))
        if name not in allowed:
            raise UserInputError(f"{ENV_VAR}: unknown setting '{name}' for this trainer. Accepted: "
                                 f"{', '.join(sorted(allowed))}.")
        out[name] = _convert(name, raw, allowed[name])
    return out


def apply_env_settings(trainer, allowed: Dict[str, type]) -> Dict[str, object]:
    """Apply ``NNUNET_SSL_SETTINGS`` to ``trainer`` (call before the network and data loaders are built)."""
    values = parse_settings(os.environ.get(ENV_VAR, ""), allowed)
    for name, value in values.items():
        if name == "batch_size":
            trainer.configuration_manager.configuration["batch_size"] = value
        else:
            setattr(trainer, name, value)
    if values:
        trainer.print_to_log_file(f"{ENV_VAR} applied: {values}")
    return values
