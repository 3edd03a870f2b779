#!/usr/bin/env python
"""Per-iteration wall time and peak memory of the nnunet_ssl trainers against stock ``nnUNetTrainer``.

    python scripts/benchmark_cost.py                        # default plans, every trainer (a GPU is best)
    python scripts/benchmark_cost.py --tiny --batch-size 2  # CPU-sized network (features capped at 32)
    python scripts/benchmark_cost.py --help

The code lives in :mod:`nnunet_ssl.benchmark` (cost_main: what is measured and how; cost_args, cost_data,
cost_trainers, cost_measure, cost_loader, cost_report).
"""
from nnunet_ssl.benchmark.common import run_main
from nnunet_ssl.benchmark.cost_main import main

if __name__ == "__main__":
    run_main(main)
