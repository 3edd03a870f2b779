"""``nnunet_ssl workflow``: plan -> ingest -> pre-train -> fine-tune -> predict -> evaluate, with stock commands.

Every step calls the stock nnU-Net command a user would type (``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_evaluate_simple``) plus ``nnunet_ssl ingest``. A step whose
result already exists is skipped, so an interrupted workflow continues where it stopped when run again.

The comparison it ends with: the same fine-tuning schedule from scratch (``SSLScratchTrainer``) and from the
pre-trained checkpoint (``SSLFinetuneTrainer``), Dice per class on the test images.
"""
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from nnunet_ssl.cli.commands import run_nnunet
from nnunet_ssl.errors import UserInputError
from nnunet_ssl.paths import dataset_name_from_id, require_env_folder
from nnunet_ssl.trainer_names import (FINETUNE_TRAINER, METHOD_TRAINERS, PRETRAINED_ENV,  # noqa: F401
                                      SCRATCH_TRAINER, SETTINGS_ENV)


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

    @property
    def pretrain_trainer(self) -> str:
        return METHOD_TRAINERS.get(self.method.lower(), self.method)


def _labels_of(dataset_name: str) -> List[int]:
    with open(os.path.join(require_env_folder("nnUNet_preprocessed"), dataset_name, "dataset.json")) as f:
        labels = json.load(f)["labels"]
    return sorted(int(v) for k, v in labels.items() if k != "background" and not isinstance(v, list) and int(v) > 0)


def _dataset_exists_preprocessed(name: str, plans: str) -> bool:
    return os.path.isfile(os.path.join(require_env_folder("nnUNet_preprocessed"), name, plans + ".json"))


