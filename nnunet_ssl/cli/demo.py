"""``nnunet_ssl demo``: the whole workflow on a built-in synthetic dataset, no data of the user's needed.

Makes ``Dataset990_SynthOrgans`` (few labeled training cases, a labeled test set) and a folder of unlabeled
synthetic volumes in its own nnU-Net folders (``--dir``, default ``./nnunet_ssl_demo``), then runs
``nnunet_ssl workflow``: plan, ingest the unlabeled volumes, pre-train, fine-tune from scratch and from the
checkpoint with the same schedule, predict the test set with ``nnUNetv2_predict`` and print a Dice table.
Sized to take about 10 minutes on 2 CPU cores; ``--epochs-scale`` trades time for quality.
"""
import os

from nnunet_ssl.data.synthetic import make_synthetic_dataset
from nnunet_ssl.cli.workflow import WorkflowConfig, run_workflow

DEMO_ID = 990
DEMO_SSL_ID = 991


def _settings(epochs: int, iters: int, val_iters: int = 2, **extra) -> str:
    values = dict(num_epochs=epochs, num_iterations_per_epoch=iters, num_val_iterations_per_epoch=val_iters, **extra)
    return ",".join(f"{k}={v}" for k, v in values.items())


def run_demo(directory: str = "nnunet_ssl_demo", method: str = "mae", device: str = None, epochs_scale: float = 1.0,
             seed: int = 0) -> dict:
    directory = os.path.abspath(directory)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = os.path.join(directory, var)
        os.makedirs(os.environ[var], exist_ok=True)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    raw = os.environ["nnUNet_raw"]
    paths_file = os.path.join(raw, f"Dataset{DEMO_ID:03d}_SynthOrgans", "dataset.json")
    unlabeled = os.path.join(raw, "SynthOrgans_unlabeled_images")
    if not os.path.isfile(paths_file):
        print(f"Generating the synthetic dataset in {raw} ...", flush=True)
        make_synthetic_dataset(raw, DEMO_ID, "SynthOrgans", n_train=8, n_test=12, n_unlabeled=48,
                               shape=(32, 32, 32), seed=seed)
    folder = os.path.dirname(paths_file)

    def scaled(n):
        return max(1, int(round(n * epochs_scale)))

    cfg = WorkflowConfig(
        downstream=str(DEMO_ID), unlabeled_folder=unlabeled, ssl_dataset_id=DEMO_SSL_ID, method=method,
        configuration="3d_fullres", fold="all", test_images=os.path.join(folder, "imagesTs"),
        test_labels=os.path.join(folder, "labelsTs"), tiny_plans=True, tiny_max_features=16,
        pretrain_settings=_settings(scaled(10), 20, val_iters=1),
        # encoder-only transfer: with this short fine-tuning schedule the reconstruction-trained decoder was a worse
        # start than a random one (README, "Does pre-training help?")
        finetune_settings=_settings(scaled(10), 15, val_iters=1, final_validation=False, load_decoder=False),
        device=device, num_processes=2, disable_tta=True,
        work_dir=os.path.join(directory, "report"))
    return run_workflow(cfg)


def add_demo_arguments(p):
    p.add_argument("--dir", default="nnunet_ssl_demo", help="working folder (nnU-Net folders are created inside)")
    p.add_argument("--method", default="mae", help="pre-training method (mae, gmim, pgl, ideal, refs)")
    p.add_argument("-device", "--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every epoch count (time vs quality)")
    p.add_argument("--seed", type=int, default=0)


def run_demo_from_args(args) -> int:
    run_demo(args.dir, args.method, args.device, args.epochs_scale, args.seed)
    return 0
