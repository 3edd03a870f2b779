"""Run-time overrides of trainer hyperparameters through ``NNUNET_SSL_SETTINGS``.

nnU-Net selects hyperparameters by trainer class name (variants such as ``PGLTrainer_ema0996``). For quick runs,
tests and benchmarks every nnunet_ssl trainer also reads ``NNUNET_SSL_SETTINGS="name=value,name=value"``, for
example ``NNUNET_SSL_SETTINGS="num_epochs=2,num_iterations_per_epoch=3,batch_size=2"``. Each trainer declares
the names it accepts in ``tunable_settings`` (name -> type); an unknown name or a value of the wrong type stops
the run before training with a message listing the accepted names. The applied values are printed to the log.
Types: ``int``, ``float``, ``bool`` (1/0, true/false, yes/no, on/off) and ``str`` (taken as written, surrounding
quotes removed; a value cannot contain a comma), e.g. ``labeled_cases_file=/data/labeled.json``.

Ranges: a ``tunable_settings`` value is either a plain type or a :class:`Setting` (type plus accepted range, e.g.
``Setting(int, min=1)``, ``Setting(float, min=0, max=1, max_exclusive=True)``, ``Setting(str, choices=("a", "b"))``).
A value outside its range stops the run before training, with the accepted range in the message. The common
settings carry their ranges (:data:`COMMON_SETTINGS`); a trainer that lists a common name with a plain type still
gets the common range. Float settings never accept NaN or infinity.
"""
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.trainer_names import SETTINGS_ENV

ENV_VAR = SETTINGS_ENV



@dataclass(frozen=True)
class Setting:
    """A setting's type and accepted range (bounds inclusive unless ``*_exclusive``; ``choices`` for names)."""
    type: type
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: Optional[Tuple] = None

    @property
    def __name__(self) -> str:  # reads like the plain type in messages
        return self.type.__name__

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_exclusive else '<='} {self.max:g}")
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.type is float:
            parts.append("finite")
        return f"{self.type.__name__} " + " and ".join(parts) if parts else self.type.__name__

    def accepts(self, value) -> bool:
        if self.type is float and not math.isfinite(value):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if self.min is not None and (value < self.min or (self.min_exclusive and value == self.min)):
            return False
        if self.max is not None and (value > self.max or (self.max_exclusive and value == self.max)):
            return False
        return True


SettingSpec = Union[type, Setting]

COMMON_SETTINGS: Dict[str, SettingSpec] = {
    "num_epochs": Setting(int, min=1),
    "num_iterations_per_epoch": Setting(int, min=1),
    "num_val_iterations_per_epoch": Setting(int, min=1),  # nnU-Net averages the validation losses of the epoch
    "initial_lr": Setting(float, min=0),  # 0 is allowed: a run that only checks what was loaded
    "weight_decay": Setting(float, min=0),
    "save_every": Setting(int, min=1),
    "batch_size": Setting(int, min=1),
}


def spec_of(name: str, spec: SettingSpec) -> Setting:
    """The :class:`Setting` behind a ``tunable_settings`` entry (a plain type of a common name: the common range)."""
    if isinstance(spec, Setting):
        return spec
    common = COMMON_SETTINGS.get(name)
    if isinstance(common, Setting) and common.type is spec:
        return common
    return Setting(spec)


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


def settings_items(text: str) -> List[str]:
    """The ``name=value`` items of ``NNUNET_SSL_SETTINGS`` text, stripped, empty ones dropped."""
    return [i.strip() for i in (text or "").split(",") if i.strip()]


def parse_settings(text: str, allowed: Dict[str, SettingSpec]) -> Dict[str, object]:
    out = {}
    for item in settings_items(text):
        if "=" not in item:
            raise UserInputError(f"{ENV_VAR}: '{item}' is not of the form name=value "
                                 f"(example: num_epochs=2,num_iterations_per_epoch=3).")
        name, raw = (s.strip() for s in item.split("=", 1))
        if name not in allowed:
            raise UserInputError(f"{ENV_VAR}: unknown setting '{name}' for this trainer. Accepted: "
                                 f"{', '.join(sorted(allowed))}.")
        spec = spec_of(name, allowed[name])
        value = _convert(name, raw, spec.type)
        if not spec.accepts(value):
            raise UserInputError(f"{ENV_VAR}: '{name}={raw}' is out of range: {name} must be {spec.describe()}.")
        out[name] = value
    return out


def apply_env_settings(trainer, allowed: Dict[str, SettingSpec]) -> Dict[str, object]:
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
