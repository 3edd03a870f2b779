"""nnunet_ssl: self-supervised and hybrid pre-training for nnU-Net v2.

Subpackages, by concern:

* ``nnunet_ssl.methods``: the pre-training methods in plain torch (views, alignment, masking, teachers, heads,
  ``objectives``, gradient matching, the two-decoder network, semi-supervised losses). Never imports nnunetv2.
* ``nnunet_ssl.data``: ingestion of unlabeled images, the two-view loader, the unlabeled pool, label budgets, the
  ReFs reference dataset, plans compatibility and tools, the synthetic demo dataset.
* ``nnunet_ssl.weights``: checkpoints, weight transfer, encoder freezing, network parts.
* ``nnunet_ssl.cli``: the ``nnunet_ssl`` command (doctor, ingest, finetune, workflow, demo).
* ``nnunet_ssl.benchmark``: the low-label benchmark.
* Top level: errors, settings, paths, trainer_names, autoregister, distributed, cpu_ddp, ssl_logging.

The trainer classes live in the separate package ``nnunet_ssl_trainers`` (the repository's ``trainers/``), which
builds on this library; the library never imports it back.

This package is imported at interpreter start (through ``nnunet_ssl_autoregister.pth``) to register the
trainers with nnU-Net, so importing it must stay cheap: no torch, no nnunetv2 here. The Python API below is
therefore loaded lazily (module ``__getattr__``): ``import nnunet_ssl`` costs nothing, ``nnunet_ssl.export_model``
imports what it needs on first use.

Python API (what a script needs)::

    import nnunet_ssl

    # 1. unlabeled images -> nnU-Net dataset 502, planned like the labeled dataset 501
    nnunet_ssl.ingest_unlabeled("/data/unlabeled", 502, None, downstream=501)
    # 2. pre-train (returns the run folder; checkpoint_final.pth inside)
    pre = nnunet_ssl.pretrain(502, method="mae", settings={"num_epochs": 100}, device="cuda")
    # 3. fine-tune on the labeled dataset (MAE/GMIM/ReFs: the decoder warm-up route)
    ft = nnunet_ssl.finetune(501, f"{pre}/checkpoint_final.pth", fold=0,
                             trainer="SSLFinetuneTrainer_decoderWarmup", settings={"label_budget": 10})
    # 4. a model folder stock nnUNetv2_predict uses without this plugin
    nnunet_ssl.export_model(os.path.dirname(ft), "/out/submission.zip")  # os.path.dirname: the model folder

Also: :func:`transfer_weights` (load a pre-training checkpoint into any nnU-Net network, with a per-key report),
:func:`load_checkpoint_file`, :func:`run_workflow` with :class:`WorkflowConfig` (the whole chain, as
``nnunet_ssl workflow``) and :func:`run_demo`.
"""
__version__ = "0.1.0"

#: public name -> (module, attribute), imported on first access
_API = {
    "ingest_unlabeled": ("nnunet_ssl.data.ingest", "ingest_unlabeled"),
    "pretrain": ("nnunet_ssl.cli.training", "pretrain"),
    "finetune": ("nnunet_ssl.cli.training", "finetune"),
    "transfer_weights": ("nnunet_ssl.weights.transfer", "transfer_weights"),
    "load_checkpoint_file": ("nnunet_ssl.weights.checkpoint", "load_checkpoint_file"),
    "export_model": ("nnunet_ssl.weights.export", "export_model"),
    "run_workflow": ("nnunet_ssl.cli.workflow", "run_workflow"),
    "WorkflowConfig": ("nnunet_ssl.cli.workflow", "WorkflowConfig"),
    "run_demo": ("nnunet_ssl.cli.demo", "run_demo"),
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    raise AttributeError(f"module 'nnunet_ssl' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_API))
