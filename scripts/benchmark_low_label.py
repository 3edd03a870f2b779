#!/usr/bin/env python
"""Low-label benchmark: does pre-training beat stock nnU-Net with few labels? (``--help`` lists the options.)

    python scripts/benchmark_low_label.py --profile smoke                  # minutes: the pipeline end to end
    python scripts/benchmark_low_label.py --profile cpu                    # 2 CPU cores, default plans
    python scripts/benchmark_low_label.py --profile full --device cuda     # nnU-Net's 1000 epochs (GPUs)
    python scripts/benchmark_low_label.py --profile cpu --stage report     # report of whatever has finished

The code lives in :mod:`nnunet_ssl.benchmark` (datasets, splits, arms, driver, stats, report).
"""
from nnunet_ssl.benchmark.common import run_main
from nnunet_ssl.benchmark.main import main

if __name__ == "__main__":
    run_main(main)
