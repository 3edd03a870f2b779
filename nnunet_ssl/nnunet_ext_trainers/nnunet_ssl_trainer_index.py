"""Re-export of every nnunet_ssl trainer, for nnU-Net's ``nnUNet_extTrainer`` lookup.

nnU-Net imports the modules of this folder as top-level modules and drops them from ``sys.modules`` afterwards.
The classes themselves live in the installed package ``nnunet_ssl_trainers`` and are only re-exported here, so
every lookup returns the same class objects.
"""
from nnunet_ssl_trainers.index import *  # noqa: F401,F403
