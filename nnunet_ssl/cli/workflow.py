"""``nnunet_ssl workflow``: plan -> ingest -> pre-train -> fine-tune -> predict -> evaluate, with stock commands.

Every step calls the stock nnU-Net command a user would type (``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_evaluate_simple``) plus ``nnunet_ssl ingest``. A step whose
result already exists is skipped, so an interrupted workflow continues where it stopped when run again.

Run keys: a step may be skipped only when everything that determines it is unchanged. Every training run
(pre-training, each fine-tuning arm) therefore gets its own ``nnUNet_results`` folder,
``<nnUNet_results>/nnunet_ssl_runs/<kind>-<trainer>-<key>``, where ``key`` is a hash of its inputs (trainer,
dataset, plans, configuration, fold, settings - which carry the label budget and seed - and, for fine-tuning, the
content of the pre-trained checkpoint). The inputs are written next to the run (``run_inputs.json``); a different
method, checkpoint, plans or settings gives a new folder instead of reusing an old run. The unlabeled dataset
records the folder it was ingested from and a different folder for the same id is refused, naming both.

The comparison it ends with: the same fine-tuning schedule from scratch (``SSLScratchTrainer``) and from the
pre-trained checkpoint (by default the route recommended for the method, :func:`recommended_finetune_trainer`),
Dice per class on the test images.
"""
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from nnunet_ssl.cli.commands import run_nnunet
from nnunet_ssl.errors import UserInputError
from nnunet_ssl.paths import dataset_name_from_id, require_env_folder
from nnunet_ssl.settings import settings_items
from nnunet_ssl.trainer_names import (FINETUNE_TRAINER, METHOD_TRAINERS, PRETRAINED_ENV,  # noqa: F401
                                      PRETRAINING_DECODER_TRANSFERS, SCRATCH_TRAINER, SETTINGS_ENV)

#: fine-tuning route for checkpoints that transfer the encoder only: the decoder warms up alone on the frozen encoder
#: first, then the whole net trains at nnU-Net's rate (README, "Which fine-tuning route")
DECODER_WARMUP_TRAINER = FINETUNE_TRAINER + "_decoderWarmup"
SLOW_ENCODER_TRAINER = FINETUNE_TRAINER + "_decoderWarmupSlowEncoder"
RUNS_FOLDER = "nnunet_ssl_runs"
RUN_INPUTS_FILE = "run_inputs.json"
#: per-key lines of the weight-transfer report: in the training log file, not on the console
_TRANSFER_DETAIL = re.compile(r"^ {2}(loaded|adapted|skipped|unused) +\S")


def recommended_finetune_trainer(method: str) -> str:
    """The fine-tuning trainer the project recommends for checkpoints of ``method`` (a name of
    :data:`METHOD_TRAINERS` or a pre-training trainer class), from what its checkpoints transfer
    (:data:`PRETRAINING_DECODER_TRANSFERS`, the trainer's ``decoder_transfers``): the encoder only (MAE, GMIM, IDEAL
    since its route check of 2026-12-07, ReFs on those) -> ``SSLFinetuneTrainer_decoderWarmup`` (the random decoder
    warms up alone first, then the whole net at nnU-Net's rate); encoder and decoder (PGL, ReFs on PGL: the decoder
    stages down to 1/4 of the input resolution are trained) -> ``SSLFinetuneTrainer_decoderWarmupSlowEncoder`` (the
    same warm-up, then the encoder at 0.1x); any other trainer -> ``SSLFinetuneTrainer``."""
    trainer = METHOD_TRAINERS.get(method.lower(), method)
    transfers = PRETRAINING_DECODER_TRANSFERS.get(trainer)
    if transfers is None:
        return FINETUNE_TRAINER
    return SLOW_ENCODER_TRAINER if transfers else DECODER_WARMUP_TRAINER


def run_key(inputs: dict) -> str:
    """Short stable hash of a run's inputs (a JSON-serialisable dict)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: str) -> str:
    """sha256 of a file's content (what a fine-tuning run's key records of its checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_fingerprint(folder: str) -> dict:
    """A folder's path and a hash of its files' names, sizes and modification times: changes when a file is added,
    removed or rewritten."""
    folder = os.path.abspath(folder)
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, name))
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"folder": folder, "files_sha256": h.hexdigest()[:16]}


