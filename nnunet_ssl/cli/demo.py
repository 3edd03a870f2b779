"""``nnunet_ssl demo``: the whole workflow on a built-in synthetic dataset, no data of the user's needed.

Makes ``Dataset990_SynthOrgans`` (few labeled training cases, a labeled test set) and a folder of unlabeled
synthetic volumes in its own nnU-Net folders (``--dir``, default ``./nnunet_ssl_demo``), then runs
``nnunet_ssl workflow``: plan, ingest the unlabeled volumes, pre-train, fine-tune from scratch and from the
checkpoint with the same schedule, predict the test set with ``nnUNetv2_predict`` and print a Dice table with a
caption saying what the numbers mean.

Default route: MAE pre-training (the cheapest method per iteration) fine-tuned with
``SSLFinetuneTrainer_decoderWarmup``, the route the project recommends for MAE, GMIM and ReFs checkpoints (their
reconstruction decoder is not transferred, so the decoder first warms up alone on the frozen pre-trained encoder),
with the first encoder stage left at its random initialisation (``reinit_encoder_stages``, :data:`REINIT_STAGES`):
on this data pre-training collapses the early stages' features, and fully transferred checkpoints lost to scratch.
Other methods (``--method``) fine-tune with their recommended route (:func:`recommended_finetune_trainer`).
Sized for 10-17 minutes on 2 free CPU cores (see ``EXPECTED_MINUTES``); ``--epochs-scale`` trades time for quality.
"""
import os

from nnunet_ssl.data.synthetic import make_synthetic_dataset
from nnunet_ssl.cli.workflow import WorkflowConfig, recommended_finetune_trainer, run_workflow

DEMO_ID = 990
DEMO_SSL_ID = 991
DEFAULT_METHOD = "mae"
#: CPU time measured end to end (fresh folder, OMP_NUM_THREADS=1; plan, ingest, MAE 10 x 20 iterations, two
#: fine-tunings 10 x 15, two predictions): 16.5 CPU-minutes before, 10 on 2026-12-02 (14.7 min of wall clock on 2
#: cores shared with a benchmark run); wall time on shared cores grows with their load (80 min at load average 20)
EXPECTED_MINUTES = "about 10-17"
#: encoder stages the demo's fine-tuning keeps at their random initialisation, per method, as measured on the demo's
#: data (docs/benchmarks.md, "Why pre-training lost"): MAE stage 0 reset 0.84 / 0.82 / 0.81 mean Dice against
#: 0.73 / 0.71 / 0.73 fully transferred (scratch 0.77 / 0.78 / 0.82); IDEAL stages 0-1 reset 0.74 / 0.77 against
#: 0.49 / 0.21; with 2 of the 8 labeled cases (label_budget=2, seeds 0 and 1; 2026-12-05) fully transferred IDEAL
#: (its route, the encoder at 0.1x for 150 iterations) scored 0.41 / 0.36 against scratch's 0.67 / 0.76
REINIT_STAGES = {"mae": 1, "ideal": 2}
N_TRAIN, N_TEST, N_UNLABELED = 8, 12, 48
#: labeled training cases the demo's fine-tuning uses (of N_TRAIN; 0 or N_TRAIN: all): few labels are what the
#: plugin is for. Measured with the default route (MAE, stage 0 reset; scripts/demo_label_budget.py, 2026-12-07, one
#: run per label seed): with all 8 labeled cases the arms are level (pretrained 0.78-0.84, scratch 0.77-0.82); with
#: 1 (seeds 0-5) pretrained 0.68-0.78 (mean 0.720) against scratch 0.00-0.76 (mean 0.565), ahead on 4 of 6, scratch
#: learning nothing on one seed; with 2 (seeds 0-2) 0.77-0.78 against 0.41-0.80, ahead on 2 of 3
LABEL_BUDGET = 1


