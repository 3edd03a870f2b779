"""Trainer variants nnU-Net style: a subclass named by a descriptive suffix that changes hyperparameters only.

nnU-Net writes each variant out (``nnUNetTrainer_Xepochs`` generates its many); we generate ours the same way::

    PGLTrainer_ema0996 = variant("PGLTrainer_ema0996", PGLTrainer, __name__, "EMA base 0.996.", ema_base=0.996)

The attributes are set after the base ``__init__`` (where nnU-Net trainers set their hyperparameters), and
``NNUNET_SSL_SETTINGS`` can still override them. The class gets ``__module__`` = the defining module, so nnU-Net's
lookup and pickling find it there.
"""
import torch


def variant(name: str, base: type, module: str, doc: str, **attributes) -> type:
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        for key, value in attributes.items():
            setattr(self, key, value)

    settings = ", ".join(f"{k}={v!r}" for k, v in attributes.items())
    return type(name, (base,), {"__init__": __init__, "__module__": module,
                                "__doc__": f"{doc} ({base.__name__} with {settings})"})
