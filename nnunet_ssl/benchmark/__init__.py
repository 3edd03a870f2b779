"""The low-label benchmark: does pre-training beat stock nnU-Net with few labels?

Modules, one job each: :mod:`.datasets` (the benchmark datasets and their fixed settings), :mod:`.splits`
(seeded, group-aware test / validation / labeled splits written as nnU-Net folds), :mod:`.arms` (what each arm
trains), :mod:`.driver` (data setup, pre-training, fine-tuning, prediction, evaluation; every step resumable and
skipped when done), :mod:`.stats` (paired statistics) and :mod:`.report` (tables, curves, plots).
``scripts/benchmark_low_label.py`` is the command-line entry point.
"""
