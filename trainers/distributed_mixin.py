"""Let nnU-Net's DDP code path run on CPU processes (``gloo``), so the distributed logic is testable without GPUs.

nnU-Net's trainer assumes DDP means CUDA: under an initialised process group it moves itself to
``cuda:<rank>`` and wraps the network with ``DDP(device_ids=[rank])``, which torch refuses for CPU modules. With
this mixin (placed directly above ``nnUNetTrainer`` in the MRO), a trainer created with ``device=cpu`` inside a
CPU (gloo) process group stays on the CPU and is wrapped with ``DDP(device_ids=None)``. The mixin does the DDP
wrap on GPUs as well (``nnUNetv2_train -num_gpus N``), the way nnU-Net does it (SyncBatchNorm conversion, then
``DDP(device_ids=[local_rank])``) plus ``find_unused_parameters`` where a trainer needs it (pre-training), so the
network is wrapped exactly once. Everything else of nnU-Net's DDP path is unchanged: per-rank batch size and
oversampling, batch Dice across ranks, gradient averaging, rank-0-only logging and checkpoints.

:func:`nnunet_ssl.cpu_ddp.run_cpu_ddp` launches such a run the way nnU-Net's ``run_ddp`` does.

As the one layer every trainer of ours has directly above ``nnUNetTrainer``, its ``__init__`` also turns an output
folder that cannot be created or written into a message instead of a traceback (or, for an existing read-only
folder, nnU-Net's five retries on every log line), and removes the checkpoint temporaries a run killed during a
save left there.
"""
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ssl.errors import exit_on_file_system_error, writable_folder
from nnunet_ssl.weights.checkpoint import clean_stale_temporaries


def _cpu_process_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"


class CPUDistributedMixin:
    #: passed to DDP; pre-training sets it (some parameters, e.g. the lower-resolution outputs, get no gradient)
    ddp_find_unused_parameters = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        try:  # nnU-Net creates the output folder and opens its log there (every trainer of ours passes here)
            super().__init__(plans, configuration, fold, dataset_json, device)
            writable_folder(self.output_folder)
        except OSError as e:
            exit_on_file_system_error(e)  # read-only / not permitted / full: a message, not a traceback
        clean_stale_temporaries(self.output_folder)  # of a run killed during a checkpoint save
        if self.is_ddp and torch.device(device).type == "cpu" and _cpu_process_group():
            self.device = torch.device("cpu")
            self.grad_scaler = None
            self.print_to_log_file(f"DDP on CPU (gloo): rank {self.local_rank} of {dist.get_world_size()}")

    def initialize(self):
        if not self.is_ddp or self.was_initialized:
            return super().initialize()
        # nnU-Net's initialize with its DDP wrap left out (it cannot take CPU modules or DDP options); the
        # DDP-dependent parts are redone below and the network is wrapped exactly once
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()
        self.loss = self._build_loss()
        on_gpu = self.device.type == "cuda"
        if on_gpu:  # as nnU-Net does (SyncBatchNorm is CUDA-only; nnU-Net's plans use instance norm anyway)
            self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
        self.network = DDP(self.network, device_ids=[self.local_rank] if on_gpu else None,
                           find_unused_parameters=self.ddp_find_unused_parameters)
