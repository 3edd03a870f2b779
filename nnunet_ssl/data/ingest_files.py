"""Small helpers of ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`): JSON in and out, short error text,
our version."""
from __future__ import annotations

import json
from pathlib import Path


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _write_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=4, sort_keys=False, default=_json_default)


def _load_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _short_error(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines:
        text = lines[-1]
        if text.startswith("sitk::ERROR:"):
            text = text[len("sitk::ERROR:"):].strip()
    text = text or type(e).__name__
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


def _version() -> str:
    try:
        from nnunet_ssl import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"
