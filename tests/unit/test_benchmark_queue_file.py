"""The shipped CPU campaign (scripts/benchmark_queue_cpu.txt) is valid for the driver.

scripts/benchmark_queue.sh stops at the first line the driver rejects, so a typo there would idle the machine for
the rest of a session; a line waiting (--after) for a run no earlier line makes would never start.
"""
import shlex
from pathlib import Path

import pytest

from nnunet_ssl.benchmark.arms import ARMS, DEFAULT_ARMS
from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.benchmark.driver import Run
from nnunet_ssl.benchmark.main import make_runs, parse_args

QUEUE = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_queue_cpu.txt"


def _lines():
    out = []
    for number, raw in enumerate(QUEUE.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0]  # as the queue script reads it: '#' starts a comment
        if line.strip():
            out.append((number, shlex.split(line)))
    return out


def _parse(tmp_path, tokens):
    return parse_args(["--profile", "cpu", "--work-dir", str(tmp_path), "--stage", "runs", "--order", "arm"]
                      + tokens)


def test_every_queue_line_parses_and_names_valid_runs(tmp_path):
    lines = _lines()
    assert lines, f"{QUEUE} has no runs"
    made = set()
    for number, tokens in lines:
        try:
            args = _parse(tmp_path, tokens)
        except SystemExit:
            pytest.fail(f"line {number} of {QUEUE.name} is rejected by the driver: {' '.join(tokens)}")
        runs = make_runs(args)  # raises on a budget the dataset does not have
        # a --best-arms line names its arms when it runs (the ranking then), so it may name none here
        assert runs or args.best_arms, f"line {number} makes no run"
        waiting = {r.name for r in args.after} - made
        assert not waiting, f"line {number} waits for runs no earlier line makes: {sorted(waiting)}"
        pretrained = {ARMS[a].pretrain for a in args.arms} - {None}
        assert set(args.record_weights) == pretrained, \
            f"line {number}: --record-weights {args.record_weights} should name its arms' pre-trainings " \
            f"{sorted(pretrained)} (recorded weights let any later machine skip the pre-training)"
        made |= {r.name for r in runs}


def test_queue_covers_the_headline(tmp_path):
    """Every headline arm on every dataset at its smallest budget with 3 seeds: what the headline rule needs."""
    made = set()
    for _, tokens in _lines():
        made |= {r.name for r in make_runs(_parse(tmp_path, tokens))}
    needed = {Run(key, ARMS[arm], min(ds.budgets), seed).name for key, ds in DATASETS.items()
              for arm in DEFAULT_ARMS for seed in (0, 1, 2)}
    assert not needed - made, f"{QUEUE.name} never runs {sorted(needed - made)}"
