"""Packaging for nnunet_ssl.

Besides the two packages (``nnunet_ssl``: the library, ``nnunet_ssl_trainers``: the nnU-Net trainer classes, kept
in the repository's ``trainers/`` folder), the wheel carries ``nnunet_ssl_autoregister.pth``. Python executes it at
interpreter start, which appends our trainer folder to ``nnUNet_extTrainer`` so stock ``nnUNetv2_train -tr NAME``
and ``nnUNetv2_predict`` find our trainers. Both ``pip install .`` and ``pip install -e .`` ship it: the first
through ``build_py``, the second through ``editable_wheel``.
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "nnunet_ssl_autoregister.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        shutil.copyfile(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


cmdclass = {"build_py": BuildPyWithPth}

try:
    from setuptools.command.editable_wheel import editable_wheel

    class _AlsoWritePth:
        """Wraps setuptools' editable strategy so the editable wheel carries our .pth too."""

        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __call__(self, wheel, files, mapping):
            self.inner(wheel, files, mapping)
            with open(os.path.join(HERE, PTH), "rb") as f:
                wheel.writestr(PTH, f.read())

    class EditableWheelWithPth(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _AlsoWritePth(super()._select_strategy(*args, **kwargs))

    cmdclass["editable_wheel"] = EditableWheelWithPth
except ImportError:  # very old setuptools: no PEP 660 editable installs
    pass

setup(
    name="nnunet_ssl",
    version="0.1.0",
    description="Self-supervised and hybrid pre-training trainers for nnU-Net v2 (PGL, GMIM, MAE, IDEAL, ReFs)",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.isfile(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["nnunet_ssl", "nnunet_ssl.methods", "nnunet_ssl.methods.objectives", "nnunet_ssl.data",
              "nnunet_ssl.weights", "nnunet_ssl.cli", "nnunet_ssl.benchmark", "nnunet_ssl_trainers"],
    # trainers/nnunet_ext/ (nnU-Net's nnUNet_extTrainer folder) is not a package: nnU-Net imports its modules as
    # top-level names. It ships as package data of nnunet_ssl_trainers.
    package_data={"nnunet_ssl_trainers": ["nnunet_ext/*.py"]},
    package_dir={"nnunet_ssl_trainers": "trainers"},
    install_requires=[
        "nnunetv2>=2.8",
        "torch>=2.1",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3",
        "dynamic-network-architectures>=0.4",
        "SimpleITK>=2.2",
        "numpy",
        "scipy",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3"]},
    entry_points={"console_scripts": ["nnunet_ssl=nnunet_ssl.cli:main"]},
    cmdclass=cmdclass,
)
