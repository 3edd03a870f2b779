"""The trainer names and trainer environment variables the library (CLI, doctor, workflow) needs, as plain strings.

The library never imports the trainer package ``nnunet_ssl_trainers`` (it sits on top of the library); it names
trainers only through these constants. ``tests/unit/test_trainer_names.py`` checks them against the classes that
``nnunet_ssl_trainers.index`` exports, so a new trainer is added there and here together. Import-light: no torch.
"""

# environment variables the trainers read
PRETRAINED_ENV = "NNUNET_SSL_PRETRAINED"  # SSLFinetuneTrainer*: the pre-trained checkpoint to start from
SETTINGS_ENV = "NNUNET_SSL_SETTINGS"  # every trainer: run-time settings (nnunet_ssl.settings)
UNLABELED_DATASET_ENV = "NNUNET_SSL_UNLABELED_DATASET"  # IDEALSemiSupervisedTrainer: the unlabeled dataset
REFERENCE_ENV = "NNUNET_SSL_REFERENCE_DATASET"  # ReFsTrainer*: the labeled reference dataset

# fine-tuning
FINETUNE_TRAINER = "SSLFinetuneTrainer"
SCRATCH_TRAINER = "SSLScratchTrainer"

# pre-training trainer of each method the workflow offers
METHOD_TRAINERS = {
    "mae": "MAETrainer",
    "gmim": "GMIMTrainer",
    "pgl": "PGLTrainer",
    "ideal": "IDEALTrainer",
    "refs": "ReFsTrainer",
}

# every pre-training trainer -> whether fine-tuning loads the decoder it trained (the class's ``decoder_transfers``;
# tests/unit/test_package_layout.py checks the two agree): False for an encoder-only transfer (a decoder trained to
# reconstruct the input, IDEAL's since its route check, or none trained), True where the SSL loss trains decoder
# stages whose weights fine-tuning keeps (PGL's, ReFs on PGL)
PRETRAINING_DECODER_TRANSFERS = {
    "AlignedViewsTrainer": True,
    "GMIMTrainer": False, "GMIMTrainer_noHierarchy": False, "GMIMTrainer_noSiamese": False,
    "GMIMTrainer_sharedCrop": False,
    "IDEALTrainer": False, "IDEALTrainer_bottleneckOnly": False, "IDEALTrainer_cosineEMA": False,
    "IDEALTrainer_deepLevels": False, "IDEALTrainer_insideViews": False, "IDEALTrainer_shallowLevels": False,
    "IDEALTrainer_tau02": False,
    "MAETrainer": False,
    "PGLTrainer": True, "PGLTrainer_ema0996": True, "PGLTrainer_bottleneckOnly": False,
    "PGLTrainer_encoderOnly": False,
    "ReFsTrainer": False, "ReFsTrainer_cosine": False, "ReFsTrainer_noMatching": False, "ReFsTrainer_GMIM": False,
    "ReFsTrainer_GMIM_cosine": False, "ReFsTrainer_IDEAL": False, "ReFsTrainer_PGL": True,
    "ReFsTrainer_PGL_cosine": True,
}

# every trainer a user can run with nnUNetv2_train -tr NAME
TRAINER_NAMES = (
    "AlignedViewsTrainer",
    "GMIMTrainer", "GMIMTrainer_noHierarchy", "GMIMTrainer_noSiamese", "GMIMTrainer_sharedCrop",
    "IDEALSemiSupervisedTrainer", "IDEALSemiSupervisedTrainer_decoderWarmup",
    "IDEALTrainer", "IDEALTrainer_bottleneckOnly", "IDEALTrainer_cosineEMA", "IDEALTrainer_deepLevels",
    "IDEALTrainer_insideViews", "IDEALTrainer_shallowLevels",
    "IDEALTrainer_tau02",
    "MAETrainer",
    "PGLTrainer", "PGLTrainer_bottleneckOnly", "PGLTrainer_ema0996", "PGLTrainer_encoderOnly",
    "ReFsTrainer", "ReFsTrainer_GMIM", "ReFsTrainer_GMIM_cosine", "ReFsTrainer_IDEAL", "ReFsTrainer_PGL",
    "ReFsTrainer_PGL_cosine", "ReFsTrainer_cosine", "ReFsTrainer_noMatching",
    "SSLFinetuneTrainer", "SSLFinetuneTrainer_decoderWarmup", "SSLFinetuneTrainer_decoderWarmupSlowEncoder",
    "SSLScratchTrainer",
    "nnUNetTrainer_schedule",
)

# trainer classes the index also exports (so nnU-Net resolves them) that are bases, not runnable on their own
BASE_TRAINER_NAMES = ("nnUNetSSLTrainer",)

# everything nnU-Net's lookup must find through our nnUNet_extTrainer folder
ALL_TRAINER_NAMES = tuple(sorted(TRAINER_NAMES + BASE_TRAINER_NAMES))
