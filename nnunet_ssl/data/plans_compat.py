"""Are two nnU-Net plans the same for one configuration? Lists WHAT differs, in words a user can act on.

Used wherever a second dataset must have been preprocessed exactly like the training dataset: the unlabeled pool of
``IDEALSemiSupervisedTrainer`` and the reference dataset of ReFs::

    diffs = plans_differences(plans_a, plans_b, "3d_fullres")
    if diffs:
        raise UserInputError("planned differently:\\n  " + "\\n  ".join(diffs))

Each difference is one line starting with its aspect: ``configuration``, ``spacing``, ``patch size``,
``normalisation``, ``data_identifier``, ``transpose``, ``resampling``, ``preprocessor``, ``intensity properties``
(only for CT normalisation, which uses them), ``architecture``. ``aspects`` restricts the comparison:
:data:`DATA_ASPECTS` are the ones that decide what the preprocessed data look like (patch size and architecture
do not). Plain Python, no nnU-Net import; ``inherits_from`` configurations are resolved.
"""
import copy
from typing import Iterable, List, Optional, Sequence

__all__ = ["ALL_ASPECTS", "DATA_ASPECTS", "resolve_configuration", "plans_differences"]

DATA_ASPECTS = ("configuration", "spacing", "normalisation", "data_identifier", "transpose", "resampling",
                "preprocessor", "intensity properties")
ALL_ASPECTS = DATA_ASPECTS + ("patch size", "architecture")

_RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                    "resampling_fn_seg_kwargs")


def resolve_configuration(plans: dict, configuration: str) -> Optional[dict]:
    """The configuration dict with ``inherits_from`` applied, or None if the plans do not have it."""
    configs = plans.get("configurations", {}) or {}
    if configuration not in configs:
        return None
    chain, name = [], configuration
    while name is not None:
        if name in chain or name not in configs:
            break
        chain.append(name)
        name = configs[name].get("inherits_from")
    resolved = {}
    for name in reversed(chain):
        resolved.update(copy.deepcopy(configs[name]))
    resolved.pop("inherits_from", None)
    return resolved


def _close(a, b, tol=1e-5) -> bool:
    """Equality for JSON-like values; numbers compared with a relative tolerance, lists/tuples alike."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)), abs(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_close(a[k], b[k], tol) for k in a)
    return a == b


def _fmt(v) -> str:
    if isinstance(v, tuple):
        v = list(v)
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 160 else text[:157] + "..."


def _dict_diffs(prefix: str, a: dict, b: dict, names) -> List[str]:
    out = []
    for k in sorted(set(a) | set(b), key=str):
        name = f"{prefix}.{k}" if prefix else str(k)
        if k not in a:
            out.append(f"{name}: missing ({names[0]}) vs {_fmt(b[k])} ({names[1]})")
        elif k not in b:
            out.append(f"{name}: {_fmt(a[k])} ({names[0]}) vs missing ({names[1]})")
        elif isinstance(a[k], dict) and isinstance(b[k], dict):
            out += _dict_diffs(name, a[k], b[k], names)
        elif not _close(a[k], b[k]):
            out.append(f"{name}: {_fmt(a[k])} ({names[0]}) vs {_fmt(b[k])} ({names[1]})")
    return out


def _architecture(cfg: dict) -> dict:
    if "architecture" in cfg:
        return copy.deepcopy(cfg["architecture"])
    # plans of nnU-Net < 2.4 describe the network with top-level keys
    keys = ("UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
            "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features")
    return {k: copy.deepcopy(cfg[k]) for k in keys if k in cfg}


def plans_differences(plans_a: dict, plans_b: dict, configuration: str,
                      aspects: Optional[Iterable[str]] = None,
                      names: Sequence[str] = ("a", "b")) -> List[str]:
    """Human-readable differences between two plans for ``configuration`` (empty list = compatible).

    ``names`` label the two plans in the messages (for example ``("training dataset", "unlabeled dataset")``).
    """
    aspects = tuple(ALL_ASPECTS if aspects is None else aspects)
    unknown = [a for a in aspects if a not in ALL_ASPECTS]
    if unknown:
        raise ValueError(f"unknown aspects {unknown}; choose from {ALL_ASPECTS}")
    names = tuple(names)
    ca, cb = resolve_configuration(plans_a, configuration), resolve_configuration(plans_b, configuration)
    if ca is None or cb is None:
        missing = [(n, p) for n, p, c in ((names[0], plans_a, ca), (names[1], plans_b, cb)) if c is None]
        return [f"configuration: '{configuration}' is missing from the {n} plans (it has: "
                f"{', '.join(sorted((p.get('configurations') or {}).keys())) or 'none'})" for n, p in missing]
    out: List[str] = []

    def simple(aspect: str, label: str, va, vb):
        if aspect in aspects and not _close(va, vb):
            out.append(f"{aspect}: {label} {_fmt(va)} ({names[0]}) vs {_fmt(vb)} ({names[1]})")

    simple("spacing", "target spacing", ca.get("spacing"), cb.get("spacing"))
    simple("patch size", "patch size", ca.get("patch_size"), cb.get("patch_size"))
    simple("normalisation", "normalization_schemes", ca.get("normalization_schemes"), cb.get("normalization_schemes"))
    simple("normalisation", "use_mask_for_norm", ca.get("use_mask_for_norm"), cb.get("use_mask_for_norm"))
    simple("data_identifier", "data_identifier", ca.get("data_identifier"), cb.get("data_identifier"))
    simple("transpose", "transpose_forward", plans_a.get("transpose_forward"), plans_b.get("transpose_forward"))
    simple("transpose", "transpose_backward", plans_a.get("transpose_backward"), plans_b.get("transpose_backward"))
    for k in _RESAMPLING_KEYS:
        simple("resampling", k, ca.get(k), cb.get(k))
    simple("preprocessor", "preprocessor_name", ca.get("preprocessor_name"), cb.get("preprocessor_name"))

    if "intensity properties" in aspects:
        schemes = list(ca.get("normalization_schemes") or [])
        ia = plans_a.get("foreground_intensity_properties_per_channel") or {}
        ib = plans_b.get("foreground_intensity_properties_per_channel") or {}
        for ch, scheme in enumerate(schemes):
            if "CT" not in str(scheme):
                continue  # only CT normalisation reads the dataset-wide intensity statistics
            pa, pb = ia.get(str(ch)), ib.get(str(ch))
            if not _close(pa, pb):
                out.append(f"intensity properties: channel {ch} ({scheme}) uses foreground intensity statistics "
                           f"{_fmt(pa)} ({names[0]}) vs {_fmt(pb)} ({names[1]})")

    if "architecture" in aspects:
        aa, ab = _architecture(ca), _architecture(cb)
        if aa.get("network_class_name") != ab.get("network_class_name"):
            out.append(f"architecture: network {_fmt(aa.get('network_class_name'))} ({names[0]}) vs "
                       f"{_fmt(ab.get('network_class_name'))} ({names[1]})")
        else:
            ka = {k: v for k, v in aa.items() if k not in ("network_class_name", "_kw_requires_import")}
            kb = {k: v for k, v in ab.items() if k not in ("network_class_name", "_kw_requires_import")}
            out += [f"architecture: {d}" for d in _dict_diffs("", ka, kb, names)]
    return out
