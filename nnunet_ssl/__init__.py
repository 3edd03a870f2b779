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
trainers with nnU-Net, so importing it must stay cheap: no torch, no nnunetv2 here.
"""
__version__ = "0.1.0"
