"""The ``nnunet_ssl`` command: doctor, ingest, finetune, workflow, demo.

User-fixable problems are printed as one message without a traceback (exit status 2).
"""
import argparse
import os
import sys

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.trainer_names import FINETUNE_TRAINER


def _cmd_doctor(args) -> int:
    from nnunet_ssl.cli.doctor import run_doctor
    return run_doctor()


def _cmd_ingest(args) -> int:
    from nnunet_ssl.data.ingest import run_ingest_from_args
    run_ingest_from_args(args)
    return 0


def _cmd_finetune(args) -> int:
    from nnunet_ssl.weights.checkpoint import load_checkpoint_file
    from nnunet_ssl.cli.commands import run_nnunet
    from nnunet_ssl.trainer_names import PRETRAINED_ENV
    load_checkpoint_file(args.weights)  # fail early, with a clear message, on a bad file
    cmd = [args.dataset, args.configuration, args.fold, "-tr", args.trainer, "-p", args.plans]
    cmd += ["-device", args.device] + (["--c"] if args.c else []) + (["--npz"] if args.npz else [])
    run_nnunet("nnUNetv2_train", cmd, env={PRETRAINED_ENV: os.path.abspath(args.weights)})
    return 0


def _cmd_prepare_reference(args) -> int:
    from nnunet_ssl.data.reference import prepare_reference
    name = prepare_reference(args.reference, args.ssl, args.plans, args.configurations, args.num_processes)
    print(f"{name} is preprocessed with the plans of the unlabeled dataset and recorded as its ReFs reference.")
    return 0


def _cmd_workflow(args) -> int:
    from nnunet_ssl.cli.workflow import run_workflow_from_args
    return run_workflow_from_args(args)


def _cmd_demo(args) -> int:
    from nnunet_ssl.cli.demo import run_demo_from_args
    return run_demo_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet_ssl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="versions, env vars, trainer discovery and what to fix")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("ingest", help="unlabeled images -> nnU-Net dataset planned like a downstream dataset")
    from nnunet_ssl.data.ingest import add_ingest_arguments
    add_ingest_arguments(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("finetune", help="nnUNetv2_train with SSLFinetuneTrainer and a pre-trained checkpoint")
    p.add_argument("dataset")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-w", "--weights", required=True, help="pre-trained checkpoint (nnunet_ssl, nnU-Net or nnssl)")
    p.add_argument("-tr", "--trainer", default=FINETUNE_TRAINER)
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-device", "--device", default="cuda")
    p.add_argument("--c", action="store_true", help="continue a fine-tuning run")
    p.add_argument("--npz", action="store_true")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("prepare-reference",
                       help="preprocess a labeled dataset with an unlabeled dataset's plans, as its ReFs reference")
    p.add_argument("-r", "--reference", required=True, help="labeled dataset (id or name) in nnUNet_raw")
    p.add_argument("--ssl", required=True, help="the ingested unlabeled dataset (id or name)")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"])
    p.add_argument("-np", "--num-processes", type=int, default=2)
    p.set_defaults(func=_cmd_prepare_reference)

    try:
        from nnunet_ssl.cli.workflow import add_workflow_arguments
        p = sub.add_parser("workflow", help="plan -> ingest -> pre-train -> fine-tune -> predict -> evaluate")
        add_workflow_arguments(p)
        p.set_defaults(func=_cmd_workflow)
        from nnunet_ssl.cli.demo import add_demo_arguments
        p = sub.add_parser("demo", help="the whole workflow on a built-in synthetic dataset (CPU, ~10 min)")
        add_demo_arguments(p)
        p.set_defaults(func=_cmd_demo)
    except ImportError:
        pass
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserInputError as e:
        print(f"nnunet_ssl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnunet_ssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
