"""Every trainer class nnunet_ssl provides, by name. Add new trainer modules here."""
from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer  # noqa: F401
from nnunet_ssl_trainers.masked_modeling import (GMIMTrainer, GMIMTrainer_noHierarchy,  # noqa: F401
                                                 GMIMTrainer_noSiamese, MAETrainer)
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer  # noqa: F401
