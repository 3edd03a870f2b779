"""nnunet_ssl: self-supervised and hybrid pre-training for nnU-Net v2.

This package is imported at interpreter start (through ``nnunet_ssl_autoregister.pth``) to register the
trainers with nnU-Net, so importing it must stay cheap: no torch, no nnunetv2 here.
"""
__version__ = "0.1.0"
