"""A preprocessed nnU-Net dataset and the network its plans build, for the probes of ``scripts/``.

``PreprocessedDataset(dataset, plans, configuration)`` reads ``nnUNet_preprocessed/<dataset>``: plans, label manager,
the configuration's data folder and cases (``load_case``); ``network(seed)`` builds the plans' network as nnU-Net
does (seeded initialisation); ``network_from_checkpoint`` loads a pre-trained checkpoint into it the way
``SSLFinetuneTrainer`` does (:func:`nnunet_ssl.weights.transfer.transfer_weights`). ``add_probe_arguments`` and
``checkpoint_pairs``: the command-line arguments the probes share.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from nnunet_ssl.errors import UserInputError


class PreprocessedDataset:
    def __init__(self, dataset: str, plans: str = "nnUNetPlans", configuration: str = "3d_fullres"):
        import json
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        if not os.environ.get("nnUNet_preprocessed"):
            raise UserInputError("nnUNet_preprocessed is not set. Fix: export nnUNet_preprocessed=/path/to/it")
        self.name = maybe_convert_to_dataset_name(dataset)
        self.root = Path(os.environ["nnUNet_preprocessed"]) / self.name
        plans_file = self.root / f"{plans}.json"
        if not plans_file.is_file():
            raise UserInputError(f"{plans_file} not found. Fix: plan and preprocess {self.name} with {plans} first")
        self.plans = PlansManager(json.loads(plans_file.read_text()))
        self.dataset_json = json.loads((self.root / "dataset.json").read_text())
        self.configuration = configuration
        self.cm = self.plans.get_configuration(configuration)
        self.lm = self.plans.get_label_manager(self.dataset_json)
        self.num_input_channels = determine_num_input_channels(self.plans, self.cm, self.dataset_json)
        self.data_folder = self.root / self.cm.data_identifier
        if not self.data_folder.is_dir():
            raise UserInputError(f"{self.data_folder} not found. Fix: preprocess {self.name} for {configuration}")

    @property
    def two_d(self) -> bool:
        """A 2d configuration: its network sees slices (first spatial axis) of the cases."""
        return len(self.cm.patch_size) == 2

    def network(self, seed: int = 0) -> nn.Module:
        """The plans' network without deep supervision, initialised as nnU-Net does, with ``seed``."""
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        torch.manual_seed(seed)
        return get_network_from_plans(self.cm.network_arch_class_name, self.cm.network_arch_init_kwargs,
                                      self.cm.network_arch_init_kwargs_req_import, self.num_input_channels,
                                      self.lm.num_segmentation_heads, deep_supervision=False)

    def identifiers(self) -> list:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        return sorted(infer_dataset_class(str(self.data_folder)).get_identifiers(str(self.data_folder)))

    def load_cases(self, ids: Sequence[str]) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        """``(id, image (C, *spatial), segmentation (*spatial))``; voxels outside nnU-Net's nonzero mask (-1) are
        background, as nnU-Net's training transforms make them."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        known = set(self.identifiers())
        missing = [i for i in ids if i not in known]
        if missing:
            raise UserInputError(f"cases {missing[:5]} are not preprocessed in {self.data_folder}")
        dataset = infer_dataset_class(str(self.data_folder))(str(self.data_folder), list(ids))
        for i in ids:
            data, seg, _, _ = dataset.load_case(i)
            yield i, np.asarray(data, dtype=np.float32), np.clip(np.asarray(seg)[0], 0, None).astype(np.int64)


def network_from_checkpoint(ds: PreprocessedDataset, path: str, seed: int = 0, load_decoder: bool = True,
                            reinit_encoder_stages: int = 0) -> nn.Module:
    """``ds.network(seed)`` with the checkpoint's weights, transferred as ``SSLFinetuneTrainer`` transfers them."""
    from nnunet_ssl.weights.checkpoint import load_checkpoint_file
    from nnunet_ssl.weights.transfer import transfer_weights
    net = ds.network(seed)
    transfer_weights(net, load_checkpoint_file(path, map_location="cpu"), load_decoder=load_decoder,
                     reinit_encoder_stages=reinit_encoder_stages)
    return net


def add_probe_arguments(p: argparse.ArgumentParser, checkpoints_help: str, nargs: str = "+") -> None:
    """Dataset, plans, configuration, the ``NAME=PATH`` checkpoints and ``--encoder-only``."""
    p.add_argument("-d", "--dataset", required=True, help="downstream dataset name or id (preprocessed)")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("checkpoints", nargs=nargs, metavar="NAME=PATH", help=checkpoints_help)
    p.add_argument("--encoder-only", action="store_true", help="transfer the encoder only (load_decoder=False)")


def checkpoint_pairs(p: argparse.ArgumentParser, items: Sequence[str]) -> List[Tuple[str, str]]:
    """``NAME=PATH`` arguments as pairs; a usage error (exit 2) for anything else or a missing file."""
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"{item!r}: expected NAME=PATH of an existing checkpoint file")
        pairs.append((name, path))
    return pairs