def differences(recorded: dict, current: dict) -> List[str]:
    """``name: recorded -> current`` for every input that differs."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(recorded) | set(current))
            if recorded.get(k) != current.get(k)]


def run_root(results: str, kind: str, trainer: str, inputs: dict) -> str:
    """The ``nnUNet_results`` folder of one run, keyed by its inputs; records them on first use and refuses a folder
    whose recorded inputs differ (a hash collision or a hand-edited folder), naming the difference."""
    root = os.path.join(results, RUNS_FOLDER, f"{kind}-{trainer}-{run_key(inputs)}")
    os.makedirs(root, exist_ok=True)
    record = os.path.join(root, RUN_INPUTS_FILE)
    if os.path.isfile(record):
        with open(record) as f:
            recorded = json.load(f)
        diff = differences(recorded, json.loads(json.dumps(inputs, default=str)))
        if diff:
            raise UserInputError(f"{root} holds a run with other inputs ({'; '.join(diff)}); remove the folder or "
                                 f"choose another nnUNet_results.")
    else:
        with open(record, "w") as f:
            json.dump(inputs, f, indent=2, sort_keys=True, default=str)
    return root


def _progress(message: str) -> None:
    print(f"nnunet_ssl workflow: {message}", flush=True)


def _console_line(line: str) -> bool:
    return not _TRANSFER_DETAIL.match(line)


@dataclass
class WorkflowConfig:
    downstream: str
    unlabeled_folder: Optional[str]
    ssl_dataset_id: int
    method: str = "mae"
    configuration: str = "3d_fullres"
    plans: str = "nnUNetPlans"
    fold: str = "0"
    test_images: Optional[str] = None
    test_labels: Optional[str] = None
    tiny_plans: bool = False
    tiny_max_features: int = 32
    pretrain_settings: str = ""
    finetune_settings: str = ""
    baseline: bool = True
    device: str = "cuda"
    num_processes: int = 2
    work_dir: Optional[str] = None
    disable_tta: bool = False
    extra_env: Dict[str, str] = field(default_factory=dict)
    finetune_trainer: Optional[str] = None  # None: recommended_finetune_trainer(method)

    @property
    def pretrain_trainer(self) -> str:
        return METHOD_TRAINERS.get(self.method.lower(), self.method)

    @property
    def finetune_route(self) -> str:
        return self.finetune_trainer or recommended_finetune_trainer(self.method)


def _labels_of(dataset_name: str) -> List[int]:
    with open(os.path.join(require_env_folder("nnUNet_preprocessed"), dataset_name, "dataset.json")) as f:
        labels = json.load(f)["labels"]
    return sorted(int(v) for k, v in labels.items() if k != "background" and not isinstance(v, list) and int(v) > 0)


def _dataset_exists_preprocessed(name: str, plans: str) -> bool:
    return os.path.isfile(os.path.join(require_env_folder("nnUNet_preprocessed"), name, plans + ".json"))


def _plan_downstream(cfg: WorkflowConfig, downstream: str, env: Dict[str, str]) -> str:
    """Plan (and preprocess) the downstream dataset with ``cfg.plans``; return the plans the runs use."""
    dataset_id = downstream.split("_")[0][7:]
    if not _dataset_exists_preprocessed(downstream, cfg.plans):
        if cfg.plans != "nnUNetPlans":
            raise UserInputError(
                f"Plans '{cfg.plans}' not found for {downstream} in nnUNet_preprocessed. Make them first (for example "
                f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c {cfg.configuration} -pl nnUNetPlannerResEncM "
                f"gives nnUNetResEncUNetMPlans), or leave -p at its default nnUNetPlans.")
        run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", dataset_id, "-c", cfg.configuration,
                                                    "-np", cfg.num_processes], env=env)
    else:
        _progress(f"{downstream}: planned and preprocessed already ({cfg.plans}), re-used")
    if not cfg.tiny_plans:
        return cfg.plans
    from nnunet_ssl.data.plans_tools import derive_plans
    tiny = f"{cfg.plans}Tiny{cfg.tiny_max_features}"
    if not _dataset_exists_preprocessed(downstream, tiny):
        derive_plans(downstream, cfg.plans, tiny, max_features=cfg.tiny_max_features, batch_size=2)
    return tiny


def _ingest(cfg: WorkflowConfig, downstream: str, plans: str, results: str) -> str:
    """The unlabeled dataset, ingested with the downstream plans (skipped when done from the same folder)."""
    try:
        ssl_name = dataset_name_from_id(cfg.ssl_dataset_id)
    except UserInputError:
        ssl_name = None
    source = os.path.abspath(cfg.unlabeled_folder) if cfg.unlabeled_folder else None
    record_file = os.path.join(results, RUNS_FOLDER, f"ingest-{cfg.ssl_dataset_id}.json")
    recorded = None
    if os.path.isfile(record_file):
        with open(record_file) as f:
            recorded = json.load(f)
    current = {"unlabeled_folder": source, "downstream": downstream}
    if recorded is not None and source is not None:
        diff = differences(recorded, current)
        if diff:
            raise UserInputError(
                f"Dataset {cfg.ssl_dataset_id} was ingested from other inputs ({'; '.join(diff)}). Use another "
                f"--ssl-id for these images, or delete {ssl_name} (nnUNet_raw and nnUNet_preprocessed) and "
                f"{record_file}.")
    if ssl_name is None or not _dataset_exists_preprocessed(ssl_name, plans):
        if not cfg.unlabeled_folder:
            raise UserInputError(f"Dataset {cfg.ssl_dataset_id} does not exist yet: give --unlabeled FOLDER.")
        from nnunet_ssl.data.ingest import ingest_unlabeled
        report = ingest_unlabeled(cfg.unlabeled_folder, cfg.ssl_dataset_id, f"{downstream.split('_', 1)[1]}Unlabeled",
                                  downstream, plans_identifier=plans, configurations=[cfg.configuration],
                                  num_processes=cfg.num_processes)
        ssl_name = report.dataset_name
        if recorded is None:
            os.makedirs(os.path.dirname(record_file), exist_ok=True)
            with open(record_file, "w") as f:
                json.dump(current, f, indent=2)
    else:
        _progress(f"{ssl_name}: unlabeled images ingested already with plans {plans}, re-used")
    return ssl_name


def _train(dataset: str, cfg: WorkflowConfig, fold: str, trainer: str, plans: str, root: str,
           env: Dict[str, str]) -> str:
    """``nnUNetv2_train`` with ``nnUNet_results=root`` unless its final checkpoint exists; return the fold folder."""
    out_dir = os.path.join(root, dataset, f"{trainer}__{plans}__{cfg.configuration}", f"fold_{fold}")
    if os.path.isfile(os.path.join(out_dir, "checkpoint_final.pth")):
        _progress(f"{trainer} on {dataset}, fold {fold}: trained already, re-used ({out_dir})")
    else:
        env = dict(env, nnUNet_results=root)
        cont = []
        if os.path.isfile(os.path.join(out_dir, "checkpoint_latest.pth")):
            cont = ["--c"]
            env.pop(PRETRAINED_ENV, None)
        run_nnunet("nnUNetv2_train", [dataset, cfg.configuration, fold, "-tr", trainer, "-p", plans,
                                      "-device", cfg.device] + cont, env=env, console_filter=_console_line)
    return out_dir


#: fine-tuning settings about the pre-trained start; the from-scratch arm trains without them (a slower or frozen
#: random encoder would not be stock nnU-Net's schedule)
START_SETTINGS = ("reinit_encoder_stages", "load_decoder", "encoder_lr_factor", "warmup_duration_decoder")


def scratch_settings(settings: str) -> str:
    """``settings`` (``NNUNET_SSL_SETTINGS`` text) without the :data:`START_SETTINGS`: the schedule both arms share."""
    return ",".join(i for i in settings_items(settings) if i.split("=", 1)[0].strip() not in START_SETTINGS)


#: written into a predictions folder once its predictions (and their evaluation) are complete: what made them
PREDICTIONS_RECORD = "predicted_with.json"


def _predictions_current(folder: str, made_by: dict, need_summary: bool) -> bool:
    """Whether ``folder`` holds complete predictions (and their evaluation, where needed) of the same model,
    checkpoint, test images and options as ``made_by``."""
    record = os.path.join(folder, PREDICTIONS_RECORD)
    if not os.path.isfile(record) or (need_summary and not os.path.isfile(os.path.join(folder, "summary.json"))):
        return False
    try:
        with open(record) as f:
            return json.load(f) == made_by
    except ValueError:  # a record cut short: predict again
        return False


def _clear_predictions(folder: str) -> None:
    """Empty a predictions folder the workflow wrote before (it holds our record), so that no prediction of another
    model or test set survives beside the new ones; a folder without the record is left to nnU-Net."""
    if os.path.isfile(os.path.join(folder, PREDICTIONS_RECORD)):
        import shutil
        shutil.rmtree(folder)


def _dice_of(summary_file: str) -> dict:
    with open(summary_file) as f:
        metrics = json.load(f)
    return {"dice": {k: v["Dice"] for k, v in metrics["mean"].items()},
            "mean_dice": metrics["foreground_mean"]["Dice"]}


def run_workflow(cfg: WorkflowConfig) -> dict:
    """Run (or continue) the workflow of ``cfg``; return the summary (also written to the work folder)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        require_env_folder(var)
    t0 = time.time()
    downstream = dataset_name_from_id(cfg.downstream)
    env_base = dict(cfg.extra_env)
    results = require_env_folder("nnUNet_results")

    # 1. plan the downstream dataset, 2. ingest the unlabeled images with its plans
    plans = _plan_downstream(cfg, downstream, env_base)
    ssl_name = _ingest(cfg, downstream, plans, results)

    # 3. pre-train (keyed by its inputs)
    trainer = cfg.pretrain_trainer
    pre_inputs = {"step": "pretrain", "trainer": trainer, "dataset": ssl_name, "plans": plans,
                  "configuration": cfg.configuration, "fold": "all", "settings": cfg.pretrain_settings}
    pre_root = run_root(results, "pretrain", trainer, pre_inputs)
    pre_dir = _train(ssl_name, cfg, "all", trainer, plans, pre_root,
                     dict(env_base, **{SETTINGS_ENV: cfg.pretrain_settings}))
    ckpt = os.path.join(pre_dir, "checkpoint_final.pth")

    # 4. fine-tune from the checkpoint, and the same schedule from scratch (each keyed by its inputs)
    arms = {"pretrained": (cfg.finetune_route, {PRETRAINED_ENV: ckpt}, cfg.finetune_settings)}
    if cfg.baseline:
        arms["scratch"] = (SCRATCH_TRAINER, {}, scratch_settings(cfg.finetune_settings))
    work = cfg.work_dir or os.path.join(results, "nnunet_ssl_workflow", f"{downstream}__{trainer}__{plans}")
    os.makedirs(work, exist_ok=True)
    summary = {"downstream": downstream, "ssl_dataset": ssl_name, "pretrain_trainer": trainer, "plans": plans,
               "configuration": cfg.configuration, "fold": cfg.fold, "checkpoint": ckpt,
               "finetune_settings": cfg.finetune_settings, "arms": {}}
    for arm, (ft_trainer, arm_env, settings) in arms.items():
        ft_inputs = {"step": "finetune", "trainer": ft_trainer, "dataset": downstream, "plans": plans,
                     "configuration": cfg.configuration, "fold": cfg.fold, "settings": settings}
        if PRETRAINED_ENV in arm_env:
            ft_inputs["checkpoint_sha256"] = file_digest(ckpt)
        ft_root = run_root(results, "finetune", ft_trainer, ft_inputs)
        out_dir = _train(downstream, cfg, cfg.fold, ft_trainer, plans, ft_root,
                         dict(env_base, **arm_env, **{SETTINGS_ENV: settings}))
        arm_summary = {"trainer": ft_trainer, "output_folder": out_dir, "nnUNet_results": ft_root,
                       "settings": settings}
        # 5. predict the test images and 6. evaluate
        if cfg.test_images:
            pred = os.path.join(work, f"predictions_{arm}")
            summary_file = os.path.join(pred, "summary.json")
            final = os.path.join(out_dir, "checkpoint_final.pth")
            made_by = {"model": out_dir, "checkpoint_sha256": file_digest(final), "disable_tta": cfg.disable_tta,
                       "test_images": folder_fingerprint(cfg.test_images),
                       "test_labels": folder_fingerprint(cfg.test_labels) if cfg.test_labels else None}
            if _predictions_current(pred, made_by, need_summary=bool(cfg.test_labels)):
                _progress(f"{arm}: test predictions{' and their Dice' if cfg.test_labels else ''} of this model "
                          f"done already, re-used ({pred})")
            else:
                _clear_predictions(pred)
                args = ["-i", cfg.test_images, "-o", pred, "-d", downstream, "-c", cfg.configuration, "-f",
                        cfg.fold, "-tr", ft_trainer, "-p", plans, "-device", cfg.device, "-npp", "1", "-nps", "1"]
                run_nnunet("nnUNetv2_predict", args + (["--disable_tta"] if cfg.disable_tta else []),
                           env=dict(env_base, nnUNet_results=ft_root))
                if cfg.test_labels:
                    run_nnunet("nnUNetv2_evaluate_simple", [cfg.test_labels, pred, "-l", *_labels_of(downstream),
                                                            "-o", summary_file, "-np", 1], env=env_base)
                with open(os.path.join(pred, PREDICTIONS_RECORD), "w") as f:
                    json.dump(made_by, f, indent=2)
            if cfg.test_labels:
                arm_summary.update(_dice_of(summary_file))
        else:
            val = os.path.join(out_dir, "validation", "summary.json")
            if os.path.isfile(val):
                arm_summary.update(_dice_of(val))
        summary["arms"][arm] = arm_summary
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    with open(os.path.join(work, "workflow_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table = dice_table(summary)
    with open(os.path.join(work, "workflow_summary.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"\nSummary written to {work}")
    return summary


def dice_table(summary: dict) -> str:
    arms = summary["arms"]
    classes = sorted({c for a in arms.values() for c in a.get("dice", {})}, key=lambda c: int(c))
    head = "| fine-tuning | " + " | ".join(f"Dice class {c}" for c in classes) + " | mean Dice |"
    lines = [f"Pre-training: {summary['pretrain_trainer']} on {summary['ssl_dataset']}; "
             f"fine-tuning on {summary['downstream']} ({summary['configuration']}, plans {summary['plans']})", "",
             head, "|" + "---|" * (len(classes) + 2)]
    for arm, a in arms.items():
        dice = a.get("dice", {})
        cells = [f"{dice[c]:.4f}" if c in dice else "-" for c in classes]
        mean = f"{a['mean_dice']:.4f}" if "mean_dice" in a else "-"
        lines.append(f"| {arm} ({a['trainer']}) | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def add_workflow_arguments(p):
    p.add_argument("--downstream", required=True, help="labeled nnU-Net dataset (id or name) in nnUNet_raw")
    p.add_argument("--unlabeled", default=None,
                   help="folder of unlabeled images to ingest (needed the first time for a new --ssl-id)")
    p.add_argument("--ssl-id", type=int, required=True, help="dataset id for the ingested unlabeled dataset")
    p.add_argument("--method", default="mae",
                   help=f"pre-training method ({', '.join(METHOD_TRAINERS)}) or a pre-training trainer class name "
                        f"(default: mae)")
    p.add_argument("--finetune-trainer", default=None,
                   help=f"fine-tuning trainer of the pre-trained arm (default: the method's route: "
                        f"{DECODER_WARMUP_TRAINER} for encoder-only transfers (mae, gmim, ideal, refs), "
                        f"{SLOW_ENCODER_TRAINER} for pgl)")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="nnU-Net configuration (default: 3d_fullres)")
    p.add_argument("-p", "--plans", default="nnUNetPlans",
                   help="plans identifier; other than nnUNetPlans it must exist already (default: nnUNetPlans)")
    p.add_argument("-f", "--fold", default="0", help="fold to fine-tune, 0-4 or all (default: 0)")
    p.add_argument("--test-images", default=None,
                   help="folder of test images (nnU-Net naming) to predict; without it the fold's validation Dice "
                        "is reported")
    p.add_argument("--test-labels", default=None, help="folder of the test labels, to evaluate the predictions")
    p.add_argument("--tiny-plans", action="store_true",
                   help="derive plans with features capped at 32 and batch 2 (CPU runs)")
    p.add_argument("--pretrain-settings", default="", help="NNUNET_SSL_SETTINGS for pre-training (name=value,...)")
    p.add_argument("--finetune-settings", default="",
                   help="NNUNET_SSL_SETTINGS for both fine-tuning runs, e.g. label_budget=10,label_seed=0 "
                        f"(the from-scratch run leaves out {', '.join(START_SETTINGS)})")
    p.add_argument("--no-baseline", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("-device", "--device", default="cuda", help="cuda, cpu or mps (default: cuda)")
    p.add_argument("-np", "--num-processes", type=int, default=2,
                   help="processes for planning, preprocessing and ingestion (default: 2)")
    p.add_argument("--disable-tta", action="store_true", help="predict without test-time mirroring (faster)")
    p.add_argument("--work-dir", default=None,
                   help="folder for predictions and the summary (default: inside nnUNet_results)")


def run_workflow_from_args(args) -> int:
    cfg = WorkflowConfig(downstream=args.downstream, unlabeled_folder=args.unlabeled, ssl_dataset_id=args.ssl_id,
                         method=args.method, configuration=args.configuration, plans=args.plans, fold=args.fold,
                         test_images=args.test_images, test_labels=args.test_labels, tiny_plans=args.tiny_plans,
                         pretrain_settings=args.pretrain_settings, finetune_settings=args.finetune_settings,
                         baseline=not args.no_baseline, device=args.device, num_processes=args.num_processes,
                         work_dir=args.work_dir, disable_tta=args.disable_tta, finetune_trainer=args.finetune_trainer)
    run_workflow(cfg)
    return 0
