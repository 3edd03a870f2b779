"""The ``nnunet_ssl`` command: doctor, ingest, finetune, prepare-reference, workflow, demo, export.

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


def _cmd_export(args) -> int:
    from nnunet_ssl.weights.export import export_model, find_model_folder
    folder = find_model_folder(args.model, args.trainer, args.plans, args.configuration)
    report = export_model(folder, args.output, args.folds, args.checkpoint, overwrite=args.overwrite,
                          single_decoder=args.single_decoder)
    print(report.summary())
    return 0


DESCRIPTION = ("Self-supervised pre-training for nnU-Net v2: ingest unlabeled images, pre-train, fine-tune, run "
               "the whole workflow or a demo, and export fine-tuned models for stock nnU-Net.")
EPILOG = ("Run 'nnunet_ssl COMMAND -h' for the options of a command. Start with 'nnunet_ssl doctor', then "
          "'nnunet_ssl demo'.")


def build_parser() -> argparse.ArgumentParser:
    from nnunet_ssl import __version__
    from nnunet_ssl.cli.demo import EXPECTED_MINUTES
    parser = argparse.ArgumentParser(prog="nnunet_ssl", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"nnunet_ssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    p = sub.add_parser("doctor", help="versions, env vars, trainer discovery and what to fix")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("ingest", help="unlabeled images -> nnU-Net dataset planned like a downstream dataset")
    from nnunet_ssl.data.ingest import add_ingest_arguments
    add_ingest_arguments(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("finetune", help="nnUNetv2_train with SSLFinetuneTrainer and a pre-trained checkpoint")
    p.add_argument("dataset", help="labeled nnU-Net dataset (id or name), planned and preprocessed")
    p.add_argument("configuration", help="nnU-Net configuration, e.g. 3d_fullres or 2d")
    p.add_argument("fold", help="fold to train: 0-4 or all")
    p.add_argument("-w", "--weights", required=True, help="pre-trained checkpoint (nnunet_ssl, nnU-Net or nnssl)")
    p.add_argument("-tr", "--trainer", default=FINETUNE_TRAINER,
                   help=f"fine-tuning trainer (default: {FINETUNE_TRAINER}; for MAE, GMIM and ReFs checkpoints "
                        f"{FINETUNE_TRAINER}_decoderWarmup is recommended)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-device", "--device", default="cuda", help="cuda, cpu or mps (default: cuda)")
    p.add_argument("--c", action="store_true", help="continue a fine-tuning run")
    p.add_argument("--npz", action="store_true", help="save the validation softmax outputs (nnU-Net's --npz)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("prepare-reference",
                       help="preprocess a labeled dataset with an unlabeled dataset's plans, as its ReFs reference")
    p.add_argument("-r", "--reference", required=True, help="labeled dataset (id or name) in nnUNet_raw")
    p.add_argument("--ssl", required=True, help="the ingested unlabeled dataset (id or name)")
    p.add_argument("-p", "--plans", default="nnUNetPlans",
                   help="plans of the unlabeled dataset to preprocess with (default: nnUNetPlans)")
    p.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"],
                   help="configurations to preprocess (default: 3d_fullres)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="preprocessing processes (default: 2)")
    p.set_defaults(func=_cmd_prepare_reference)

    try:
        from nnunet_ssl.cli.workflow import add_workflow_arguments
        p = sub.add_parser("workflow", help="plan -> ingest -> pre-train -> fine-tune -> predict -> evaluate")
        add_workflow_arguments(p)
        p.set_defaults(func=_cmd_workflow)
        from nnunet_ssl.cli.demo import add_demo_arguments
        p = sub.add_parser("demo", help=f"the whole workflow on a built-in synthetic dataset (2 CPU cores: "
                                        f"{EXPECTED_MINUTES} min)")
        add_demo_arguments(p)
        p.set_defaults(func=_cmd_demo)
    except ImportError:
        pass

    p = sub.add_parser("export", help="write a fine-tuned model that stock nnUNetv2_predict uses without this plugin")
    p.add_argument("model", help="trained model folder <nnUNet_results>/<Dataset>/<trainer>__<plans>__<configuration>"
                                 ", or a dataset id/name with -tr")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (used as nnUNet_results) or a file name ending in .zip "
                        "(for nnUNetv2_install_pretrained_model_from_zip)")
    p.add_argument("-tr", "--trainer", default=None, help="trainer of the run, when MODEL is a dataset")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans of the run, when MODEL is a dataset "
                                                                "(default: nnUNetPlans)")
    p.add_argument("-c", "--configuration", default="3d_fullres",
                   help="configuration of the run, when MODEL is a dataset (default: 3d_fullres)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to export (default: every finished fold)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file of each fold (default: checkpoint_final.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--single-decoder", action="store_true",
                   help="export a two-decoder (IDEAL semi-supervised) model with decoder A alone, the only one stock "
                        "nnU-Net can rebuild (refused without this flag: it can predict much worse than the pair)")
    p.set_defaults(func=_cmd_export)
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