def unlearned_classes(arms: dict, missed: float = 0.05, learned: float = 0.3):
    """``(arm, other arm, class, its Dice, the other's Dice)`` for every class one arm missed (Dice < ``missed``)
    while the other learned it (>= ``learned``)."""
    out = []
    for arm, other in (("pretrained", "scratch"), ("scratch", "pretrained")):
        own, theirs = arms.get(arm, {}).get("dice", {}), arms.get(other, {}).get("dice", {})
        for label, d in own.items():
            if d < missed and theirs.get(label, 0.0) >= learned:
                out.append((arm, other, label, d, theirs[label]))
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def caption(summary: dict, epochs_pre: int, epochs_ft: int, reinit: int = 0, labeled: int = N_TRAIN) -> str:
    """What the demo's numbers mean, in a few honest lines (``labeled``: the labeled cases fine-tuning used)."""
    arms = summary["arms"]
    cases = _count(labeled, "labeled case") + \
        (f" (of the {N_TRAIN} the dataset has: label_budget={labeled})" if labeled < N_TRAIN else "")
    kept = (" (first encoder stage left random)" if reinit == 1 else
            f" (first {reinit} encoder stages left random)" if reinit else "")
    lines = [f"What this shows: {summary['pretrain_trainer']} pre-trained for {_count(epochs_pre, 'short epoch')} on "
             f"{N_UNLABELED} unlabeled synthetic volumes, then fine-tuned on {cases} with "
             f"{arms['pretrained']['trainer']}{kept} ('pretrained'), against the same {epochs_ft}-epoch schedule "
             f"from random weights ('scratch'); Dice on {N_TEST} held-out test cases."]
    if "mean_dice" in arms.get("pretrained", {}) and "mean_dice" in arms.get("scratch", {}):
        diff = arms["pretrained"]["mean_dice"] - arms["scratch"]["mean_dice"]
        lines.append(f"Mean Dice difference pretrained - scratch: {diff:+.3f}.")
    for arm, other, label, own, theirs in unlearned_classes(arms):
        lines.append(f"In this run '{arm}' did not learn class {label} (Dice {own:.2f}; '{other}' {theirs:.2f}): "
                     f"with {_count(epochs_ft, 'short epoch')} a class can switch on late or not at all, so this "
                     f"difference says more about that run than about pre-training. --epochs-scale 3 trains longer.")
    lines.append("A demo-sized CPU run on synthetic data, one run per arm (repeated runs of an arm usually differ "
                 "by up to 0.05, far more when a class is learned late): it shows the pipeline end to end (ingest, "
                 "pre-train, transfer, fine-tune, stock nnUNetv2_predict); it does not measure how much "
                 "pre-training helps on real data - see the README's low-label benchmark for that.")
    return "\n".join(lines)


def _settings(epochs: int, iters: int, val_iters: int = 2, **extra) -> str:
    values = dict(num_epochs=epochs, num_iterations_per_epoch=iters, num_val_iterations_per_epoch=val_iters, **extra)
    return ",".join(f"{k}={v}" for k, v in values.items())


