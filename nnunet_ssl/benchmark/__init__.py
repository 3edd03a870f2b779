"""The benchmarks: does pre-training beat stock nnU-Net with few labels, and what does each trainer cost?

The low-label benchmark's modules, one job each: :mod:`.datasets` (the benchmark datasets and their fixed
settings), :mod:`.splits` (seeded, group-aware test / validation / labeled splits written as nnU-Net folds),
:mod:`.arms` (what each arm trains), :mod:`.driver` (data setup, pre-training, fine-tuning, prediction,
evaluation; every step resumable and skipped when done), :mod:`.stats` (paired statistics) and :mod:`.report`
(tables, curves, plots).
``scripts/benchmark_low_label.py`` is the command-line entry point.

The cost benchmark (time and memory per training iteration of every trainer vs stock nnUNetTrainer), entry point
``scripts/benchmark_cost.py``: :mod:`.cost_main` (the run: build, warm up, interleaved rounds, resume, results),
:mod:`.cost_args` (command line), :mod:`.cost_data` (its datasets), :mod:`.cost_trainers` (trainer lookup and
building with prefetched batches, ReFs targets), :mod:`.cost_measure` (timed steps, RSS sampling, state and batch
bytes), :mod:`.cost_loader` (two-view loader throughput) and :mod:`.cost_report` (statistics, targets, loader
verdict, Markdown). :mod:`.common` holds helpers both benchmarks share.
"""
