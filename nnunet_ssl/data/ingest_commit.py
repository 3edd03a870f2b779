"""Atomic writing for ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`): the new dataset is built in hidden
temporary siblings of its raw and preprocessed folders and renamed into place at the very end; on any failure,
Ctrl-C or SIGTERM nothing is left behind (an overwritten dataset of ours is restored), and temporaries of a run
killed with -9 are removed by the next run for the same id."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

_TMP_TAG = ".nnunet_ssl-tmp-"
_OLD_TAG = ".nnunet_ssl-old-"


class _StagedDataset:
    """The temporary raw and preprocessed folders of a new dataset, their commit and their rollback."""

    def __init__(self, raw_root: Path, pre_root: Path, full_name: str):
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.raw_root, self.pre_root = raw_root, pre_root
        self.tmp_raw = raw_root / f".{full_name}{_TMP_TAG}{self.token}"
        self.tmp_pre = pre_root / f".{full_name}{_TMP_TAG}{self.token}"
        self.final_raw, self.final_pre = raw_root / full_name, pre_root / full_name
        self.moved_old: List[Tuple[Path, Path]] = []
        self.placed: List[Path] = []

    def create(self, data_identifiers: Dict[str, str], config_names: Sequence[str]) -> Tuple[Path, List[tuple]]:
        """Make the temporary folders; returns ``(imagesTr folder, [(configuration, preprocessed folder)])``."""
        self.raw_root.mkdir(parents=True, exist_ok=True)
        self.pre_root.mkdir(parents=True, exist_ok=True)
        images_dir = self.tmp_raw / "imagesTr"
        images_dir.mkdir(parents=True)
        self.tmp_pre.mkdir(parents=True)
        targets = []
        for ident in dict.fromkeys(data_identifiers.values()):
            (self.tmp_pre / ident).mkdir()
            config = next(c for c in config_names if data_identifiers[c] == ident)
            targets.append((config, str(self.tmp_pre / ident)))
        return images_dir, targets

    def commit(self, existing: Iterable[Path]) -> None:
        """Move old folders (ours, overwrite) aside, rename the new ones into place."""
        for p in existing:
            aside = p.with_name(f".{p.name}{_OLD_TAG}{self.token}")
            p.rename(aside)
            self.moved_old.append((p, aside))
        self.tmp_raw.rename(self.final_raw)
        self.placed.append(self.final_raw)
        self.tmp_pre.rename(self.final_pre)
        self.placed.append(self.final_pre)

    def rollback(self) -> None:
        """Undo everything: remove what was placed, put old folders back, remove the temporaries."""
        for p in self.placed:
            shutil.rmtree(p, ignore_errors=True)
        for original, aside in self.moved_old:
            try:
                aside.rename(original)
            except OSError:
                pass
        shutil.rmtree(self.tmp_raw, ignore_errors=True)
        shutil.rmtree(self.tmp_pre, ignore_errors=True)

    def discard_old(self) -> None:
        """After a successful commit: delete the overwritten folders."""
        for _, aside in self.moved_old:
            shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_temporaries(dataset_id: int, roots: Iterable[Path]) -> None:
    """Remove temporary folders left by ingest processes that no longer run (e.g. killed -9), of ``dataset_id`` and
    of any other id (an id that is never ingested again would keep them forever). Only hidden folders with our
    temporary naming (``.DatasetXXX_NAME.nnunet_ssl-tmp-<pid>-<hex>``) whose writer PID is dead; symlinks and
    everything else are never touched (folders moved aside during an overwrite, ``-old-``, are not temporaries:
    they may be the only copy of the previous dataset)."""
    del dataset_id  # every id's temporaries are checked
    for root in roots:
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if not (p.name.startswith(".Dataset") and _TMP_TAG in p.name):
                continue
            try:
                if p.is_symlink() or not p.is_dir():
                    continue
                pid = int(p.name.split(_TMP_TAG, 1)[1].split("-", 1)[0])
                if pid == os.getpid():
                    continue
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except (ValueError, PermissionError, OSError):
                pass


def _sigterm_as_exit():
    """Make SIGTERM raise SystemExit (so the cleanup runs) while ingesting; returns the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None

    def _handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, _handler)
    except (ValueError, OSError):
        return None
    return (signal.SIG_DFL if previous is None else previous,)


def _restore_sigterm(previous) -> None:
    if previous is None:
        return
    import signal

    try:
        signal.signal(signal.SIGTERM, previous[0])
    except (ValueError, OSError):
        pass
