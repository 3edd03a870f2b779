"""Suite-wide settings.

The README runs the suite with pytest-xdist (``-n auto --dist loadfile``: one worker per core, a test file's tests in
one worker so its module fixtures are built once). Most of an integration test's time is a fresh ``nnUNetv2_*``
process importing torch and nnU-Net on one core, which two workers overlap. So that two workers do not fight over the
cores, each worker and every process it starts uses one intra-op thread and sleeps instead of spinning while it
waits (``OMP_WAIT_POLICY=PASSIVE``; ``nnUNetv2_train`` still sets its own thread count on the CPU).
"""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
