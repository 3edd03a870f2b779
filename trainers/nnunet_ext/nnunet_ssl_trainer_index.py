"""Re-export of every nnunet_ssl trainer, for nnU-Net's ``nnUNet_extTrainer`` lookup.

This folder (``nnunet_ssl_trainers/nnunet_ext``, the repository's ``trainers/nnunet_ext``) is what
:mod:`nnunet_ssl.autoregister` appends to ``nnUNet_extTrainer``. It is deliberately not a package and must hold only
this module: nnU-Net imports the modules of the folder as top-level modules and drops them from ``sys.modules``
afterwards. The classes themselves live in the installed package ``nnunet_ssl_trainers`` and are only re-exported
here, so every lookup returns the same class objects.
"""
from nnunet_ssl_trainers.index import *  # noqa: F401,F403
