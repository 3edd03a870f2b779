"""Command line of the cost benchmark (``scripts/benchmark_cost.py --help``): options, defaults, their checks."""
from __future__ import annotations

import argparse

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.cost_report import BASELINE

DEFAULT_TRAINERS = ["nnUNetTrainer", "MAETrainer", "GMIMTrainer", "PGLTrainer", "IDEALTrainer", "ReFsTrainer",
                    "ReFsTrainer_cosine", "IDEALSemiSupervisedTrainer"]
DEFAULT_OUT = bc.REPO_ROOT / "scripts" / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Per-iteration time and peak memory of every nnunet_ssl trainer vs stock nnUNetTrainer "
                    "(one process, interleaved rounds, medians after warm-up), plus the two-view loader's "
                    "throughput vs PGL's consumption.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--work-dir", default="./benchmark_work",
                   help="own nnU-Net folders (nnUNet_raw/_preprocessed/_results) for the benchmark datasets; "
                        "re-used when present")
    g.add_argument("--source", default=str(bc.DEFAULT_SOURCE), help="labeled nnU-Net raw dataset to take cases from")
    g.add_argument("--num-cases", type=int, default=20,
                   help="cases per dataset: downstream (labeled), unlabeled (other cases) and ReFs reference "
                        "(further cases); cases are re-used when the source has fewer than 3x this")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the case selection")
    g.add_argument("--dataset-id", type=int, default=950,
                   help="downstream dataset id; the unlabeled and reference datasets get the next two ids")
    g.add_argument("-c", "--configuration", default="3d_fullres")
    g.add_argument("-np", "--num-processes", type=int, default=2, help="processes for planning / preprocessing")
    g = p.add_argument_group("what is measured")
    g.add_argument("--plans", default="nnUNetPlans", help="plans identifier of the downstream dataset")
    g.add_argument("--tiny", action="store_true",
                   help="derive '<plans>Tiny' plans with at most 32 features per stage (derive_plans) and use them")
    g.add_argument("--max-features", type=int, default=32, help="feature cap of --tiny")
    g.add_argument("--batch-size", type=int, default=None, help="batch size for all trainers (default: the plans')")
    g.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS,
                   help="trainers to measure (nnUNetTrainer is always added: it is the reference)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    g.add_argument("--compile", action="store_true",
                   help="let nnU-Net torch.compile the networks on a GPU (default: nnUNet_compile=f for all)")
    g = p.add_argument_group("schedule")
    g.add_argument("--rounds", type=int, default=5, help="round-robin passes over the trainers")
    g.add_argument("--steps-per-round", type=int, default=5, help="timed steps per trainer and round")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer before the first round")
    g.add_argument("--prefetch", type=int, default=3, help="distinct batches prefetched per trainer (cycled)")
    g.add_argument("--memory-steps", type=int, default=1,
                   help="CPU only: extra untimed steps per trainer and round with the RSS sampler running")
    g.add_argument("--rss-interval-ms", type=float, default=1.0, help="CPU RSS sampling interval")
    g = p.add_argument_group("two-view loader")
    g.add_argument("--skip-loader", action="store_true", help="skip the loader throughput measurement")
    g.add_argument("--loader-workers", type=int, default=None,
                   help="workers of the augmenter (default: nnUNet_n_proc_DA, else nnU-Net's default for this "
                        "machine)")
    g.add_argument("--loader-batches", type=int, default=20, help="batches timed per loader measurement")
    g.add_argument("--e2e-steps", type=int, default=None,
                   help="PGL steps drawing from the multi-process augmenter (default: --steps-per-round; 0 = skip)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and Markdown results")
    g.add_argument("--fresh", action="store_true", help="discard finished rounds of an earlier run with this tag")
    args = p.parse_args(argv)
    for name in ("num_cases", "rounds", "steps_per_round", "prefetch", "loader_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("warmup", "memory_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    bc.check_dataset_id(args.dataset_id, "--dataset-id")
    bc.check_dataset_id(args.dataset_id + 2, "--dataset-id + 2")
    trainers = list(dict.fromkeys([BASELINE] + list(args.trainers)))
    args.trainers = trainers
    return args
