"""Is a pre-trained representation better than a random one for the downstream task? A frozen, dense linear probe.

For a preprocessed downstream dataset and one or more checkpoints: build the plans' network as nnU-Net does, load
each checkpoint the way ``SSLFinetuneTrainer`` does, freeze it, and fit a softmax regression on its per-voxel
features (:mod:`nnunet_ssl.weights.feature_probe`: encoder hypercolumn, last decoder stage, or both) from the
labeled cases; print the per-class Dice the probe reaches on held-out cases, against the same probe on a randomly
initialised network of the same seed (and any other checkpoint given, e.g. a network trained on the labels).

    python scripts/probe_features.py -d Dataset271_LowLabelAcdc -c 2d --split WORK/acdc/split.json --budget 1 \\
        ideal=/path/checkpoint_final.pth [--part both] [--per-class 4000]

Cases: ``--train`` / ``--eval`` ids, or ``--split`` (a low-label benchmark's ``split.json``): train = the labeled
subset of ``--budget`` and ``--label-seed``, eval = the validation cases (never the test split). CPU is enough:
one forward pass per case and network, 2d networks slice by slice.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nnunet_ssl.benchmark import common as bc  # noqa: E402


def parse_args(argv=None):
    from nnunet_ssl.weights.feature_probe import PARTS
    from nnunet_ssl.weights.plans_network import add_probe_arguments, checkpoint_pairs
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(p, "checkpoints to probe against random weights", nargs="*")
    p.add_argument("--train", nargs="+", default=None, metavar="CASE", help="labeled cases the probe is fitted on")
    p.add_argument("--eval", nargs="+", default=None, metavar="CASE", help="held-out cases it is scored on")
    p.add_argument("--split", default=None, help="a low-label benchmark's split.json (instead of --train/--eval)")
    p.add_argument("--budget", type=int, default=1, help="with --split: labeled groups (default 1)")
    p.add_argument("--label-seed", type=int, default=0, help="with --split: the label subset's seed (default 0)")
    p.add_argument("--part", choices=PARTS, default="both", help="which features (default both)")
    p.add_argument("--per-class", type=int, default=4000, help="training voxels per class (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed (default 0)")
    p.add_argument("--no-random", action="store_true",
                   help="skip the random-initialisation reference (its figure is known from an earlier run)")
    args = p.parse_args(argv)
    if args.no_random and not args.checkpoints:
        p.error("--no-random needs at least one NAME=PATH checkpoint")
    args.checkpoints = checkpoint_pairs(p, args.checkpoints)
    if args.split:
        from nnunet_ssl.benchmark.splits import Split
        split = Split(**bc.load_json(args.split))
        args.train = args.train or split.labeled(args.budget, args.label_seed)
        args.eval = args.eval or split.val
    if not args.train or not args.eval:
        p.error("give --train and --eval cases, or --split")
    if set(args.train) & set(args.eval):
        p.error(f"cases both in --train and --eval: {sorted(set(args.train) & set(args.eval))}")
    return args


SLICES_PER_INPUT = 2  # 2d networks: slices per forward pass (2 x 1536 features x 256 x 224 floats = 0.7 GB)


def _batches(image: np.ndarray, two_d: bool, size: int = SLICES_PER_INPUT):
    """The network's inputs of one case: 2d networks get its slices (first spatial axis), in groups of ``size``."""
    x = torch.from_numpy(image)
    if not two_d:
        yield slice(None), x[None]
        return
    for z in range(0, x.shape[1], size):
        yield slice(z, z + size), x[:, z:z + size].transpose(0, 1)


def case_batches(net, ds, ids, part):
    """``(case, features (B, F, *spatial), labels (B, *spatial))`` per network input: a few slices of a case for 2d
    networks, a whole case for 3d ones (features of a whole 2d case would take gigabytes)."""
    from nnunet_ssl.weights.feature_probe import dense_features
    for case, image, seg in ds.load_cases(ids):
        for sl, x in _batches(image, ds.two_d):
            yield case, dense_features(net, x, part), torch.from_numpy(seg[sl] if ds.two_d else seg[None])


def scored(probe, net, ds, ids, part, k) -> dict:
    from nnunet_ssl.weights.feature_probe import confusion, probe_dice
    per_case = {}
    for case, f, y in case_batches(net, ds, ids, part):
        per_case[case] = per_case.get(case, 0) + confusion(probe.predict(f), y, k)
    return probe_dice(per_case.values())


def probe_network(net, ds, args) -> dict:
    from nnunet_ssl.weights.feature_probe import LinearProbe, sample_voxels
    net.eval()
    k = ds.lm.num_segmentation_heads
    g = torch.Generator().manual_seed(args.seed)
    inputs = sum(-(-image.shape[1] // SLICES_PER_INPUT) if ds.two_d else 1
                 for _, image, _ in ds.load_cases(args.train))
    per_input = -(-args.per_class // inputs)
    xs, ys, voxels = [], [], torch.zeros(k, dtype=torch.long)
    for _, f, y in case_batches(net, ds, args.train, args.part):
        x_s, y_s = sample_voxels(f, y, per_input, k, g)
        xs.append(x_s)
        ys.append(y_s)
        voxels += torch.bincount(y.flatten(), minlength=k)
    probe = LinearProbe(k).fit(torch.cat(xs), torch.cat(ys), class_voxels=voxels)
    return {"train": scored(probe, net, ds, args.train, args.part, k),
            "eval": scored(probe, net, ds, args.eval, args.part, k), "features": int(xs[0].shape[1])}


def main(argv=None):
    args = parse_args(argv)
    from nnunet_ssl.errors import UserInputError
    from nnunet_ssl.weights.plans_network import PreprocessedDataset, network_from_checkpoint
    ds = PreprocessedDataset(args.dataset, args.plans, args.configuration)
    if ds.lm.has_regions:
        raise UserInputError(f"{ds.name} defines regions (overlapping classes): the probe needs one label per voxel")
    label_names = {v: k for k, v in ds.dataset_json["labels"].items() if isinstance(v, int)}
    names = [label_names.get(c, str(c)) for c in ds.lm.foreground_labels]
    print(f"{ds.name} {args.plans} {args.configuration}: probe fitted on {len(args.train)} case(s) "
          f"({', '.join(args.train[:4])}{' ...' if len(args.train) > 4 else ''}), scored on {len(args.eval)}; "
          f"features: {args.part}; {args.per_class} training voxels per class", flush=True)
    rows = []
    for label, path in ([] if args.no_random else [("random init", None)]) + args.checkpoints:
        net = ds.network(args.seed) if path is None else network_from_checkpoint(
            ds, path, args.seed, load_decoder=not args.encoder_only)
        r = probe_network(net, ds, args)
        rows.append((label, r))
        print(f"  {label}: eval mean Dice {r['eval']['mean']:.3f} (train {r['train']['mean']:.3f}, "
              f"{r['features']} features)", flush=True)
    print("\n| start | " + " | ".join(names) + " | mean (held-out) | mean (training cases) |")
    print("|---|" + "---|" * (len(names) + 2))
    for label, r in rows:
        per = r["eval"]["per_class"]
        print(f"| {label} | " + " | ".join(f"{per[c]:.3f}" if c in per else "-" for c in ds.lm.foreground_labels)
              + f" | {r['eval']['mean']:.3f} | {r['train']['mean']:.3f} |")


if __name__ == "__main__":
    bc.run_main(main)
