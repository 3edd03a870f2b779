"""Does a pre-trained checkpoint let gradients through at the first fine-tuning step?

For a downstream dataset, its plans and one or more pre-trained checkpoints, build the fine-tuning network exactly as
nnU-Net does, load each checkpoint the way ``SSLFinetuneTrainer`` does (``nnunet_ssl.weights.transfer.transfer_weights``,
optionally encoder only), run one batch of real preprocessed training cases through nnU-Net's Dice + CE loss
(full resolution, no deep supervision) and print, against a randomly initialised network of the same seed:

* the gradient norm reaching the encoder, the decoder and the output layer;
* the last decoder stage's features (what the new output layer sees): fraction > 0 and the spread of each channel
  over the batch (a channel with std near 0 passes almost no signal or gradient);
* the effective rank of every encoder stage's output (:mod:`nnunet_ssl.weights.feature_rank`): how many
  directions its channels use; pre-training that collapses early stages onto a few directions fine-tunes slowly.

A checkpoint whose encoder gradient is far below the random network's starts fine-tuning with a blocked network:
nnU-Net then stays longer in its initial all-background phase (README, low-label benchmark).

    python scripts/probe_finetune_start.py -d Dataset960_LowLabelDownstream -p nnUNetPlansTiny8 \\
        gmim=/path/checkpoint_final.pth mae=/path/checkpoint_final.pth [--encoder-only] [--cases 4]

Uses ``nnUNet_preprocessed``; CPU is enough (one forward/backward per checkpoint).
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nnunet_ssl.benchmark import common as bc  # noqa: E402


def parse_args(argv=None):
    from nnunet_ssl.weights.plans_network import add_probe_arguments, checkpoint_pairs
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(p, "pre-trained checkpoints to probe")
    p.add_argument("--reinit-encoder-stages", type=int, default=0, metavar="N",
                   help="keep the first N encoder stages at their initialisation (the fine-tuning setting)")
    p.add_argument("--cases", type=int, default=4, help="training cases in the batch (default 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.checkpoints = checkpoint_pairs(p, args.checkpoints)
    return args


def _center_crop_or_pad(x: np.ndarray, patch) -> np.ndarray:
    """The centre ``patch`` of a case (channels first), zero-padded where the case is smaller; a 2d configuration
    of a 3D case (one axis more than the patch) takes the case's middle slice first."""
    if x.ndim == len(patch) + 2:
        x = x[:, x.shape[1] // 2]
    out = np.zeros((x.shape[0], *patch), dtype=np.float32)
    src, dst = [], []
    for size, want in zip(x.shape[1:], patch):
        a = max(0, (size - want) // 2)
        b = max(0, (want - size) // 2)
        n = min(size, want)
        src.append(slice(a, a + n))
        dst.append(slice(b, b + n))
    out[(slice(None), *dst)] = x[(slice(None), *src)]
    return out


def load_batch(folder: str, patch, num_cases: int):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    cls = infer_dataset_class(folder)
    ids = sorted(cls.get_identifiers(folder))[:num_cases]
    dataset = cls(folder, ids)
    images, segs = [], []
    for i in ids:
        data, seg, _, _ = dataset.load_case(i)
        images.append(_center_crop_or_pad(np.asarray(data), patch))
        segs.append(_center_crop_or_pad(np.asarray(seg), patch))
    # -1 marks voxels outside the nonzero mask; nnU-Net's training transforms set them to background too
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(segs)).round().long().clamp_(min=0)


def probe(network, x, y, loss_fn) -> dict:
    from nnunet_ssl.weights.feature_rank import encoder_effective_ranks
    from nnunet_ssl.weights.network_parts import is_encoder_key
    seen = {}
    hook = network.decoder.stages[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("features", o.detach()))
    network.zero_grad()
    loss = loss_fn(network(x), y)
    loss.backward()
    hook.remove()
    groups = {"encoder": 0.0, "decoder": 0.0, "output layer": 0.0}
    for name, prm in network.named_parameters():
        if prm.grad is None:
            continue
        group = "output layer" if ".seg_layers." in name else ("encoder" if is_encoder_key(name) else "decoder")
        groups[group] += prm.grad.pow(2).sum().item()
    f = seen["features"]
    channel_std = f.transpose(0, 1).flatten(1).std(dim=1)
    return dict(loss=loss.item(), **{k: v ** 0.5 for k, v in groups.items()},
                positive=(f > 0).float().mean().item(), std_min=channel_std.min().item(),
                std_median=channel_std.median().item(), ranks=encoder_effective_ranks(network, x))


def main(argv=None):
    args = parse_args(argv)
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunet_ssl.weights.plans_network import PreprocessedDataset, network_from_checkpoint

    ds = PreprocessedDataset(args.dataset, args.plans, args.configuration)
    name, cm, lm = ds.name, ds.cm, ds.lm
    if lm.has_regions:
        sys.exit("region-based datasets are not supported by this probe")
    x, y = load_batch(str(ds.data_folder), cm.patch_size, args.cases)
    loss_fn = DC_and_CE_loss({"batch_dice": cm.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                             weight_ce=1, weight_dice=1, ignore_label=lm.ignore_label,
                             dice_class=MemoryEfficientSoftDiceLoss)

    print(f"{name} {args.plans} {args.configuration}: {x.shape[0]} training cases, patch {list(cm.patch_size)}, "
          f"nnU-Net's Dice + CE at full resolution; transfer: {'encoder only' if args.encoder_only else 'all but the output layer'}")
    rows = [("random init", probe(ds.network(args.seed), x, y, loss_fn))]
    for label, path in args.checkpoints:
        net = network_from_checkpoint(ds, path, args.seed, load_decoder=not args.encoder_only,
                                      reinit_encoder_stages=args.reinit_encoder_stages)
        rows.append((label, probe(net, x, y, loss_fn)))
    ref = rows[0][1]["encoder"]
    print("\n| start | loss | grad encoder | vs random | grad decoder | grad output layer | last decoder features > 0 "
          "| their channel std: min / median |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['loss']:.3f} | {r['encoder']:.4f} | {r['encoder'] / ref:.2f}x | {r['decoder']:.4f} | "
              f"{r['output layer']:.4f} | {r['positive']:.2f} | {r['std_min']:.3f} / {r['std_median']:.3f} |")
    stages = len(rows[0][1]["ranks"])
    print("\nEffective rank of each encoder stage's output (of its channels; the random network's for comparison)\n")
    print("| start | " + " | ".join(f"stage {i} (of {c})" for i, (_, c) in enumerate(rows[0][1]["ranks"])) + " |")
    print("|---|" + "---|" * stages)
    for label, r in rows:
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v, _ in r["ranks"]) + " |")


if __name__ == "__main__":
    bc.run_main(main)
