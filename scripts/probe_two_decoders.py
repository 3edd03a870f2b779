"""Which decoder of an IDEAL semi-supervised model segments what? Dice of decoder A, decoder B and their average.

``IDEALSemiSupervisedTrainer``'s network has two decoders; ``nnUNetv2_predict`` (and nnU-Net's validation) average
their softmax. When that model misses a class, this tells whether both decoders miss it or the average hides one
decoder's answer. For a trained model folder it predicts a labeled image folder three times with nnU-Net's own
predictor (sliding window, the same settings for all three), once per output, scores each with nnU-Net's metrics
(``compute_metrics_on_folder_simple``) and counts where each true class's voxels go:

    python scripts/probe_two_decoders.py -m RESULTS/Dataset960_X/IDEALSemiSupervisedTrainer__nnUNetPlans__3d_fullres \\
        -f 0 -i TEST/imagesTs -l TEST/labelsTs -o /tmp/probe [--out-md report.md]

CPU is enough for small datasets (device: cuda when available, else cpu; ``--device`` overrides).
"""
import argparse
from pathlib import Path

import torch

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.report import voxel_confusion
from nnunet_ssl.benchmark.stats import class_fate
from nnunet_ssl.errors import UserInputError

OUTPUTS = ("average", "decoder_a", "decoder_b")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model-folder", required=True, help="the trainer folder (holds fold_X and plans.json)")
    p.add_argument("-f", "--fold", default="0", type=bc.fold_arg)
    p.add_argument("-i", "--images", required=True, help="images in nnU-Net raw layout (CASE_0000.nii.gz)")
    p.add_argument("-l", "--labels", required=True, help="reference segmentations (CASE.nii.gz)")
    p.add_argument("-o", "--work", required=True, help="folder for the three prediction folders")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--device", default=None)
    p.add_argument("--out-md", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    for name in ("model_folder", "images", "labels"):
        if not Path(getattr(args, name)).is_dir():
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not a folder")
    fold = args.fold if args.fold == "all" else int(args.fold)
    if not (Path(args.model_folder) / f"fold_{fold}" / args.checkpoint).is_file():
        p.error(f"{Path(args.model_folder) / f'fold_{fold}' / args.checkpoint} does not exist")
    args.fold = fold
    return args


def select_output(network, which: str) -> None:
    """Make the two-decoder network's inference forward return one output (``average`` = as trained)."""
    from nnunet_ssl.methods.two_decoder_unet import TwoDecoderUNet
    if not isinstance(network, TwoDecoderUNet):
        raise UserInputError(f"the model's network is a {type(network).__name__}, not IDEAL's two-decoder network "
                             f"(train it with IDEALSemiSupervisedTrainer)")
    if which == "average":
        network.__dict__.pop("forward", None)
    else:
        index = OUTPUTS.index(which) - 1
        network.forward = lambda x, both=False: network.forward_both(x)[index]


def main(argv=None) -> int:
    args = parse_args(argv)
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=device.type == "cuda",
                                device=device, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(args.model_folder, use_folds=(args.fold,),
                                                   checkpoint_name=args.checkpoint)
    labels = predictor.label_manager.foreground_labels
    names = {int(v): k for k, v in predictor.dataset_json["labels"].items() if not isinstance(v, (list, tuple))}
    rows = []
    for which in OUTPUTS:
        select_output(predictor.network, which)
        out = Path(args.work) / which
        bc.log(f"{which}: predicting {args.images} -> {out}")
        predictor.predict_from_files(str(args.images), str(out), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        compute_metrics_on_folder_simple(str(args.labels), str(out), labels, str(out / "summary.json"),
                                         num_processes=1, chill=False)
        mean = bc.load_json(out / "summary.json")["mean"]
        dice = [float(mean[str(lb)]["Dice"]) for lb in labels]
        conf = voxel_confusion(args.labels, out, [0] + list(labels))
        rows.append((which, dice, conf))
    header = ("| output | " + " | ".join(f"Dice {names.get(lb, lb)}" for lb in labels) + " | foreground mean | "
              + " | ".join(f"{names.get(t, t)} -> " + "/".join(names.get(q, str(q)) for q in [0] + list(labels))
                           for t in labels) + " |")
    lines = [f"# Two-decoder probe: {args.model_folder} (fold {args.fold}, {args.checkpoint})", "",
             f"images {args.images}; labels {args.labels}; nnU-Net predictor, no mirroring", "", header,
             "|---" * (2 + 2 * len(labels)) + "|"]
    for which, dice, conf in rows:
        fractions = ["/".join(f"{f:.2f}" for f in class_fate(conf, t)) for t in range(1, len(labels) + 1)]
        lines.append(f"| {which} | " + " | ".join(f"{d:.4f}" for d in dice) + f" | {sum(dice) / len(dice):.4f} | "
                     + " | ".join(fractions) + " |")
    lines += ["", "Fractions: the true class's voxels predicted as background / each class (sum to 1)."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    return 0


if __name__ == "__main__":
    bc.run_main(main)