def prepare(directory: str, seed: int = 0) -> None:
    """Point nnU-Net's folders at ``directory`` (created) and generate the synthetic dataset there unless present."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = os.path.join(directory, var)
        os.makedirs(os.environ[var], exist_ok=True)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    raw = os.environ["nnUNet_raw"]
    if not os.path.isfile(os.path.join(raw, f"Dataset{DEMO_ID:03d}_SynthOrgans", "dataset.json")):
        print(f"Generating the synthetic dataset in {raw} ...", flush=True)
        make_synthetic_dataset(raw, DEMO_ID, "SynthOrgans", n_train=N_TRAIN, n_test=N_TEST, n_unlabeled=N_UNLABELED,
                               shape=(32, 32, 32), seed=seed)


def finetune_extra(reinit: int, labeled: int, label_seed: int) -> dict:
    """Fine-tuning settings beyond the schedule: stages kept random, and the label budget where below N_TRAIN (both
    arms: the workflow's scratch arm keeps the schedule and the label budget)."""
    extra = {"reinit_encoder_stages": reinit} if reinit else {}
    if labeled < N_TRAIN:
        extra.update(label_budget=labeled, label_seed=label_seed)
    return extra


def workflow_config(method: str, device: str, epochs_pre: int, epochs_ft: int, extra: dict,
                    finetune_trainer: str = None, work_dir: str = None) -> WorkflowConfig:
    """The demo's workflow (its nnU-Net folders set in the environment): ``extra``: fine-tuning settings added to
    the schedule (``reinit_encoder_stages``, ``label_budget``, ...)."""
    raw = os.environ["nnUNet_raw"]
    folder = os.path.join(raw, f"Dataset{DEMO_ID:03d}_SynthOrgans")
    return WorkflowConfig(
        downstream=str(DEMO_ID), unlabeled_folder=os.path.join(raw, "SynthOrgans_unlabeled_images"),
        ssl_dataset_id=DEMO_SSL_ID, method=method, configuration="3d_fullres", fold="all",
        test_images=os.path.join(folder, "imagesTs"), test_labels=os.path.join(folder, "labelsTs"), tiny_plans=True,
        tiny_max_features=16, pretrain_settings=_settings(epochs_pre, 20, val_iters=1),
        # the decoder follows the checkpoint's recommendation (MAE: left random, then warmed up alone)
        finetune_settings=_settings(epochs_ft, 15, val_iters=1, final_validation=False, **extra),
        device=device, num_processes=2, disable_tta=True, finetune_trainer=finetune_trainer, work_dir=work_dir)


def run_demo(directory: str = "nnunet_ssl_demo", method: str = DEFAULT_METHOD, device: str = None,
             epochs_scale: float = 1.0, seed: int = 0, finetune_trainer: str = None,
             reinit_encoder_stages: int = None, label_budget: int = LABEL_BUDGET) -> dict:
    """Run the demo in ``directory`` (nnU-Net folders inside); return the workflow summary. ``label_budget``:
    labeled cases fine-tuning uses (chosen with ``seed``; 0: all)."""
    directory = os.path.abspath(directory)
    prepare(directory, seed)
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"

    def scaled(n):
        return max(1, int(round(n * epochs_scale)))

    epochs_pre, epochs_ft = scaled(10), scaled(10)
    reinit = REINIT_STAGES.get(method.lower(), 0) if reinit_encoder_stages is None else reinit_encoder_stages
    labeled = label_budget if 0 < label_budget < N_TRAIN else N_TRAIN
    extra = finetune_extra(reinit, labeled, seed)
    cfg = workflow_config(method, device, epochs_pre, epochs_ft, extra, finetune_trainer,
                          os.path.join(directory, "report"))
    summary = run_workflow(cfg)
    text = caption(summary, epochs_pre, epochs_ft, reinit, labeled)
    print("\n" + text)
    with open(os.path.join(cfg.work_dir, "workflow_summary.md"), "a") as f:
        f.write("\n" + text + "\n")
    return summary


def _budget(text: str) -> int:
    import argparse
    if not text.strip().isdigit() or int(text) > N_TRAIN:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of labeled cases from 0 to {N_TRAIN} (the "
                                         f"synthetic dataset has {N_TRAIN}; 0: all)")
    return int(text)


def add_demo_arguments(p):
    p.add_argument("--dir", default="nnunet_ssl_demo",
                   help="working folder; nnU-Net folders are created inside (default: ./nnunet_ssl_demo)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"pre-training method: mae, gmim, pgl, ideal, refs (default: {DEFAULT_METHOD})")
    p.add_argument("--finetune-trainer", default=None,
                   help=f"fine-tuning trainer (default: the method's recommended route, "
                        f"{recommended_finetune_trainer(DEFAULT_METHOD)} for {DEFAULT_METHOD})")
    p.add_argument("--reinit-encoder-stages", type=int, default=None, metavar="N",
                   help="encoder stages the fine-tuning keeps at their random initialisation (default: "
                        f"{REINIT_STAGES.get(DEFAULT_METHOD, 0)} for {DEFAULT_METHOD}; 0 transfers the whole encoder)")
    p.add_argument("--label-budget", type=_budget, default=LABEL_BUDGET, metavar="N",
                   help=f"labeled cases fine-tuning uses, of the {N_TRAIN} the synthetic dataset has (default: "
                        f"{LABEL_BUDGET}: few labels, where pre-training is meant to help; 0: all {N_TRAIN})")
    p.add_argument("-device", "--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--epochs-scale", type=float, default=1.0,
                   help="multiply every epoch count: more time, better numbers (default: 1.0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic dataset and of the labeled cases' choice (default: 0)")


def run_demo_from_args(args) -> int:
    run_demo(args.dir, args.method, args.device, args.epochs_scale, args.seed, args.finetune_trainer,
             args.reinit_encoder_stages, args.label_budget)
    return 0
