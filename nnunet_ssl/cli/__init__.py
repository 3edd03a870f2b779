"""The ``nnunet_ssl`` command line (entry point ``nnunet_ssl=nnunet_ssl.cli:main``) and what its commands run:
``main`` (argument parsing), ``doctor``, ``workflow``, ``demo`` and ``commands`` (running nnU-Net's own commands)."""
from nnunet_ssl.cli.main import build_parser, main  # noqa: F401
