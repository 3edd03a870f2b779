"""The benchmark's record: the small files of every finished run, kept where git keeps them.

A work directory holds data, checkpoints and predictions (gigabytes) and lives only as long as its machine. The
record keeps what the report reads, in the work directory's own layout, in a folder meant to be committed (default
``docs/benchmarks/low_label_<profile>_runs``)::

    RECORD/<dataset>/split.json                           the fixed split
    RECORD/<dataset>/arms/<arm>/b<budget>_s<seed>/        run.json, summary.json, nnU-Net's training_log_*.txt
    RECORD/<dataset>/pretrain/<method>/                   run.json (+ "finished"), nnU-Net's training_log_*.txt
    RECORD/commands.sh                                    the stock commands that produced them

The driver skips a run whose evaluation is in the work directory or in the record, so a new machine continues
where the last one stopped; the report reads both.

Pre-trained weights (tens of MB each on the default plans) are recorded only for the methods asked for
(``--record-weights``), as ``pretrain/<method>/pretrained_weights_fp16.pth``: the checkpoint without optimizer,
logging and SSL heads, its network weights in half precision (fine-tuning casts them back), only the encoder's
where the method's decoder is not transferred. A fine-tuning run
starts from the work directory's checkpoint, else from the recorded weights of the same pre-training settings and
method defaults (``run.json``'s ``method_defaults``: the trainer's hyperparameters as the code set them), else the
driver re-runs the pre-training.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from nnunet_ssl.benchmark import common as bc

RUN_FILES = ("run.json", "summary.json")
WEIGHTS_FILE = "pretrained_weights_fp16.pth"
# what fine-tuning never reads from a pre-training checkpoint (nnunet_ssl.weights.transfer)
DROPPED_KEYS = ("optimizer_state", "grad_scaler_state", "logging", "ssl_state")


def default_record_dir(out, profile: str) -> Path:
    return Path(out) / f"low_label_{profile}_runs"


def training_logs(folder: Optional[Path]):
    return sorted(folder.glob("training_log*.txt")) if folder is not None and folder.is_dir() else []


def _replace_folder(target: Path, fill) -> None:
    """Write ``target`` through a temporary sibling, so an interruption never leaves half a record."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def record_split(work: Path, record: Path, dataset: str) -> None:
    src = work / dataset / "split.json"
    if src.is_file():
        (record / dataset).mkdir(parents=True, exist_ok=True)
        bc.write_json(bc.load_json(src), record / dataset / "split.json")


def record_run(work: Path, record: Path, rel: Path, train_folder: Optional[Path]) -> Path:
    """Copy an evaluated run (``work/rel``: run.json, summary.json) and the training logs of ``train_folder``."""
    src = work / rel
    if not (src / "summary.json").is_file():
        raise ValueError(f"{src} has no summary.json: only evaluated runs are recorded")

    def fill(tmp: Path):
        for name in RUN_FILES:
            shutil.copyfile(src / name, tmp / name)
        for log in training_logs(train_folder):
            shutil.copyfile(log, tmp / log.name)

    _replace_folder(record / rel, fill)
    record_split(work, record, rel.parts[0])
    return record / rel


def record_pretraining(work: Path, record: Path, rel: Path, train_folder: Optional[Path], finished: bool) -> Path:
    """Copy a pre-training's run.json (with ``finished``) and its training logs."""
    src = work / rel
    info = bc.load_json(src / "run.json") if (src / "run.json").is_file() else {}
    info["finished"] = bool(finished)

    def fill(tmp: Path):
        bc.write_json(info, tmp / "run.json")
        for log in training_logs(train_folder):
            shutil.copyfile(log, tmp / log.name)

    _replace_folder(record / rel, fill)
    return record / rel


def record_commands(work: Path, record: Path) -> None:
    """Append the work directory's stock commands the record does not hold yet (in their order)."""
    src = work / "commands.sh"
    if not src.is_file():
        return
    record.mkdir(parents=True, exist_ok=True)
    dst = record / "commands.sh"
    have = set(dst.read_text().splitlines()) if dst.is_file() else set()
    new = [ln for ln in src.read_text().splitlines() if ln.strip() and ln not in have]
    if new:
        with open(dst, "a") as f:
            f.write("\n".join(new) + "\n")


def compact_checkpoint(checkpoint: dict) -> dict:
    """What fine-tuning reads of a pre-training checkpoint: its floating-point network weights in half precision,
    only the encoder's when the checkpoint says its decoder is not transferred (``transfer_decoder`` False). Keys
    that alias one tensor (``decoder.encoder.*``) keep sharing it, so it is stored once."""
    import torch
    from nnunet_ssl.weights.network_parts import is_encoder_key
    meta = dict(checkpoint.get("nnunet_ssl") or {})
    encoder_only = meta.get("transfer_decoder") is False
    out = {k: v for k, v in checkpoint.items() if k not in DROPPED_KEYS}
    converted, weights = {}, {}
    for k, v in checkpoint["network_weights"].items():
        if encoder_only and not is_encoder_key(k):
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if key not in converted:
            converted[key] = v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
        weights[k] = converted[key]
    out["network_weights"] = weights
    out["nnunet_ssl"] = dict(meta, recorded_half_precision=True, recorded_encoder_only=encoder_only)
    return out


