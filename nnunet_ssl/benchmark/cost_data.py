"""The cost benchmark's datasets, in ``--work-dir`` (re-used when present).

A labeled downstream dataset of ``--num-cases`` cases of ``--source`` planned with ``nnUNetv2_plan_and_preprocess``;
``--num-cases`` other cases ingested as unlabeled with the downstream plans (``ingest_unlabeled``; the SSL trainers
train on it); and ``--num-cases`` further labeled cases as the ReFs reference (``prepare_reference``), only when a
ReFs trainer is measured. ``--tiny`` derives plans with at most ``--max-features`` features per stage
(``derive_plans``) for all three.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.errors import UserInputError


def split_cases(order: List[str], n: int) -> Tuple[List[str], List[str], List[str], List[str]]:
    """(downstream, unlabeled, reference) cases of ``n`` each from the shuffled ``order``, and notes on re-use."""
    notes = []
    down = order[:n]
    if len(order) >= 2 * n:
        unl = order[n:2 * n]
    else:
        unl = down
        notes.append("the source has fewer than 2x --num-cases cases: the unlabeled dataset re-uses the downstream "
                     "images")
    if len(order) >= 3 * n:
        ref = order[2 * n:3 * n]
    else:
        ref = order[len(order) - n:]
        notes.append("the source has fewer than 3x --num-cases cases: the reference dataset overlaps the others")
    return down, unl, ref, notes


def prepare_data(args, need_reference: bool) -> dict:
    """Make (or re-use) the datasets; their names, the plans to use, the nnU-Net folders and notes."""
    folders = bc.setup_nnunet_folders(args.work_dir)
    work = Path(args.work_dir).resolve()
    source = bc.SourceDataset(args.source)
    n = args.num_cases
    order = bc.seeded_shuffle(source.cases, args.split_seed)
    if len(order) < n:
        raise UserInputError(f"--num-cases {n} but {source.folder} has only {len(order)} labeled cases.")
    down, unl, ref, notes = split_cases(order, n)
    for note in notes:
        bc.log(f"note: {note}")
    did, sid, rid = args.dataset_id, args.dataset_id + 1, args.dataset_id + 2
    down_name = bc.ensure_labeled_raw_dataset(source, folders["nnUNet_raw"], did, "CostDownstream", down)
    bc.ensure_planned(did, down_name, args.configuration, n, args.num_processes,
                      log_file=str(work / "planning.log"))
    base = args.plans
    base_file = Path(folders["nnUNet_preprocessed"]) / down_name / f"{base}.json"
    if not base_file.is_file():
        raise UserInputError(
            f"{base_file} not found: only nnUNetPlans is made automatically. Fix: plan it yourself with the work "
            f"directory's folders (export nnUNet_raw={folders['nnUNet_raw']} nnUNet_preprocessed="
            f"{folders['nnUNet_preprocessed']}; nnUNetv2_plan_and_preprocess -d {did} -pl PLANNER -c "
            f"{args.configuration}) and run again.")
    images = str(work / "inputs" / "unlabeled_images")
    bc.ensure_image_folder(source, images, unl)
    ssl_name = bc.ensure_ingested(images, sid, "CostUnlabeled", down_name, base, args.configuration, len(unl),
                                  args.num_processes)
    ref_name = None
    if need_reference:
        ref_name = bc.ensure_labeled_raw_dataset(source, folders["nnUNet_raw"], rid, "CostReference", ref)
        bc.ensure_reference(ref_name, ssl_name, base, args.configuration, len(ref), args.num_processes)
    plans = base
    if args.tiny:
        plans = bc.tiny_plans_name(base)
        bc.ensure_derived_plans([d for d in (down_name, ssl_name, ref_name) if d], base, plans,
                                max_features=args.max_features, configuration=args.configuration)
        bc.log(f"derived plans {plans} (features capped at {args.max_features}) for the benchmark datasets")
    return {"downstream": down_name, "unlabeled": ssl_name, "reference": ref_name, "plans": plans,
            "folders": folders, "notes": notes, "num_cases": n}
