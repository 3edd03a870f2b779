"""Every setting a trainer accepts through NNUNET_SSL_SETTINGS states its range (issue 24, item 4), and the
defaults of every trainer of the index lie in it."""
import inspect

import pytest

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.settings import parse_settings, spec_of

# free-form on purpose: any seed; a file path; level names (checked against the network when the run starts)
FREE_FORM = {"label_seed", "labeled_cases_file", "levels"}


def _trainers():
    import nnunet_ssl_trainers.index as index
    return [c for n in dir(index) if inspect.isclass(c := getattr(index, n)) and hasattr(c, "tunable_settings")]


def test_every_setting_but_free_form_ones_has_a_range_or_choices():
    missing = {(cls.__name__, name) for cls in _trainers() for name, spec in cls.tunable_settings.items()
               if name not in FREE_FORM and (s := spec_of(name, spec)).type is not bool
               and s.min is None and s.max is None and s.choices is None}
    assert not missing, f"settings without a declared range: {sorted(missing)}"


def test_class_level_defaults_lie_in_their_ranges():
    checked = 0
    for cls in _trainers():
        sources = [cls] + ([cls.objective_class] if getattr(cls, "objective_class", None) else [])
        for name, spec in cls.tunable_settings.items():
            for source in sources:
                value = getattr(source, name, None)
                if value is None or isinstance(value, property):
                    continue
                s = spec_of(name, spec)
                assert isinstance(value, s.type) or (s.type is float and isinstance(value, int)), (cls, name)
                assert s.accepts(value), f"{cls.__name__}.{name} = {value!r} is outside {s.describe()}"
                checked += 1
                break
    assert checked > 50


@pytest.mark.parametrize("trainer, setting, shown", [
    ("GMIMTrainer", "mask_ratio=1.0", "mask_ratio must be float >= 0 and < 1"),
    ("GMIMTrainer", "recon_normalisation=none", "recon_normalisation must be str one of masked, all"),
    ("PGLTrainer", "ema_base=1.5", "ema_base must be float >= 0 and <= 1"),
    ("IDEALTrainer", "temperature=0", "temperature must be float > 0"),
    ("ReFsTrainer", "matching=fsh", "matching must be str one of fish, cosine, none"),
    ("ReFsTrainer", "fish_order=random", "fish_order must be str one of ssl_first, ref_first, alternate"),
    ("ReFsTrainer", "fish_inner_lr=0", "fish_inner_lr must be float > 0"),
    ("PGLTrainer", "view_placement=anywhere", "view_placement must be str one of inside, centre"),
    ("MAETrainer", "max_nonfinite_in_a_row=0", "max_nonfinite_in_a_row must be int >= 1"),
    ("MAETrainer", "grad_clip=0", "grad_clip must be float > 0"),
    ("SSLFinetuneTrainer", "warmup_duration_decoder=-1", "warmup_duration_decoder must be int >= 0"),
    ("SSLFinetuneTrainer", "budget_rest=labeled", "budget_rest must be str one of unused, unlabeled"),
    ("SSLFinetuneTrainer", "label_budget=0", "label_budget must be int >= 1"),
    ("IDEALSemiSupervisedTrainer", "cps_confidence_threshold=1.5", "cps_confidence_threshold must be float >= 0"),
    ("IDEALSemiSupervisedTrainer", "max_nonfinite_in_a_row=0", "max_nonfinite_in_a_row must be int >= 1"),
])
def test_out_of_range_values_are_refused_with_the_range(trainer, setting, shown):
    import nnunet_ssl_trainers.index as index
    with pytest.raises(UserInputError, match="is out of range") as e:
        parse_settings(setting, getattr(index, trainer).tunable_settings)
    assert shown in str(e.value)