def record_weights(checkpoint_file: Path, folder: Path) -> Path:
    """Write :func:`compact_checkpoint` of ``checkpoint_file`` to ``folder`` (atomically)."""
    from nnunet_ssl.weights.checkpoint import atomic_torch_save, load_checkpoint_file
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(compact_checkpoint(load_checkpoint_file(str(checkpoint_file))), str(folder / WEIGHTS_FILE))
    return folder / WEIGHTS_FILE


def recorded_weights(record: Optional[Path], rel: Path, settings: str,
                     method_defaults: Optional[dict] = None) -> Optional[Path]:
    """The recorded weights of pre-training ``rel`` if they were trained with ``settings`` and, where both the record
    and the caller name them, with the same ``method_defaults`` (the trainer's ``method_defaults()`` as JSON; a
    record written before they were recorded matches on ``settings`` alone)."""
    if record is None:
        return None
    folder = record / rel
    info = bc.load_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    weights = folder / WEIGHTS_FILE
    if not (weights.is_file() and info.get("finished") and info.get("settings") == settings):
        return None
    if method_defaults is not None and "method_defaults" in info and info["method_defaults"] != method_defaults:
        changed = sorted(k for k in set(info["method_defaults"]) | set(method_defaults)
                         if info["method_defaults"].get(k) != method_defaults.get(k))
        bc.log(f"{folder}: recorded weights not used: pre-trained with other method defaults ({', '.join(changed)})")
        return None
    return weights


def trainer_folder(results: Path, trainer: str, configuration: str, fold) -> Optional[Path]:
    """nnU-Net's output folder ``results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``, if any."""
    hits = sorted(results.glob(f"*/{trainer}__*__{configuration}/fold_{fold}"))
    return hits[0] if hits else None


def sync(work: Path, record: Path, datasets, configurations, pretrain_trainers, weights_of=()) -> int:
    """Record every evaluated run and every finished pre-training of ``work`` the record lacks or holds older, and
    the weights of the pre-trainings of the methods ``weights_of``; returns how many were written.
    ``configurations``: dataset key -> nnU-Net configuration."""
    written = 0
    for key in datasets:
        cfg = configurations[key]
        for run_dir in sorted((work / key / "arms").glob("*/b*_s*")):
            summary = run_dir / "summary.json"
            if not summary.is_file():
                continue
            rel = run_dir.relative_to(work)
            kept = record / rel / "summary.json"
            if kept.is_file() and kept.read_bytes() == summary.read_bytes() and \
                    (record / rel / "run.json").read_bytes() == (run_dir / "run.json").read_bytes():
                continue
            info = bc.load_json(run_dir / "run.json")
            record_run(work, record, rel, trainer_folder(run_dir.parent / "nnUNet_results", info.get("trainer", ""),
                                                         cfg, info.get("fold")))
            written += 1
        for folder in sorted((work / key / "pretrain").glob("*")):
            trainer = pretrain_trainers.get(folder.name)
            train = trainer_folder(folder / "nnUNet_results", trainer, cfg, "all") if trainer else None
            if train is None or not (train / "checkpoint_final.pth").is_file():
                continue
            rel = folder.relative_to(work)
            kept = record / rel / "run.json"
            same = kept.is_file() and bc.load_json(kept).get("finished") and \
                [p.name for p in training_logs(record / rel)] == [p.name for p in training_logs(train)]
            if not same:  # (replaces the folder: weights of an earlier pre-training go with it)
                record_pretraining(work, record, rel, train, finished=True)
            weights = folder.name in weights_of and not (record / rel / WEIGHTS_FILE).is_file()
            if weights:
                record_weights(train / "checkpoint_final.pth", record / rel)
            written += (not same) or weights
    if written:
        record_commands(work, record)
    return written


def commit(record: Path, message: str) -> bool:
    """``git add`` and ``git commit`` the record folder alone (nothing else staged is committed); False, with the
    reason printed, where that is not possible (not in a git work tree, git failing). Nothing to commit: True."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(record), *args], capture_output=True, text=True)

    if not record.is_dir() or git("rev-parse", "--is-inside-work-tree").returncode != 0:
        bc.log(f"record not committed: {record} is not inside a git work tree")
        return False
    if not git("status", "--porcelain", "--", ".").stdout.strip():
        return True
    done = git("add", "-A", "--", ".").returncode == 0 and \
        git("commit", "-q", "-m", message, "--", ".").returncode == 0
    bc.log(f"record committed: {message}" if done else f"record not committed: git add/commit failed in {record}")
    return done
