"""nnU-Net trainer classes of nnunet_ssl (installed as the package ``nnunet_ssl_trainers``).

Each trainer is thin: it wires the building blocks of :mod:`nnunet_ssl` into nnU-Net's trainer hooks.
"""
