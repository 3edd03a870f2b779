"""The one way nnunet_ssl trainers wrap a data loader in batchgenerators' augmenter (main and extra loaders alike).

Like nnU-Net's ``get_dataloaders``: ``SingleThreadedAugmenter`` for 0 processes (``nnUNet_n_proc_DA=0``), else
``NonDetMultiThreadedAugmenter``. The transforms run inside the loaders (two-view loader, nnU-Net's loader with
``transforms=``), so the augmenter gets none. :func:`finish_augmenter` stops a multi-process augmenter's workers and
never raises (shutting down must not fail a finished run).
"""
from typing import Optional


def make_augmenter(loader, num_processes: int, pin_memory: bool = False, num_cached: Optional[int] = None):
    """``num_cached`` defaults to ``max(6, num_processes // 2)`` (nnU-Net's choice)."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    if num_processes == 0:
        return SingleThreadedAugmenter(loader, None)
    if num_cached is None:
        num_cached = max(6, num_processes // 2)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=num_processes,
                                        num_cached=num_cached, seeds=None, pin_memory=pin_memory, wait_time=0.002)


def finish_augmenter(augmenter) -> None:
    finish = getattr(augmenter, "_finish", None)
    if finish is None:
        return
    try:
        finish()
    except Exception:  # shutting down workers must never fail the run
        pass