def run_workflow(cfg: WorkflowConfig) -> dict:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        require_env_folder(var)
    t0 = time.time()
    downstream = dataset_name_from_id(cfg.downstream)
    env_base = dict(cfg.extra_env)

    # 1. plan the downstream dataset (skipped if planned)
    if not _dataset_exists_preprocessed(downstream, "nnUNetPlans"):
        run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", downstream.split("_")[0][7:], "-c", cfg.configuration,
                                                    "-np", cfg.num_processes], env=env_base)
    plans = cfg.plans
    if cfg.tiny_plans:
        from nnunet_ssl.data.plans_tools import derive_plans
        plans = "nnUNetPlansTiny"
        if not _dataset_exists_preprocessed(downstream, plans):
            derive_plans(downstream, "nnUNetPlans", plans, max_features=cfg.tiny_max_features, batch_size=2)

    # 2. ingest the unlabeled images with the downstream plans
    try:
        ssl_name = dataset_name_from_id(cfg.ssl_dataset_id)
    except UserInputError:
        ssl_name = None
    if ssl_name is None or not _dataset_exists_preprocessed(ssl_name, plans):
        if not cfg.unlabeled_folder:
            raise UserInputError(f"Dataset {cfg.ssl_dataset_id} does not exist yet: give --unlabeled FOLDER.")
        from nnunet_ssl.data.ingest import ingest_unlabeled
        report = ingest_unlabeled(cfg.unlabeled_folder, cfg.ssl_dataset_id, f"{downstream.split('_', 1)[1]}Unlabeled",
                                  downstream, plans_identifier=plans, configurations=[cfg.configuration],
                                  num_processes=cfg.num_processes)
        ssl_name = report.dataset_name

    results = require_env_folder("nnUNet_results")
    # 3. pre-train
    trainer = cfg.pretrain_trainer
    pre_dir = os.path.join(results, ssl_name, f"{trainer}__{plans}__{cfg.configuration}", "fold_all")
    ckpt = os.path.join(pre_dir, "checkpoint_final.pth")
    if not os.path.isfile(ckpt):
        cont = ["--c"] if os.path.isfile(os.path.join(pre_dir, "checkpoint_latest.pth")) else []
        run_nnunet("nnUNetv2_train", [ssl_name, cfg.configuration, "all", "-tr", trainer, "-p", plans,
                                      "-device", cfg.device] + cont,
                   env=dict(env_base, **{SETTINGS_ENV: cfg.pretrain_settings}))

    # 4. fine-tune from the checkpoint, and the same schedule from scratch
    arms = {"pretrained": (FINETUNE_TRAINER, {PRETRAINED_ENV: ckpt})}
    if cfg.baseline:
        arms["scratch"] = (SCRATCH_TRAINER, {})
    work = cfg.work_dir or os.path.join(results, "nnunet_ssl_workflow", f"{downstream}__{trainer}__{plans}")
    os.makedirs(work, exist_ok=True)
    summary = {"downstream": downstream, "ssl_dataset": ssl_name, "pretrain_trainer": trainer, "plans": plans,
               "configuration": cfg.configuration, "fold": cfg.fold, "checkpoint": ckpt, "arms": {}}
    for arm, (ft_trainer, arm_env) in arms.items():
        out_dir = os.path.join(results, downstream, f"{ft_trainer}__{plans}__{cfg.configuration}",
                               f"fold_{cfg.fold}")
        if not os.path.isfile(os.path.join(out_dir, "checkpoint_final.pth")):
            cont = ["--c"] if os.path.isfile(os.path.join(out_dir, "checkpoint_latest.pth")) else []
            env = dict(env_base, **arm_env, **{SETTINGS_ENV: cfg.finetune_settings})
            if cont:
                env.pop(PRETRAINED_ENV, None)
            run_nnunet("nnUNetv2_train", [downstream, cfg.configuration, cfg.fold, "-tr", ft_trainer, "-p", plans,
                                          "-device", cfg.device] + cont, env=env)
        arm_summary = {"trainer": ft_trainer, "output_folder": out_dir}
        # 5. predict the test images and 6. evaluate
        if cfg.test_images:
            pred = os.path.join(work, f"predictions_{arm}")
            args = ["-i", cfg.test_images, "-o", pred, "-d", downstream, "-c", cfg.configuration, "-f", cfg.fold,
                    "-tr", ft_trainer, "-p", plans, "-device", cfg.device, "-npp", "1", "-nps", "1"]
            run_nnunet("nnUNetv2_predict", args + (["--disable_tta"] if cfg.disable_tta else []), env=env_base)
            if cfg.test_labels:
                summary_file = os.path.join(pred, "summary.json")
                run_nnunet("nnUNetv2_evaluate_simple", [cfg.test_labels, pred, "-l", *_labels_of(downstream),
                                                        "-o", summary_file, "-np", 1], env=env_base)
                with open(summary_file) as f:
                    metrics = json.load(f)
                arm_summary["dice"] = {k: v["Dice"] for k, v in metrics["mean"].items()}
                arm_summary["mean_dice"] = metrics["foreground_mean"]["Dice"]
        else:
            val = os.path.join(out_dir, "validation", "summary.json")
            if os.path.isfile(val):
                with open(val) as f:
                    metrics = json.load(f)
                arm_summary["dice"] = {k: v["Dice"] for k, v in metrics["mean"].items()}
                arm_summary["mean_dice"] = metrics["foreground_mean"]["Dice"]
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
    p.add_argument("--unlabeled", default=None, help="folder of unlabeled images to ingest")
    p.add_argument("--ssl-id", type=int, required=True, help="dataset id for the ingested unlabeled dataset")
    p.add_argument("--method", default="mae", help=f"{', '.join(METHOD_TRAINERS)} or a trainer class name")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--test-images", default=None)
    p.add_argument("--test-labels", default=None)
    p.add_argument("--tiny-plans", action="store_true", help="cap features at 32 and batch at 2 (CPU runs)")
    p.add_argument("--pretrain-settings", default="", help="NNUNET_SSL_SETTINGS for pre-training")
    p.add_argument("--finetune-settings", default="", help="NNUNET_SSL_SETTINGS for both fine-tuning runs")
    p.add_argument("--no-baseline", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("-device", "--device", default="cuda")
    p.add_argument("-np", "--num-processes", type=int, default=2)
    p.add_argument("--disable-tta", action="store_true")
    p.add_argument("--work-dir", default=None)


def run_workflow_from_args(args) -> int:
    cfg = WorkflowConfig(downstream=args.downstream, unlabeled_folder=args.unlabeled, ssl_dataset_id=args.ssl_id,
                         method=args.method, configuration=args.configuration, plans=args.plans, fold=args.fold,
                         test_images=args.test_images, test_labels=args.test_labels, tiny_plans=args.tiny_plans,
                         pretrain_settings=args.pretrain_settings, finetune_settings=args.finetune_settings,
                         baseline=not args.no_baseline, device=args.device, num_processes=args.num_processes,
                         work_dir=args.work_dir, disable_tta=args.disable_tta)
    run_workflow(cfg)
    return 0
