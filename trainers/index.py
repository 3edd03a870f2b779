"""Every trainer class nnunet_ssl provides, by name. Add new trainer modules here."""
from nnunet_ssl_trainers.aligned_views import AlignedViewsTrainer  # noqa: F401
from nnunet_ssl_trainers.finetune import (SSLFinetuneTrainer, SSLFinetuneTrainer_decoderWarmup,  # noqa: F401
                                          SSLFinetuneTrainer_decoderWarmupSlowEncoder, SSLScratchTrainer)
from nnunet_ssl_trainers.ideal import (IDEALTrainer, IDEALTrainer_bottleneckOnly,  # noqa: F401
                                       IDEALTrainer_cosineEMA, IDEALTrainer_deepLevels, IDEALTrainer_insideViews,
                                       IDEALTrainer_shallowLevels, IDEALTrainer_tau02)
from nnunet_ssl_trainers.ideal_semi import (IDEALSemiSupervisedTrainer,  # noqa: F401
                                            IDEALSemiSupervisedTrainer_decoderWarmup)
from nnunet_ssl_trainers.masked_modeling import (GMIMTrainer, GMIMTrainer_noHierarchy,  # noqa: F401
                                                 GMIMTrainer_noSiamese, GMIMTrainer_sharedCrop, MAETrainer)
from nnunet_ssl_trainers.pgl import (PGLTrainer, PGLTrainer_bottleneckOnly, PGLTrainer_ema0996,  # noqa: F401
                                     PGLTrainer_encoderOnly)
from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer  # noqa: F401
from nnunet_ssl_trainers.refs import (ReFsTrainer, ReFsTrainer_cosine, ReFsTrainer_GMIM,  # noqa: F401
                                      ReFsTrainer_GMIM_cosine, ReFsTrainer_IDEAL, ReFsTrainer_noMatching,
                                      ReFsTrainer_PGL, ReFsTrainer_PGL_cosine)
from nnunet_ssl_trainers.stock_schedule import nnUNetTrainer_schedule  # noqa: F401
