"""Which arms the larger budgets run: scratch and the two best arms of the smallest budget (the issue's plan).

The two best are the report's: :func:`stats.rank_arms` over the headline pre-trained arms at the dataset's smallest
budget, by the mean paired foreground difference against scratch, arms with every seed first. A queue line names
them with ``--best-arms 2`` rather than by hand, so the larger budgets follow the ranking as it stands when they
start, and they start only once it is settled: every headline pre-trained arm has its seeds at the smallest budget
(an arm still short of them might overtake). Until then the line waits, as with ``--after``. An arm that cannot
run where the campaign runs (IDEAL semi-supervised on ACDC needs about 5 hours a run, more than a 2-core session
leaves) is left out of the ranking by name (``--best-arms-without``), so the larger budgets do not wait for it
forever; the driver's log and the queue line say which.
The ranking is the test split's, as the headline's best arm is: it chooses which arms the larger budgets measure,
never a setting of any arm (the route and length checks, which do, decide on validation cases).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, NamedTuple, Sequence, Tuple

from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.arms import headline_pretrained_arms
from nnunet_ssl.benchmark.datasets import DATASETS, dataset_labels
from nnunet_ssl.benchmark.run_logs import read_runs


class BestArms(NamedTuple):
    arms: List[str]  # the n best, best first (empty while the ranking is not settled)
    short: List[Tuple[str, int]]  # (arm, seeds paired with scratch so far) of the arms still short of seeds


def best_arms(roots: List[Path], work: Path, dataset: str, n: int = st.N_BEST,
              min_seeds: int = st.MIN_SEEDS, without: Sequence[str] = ()) -> BestArms:
    """The ``n`` best headline pre-trained arms of ``dataset`` at its smallest budget, from the evaluated runs under
    ``roots`` (the work directory and the record); none while an arm there has fewer than ``min_seeds`` seeds
    paired with scratch (they are listed in ``short``). ``without``: arms neither waited for nor ranked."""
    smallest = min(DATASETS[dataset].budgets)
    rows = [row for r in read_runs(roots, dataset) if r["budget"] == smallest for row in r["rows"]]
    labels = {dataset: sorted(dataset_labels(work, dataset))}
    paired = st.paired_vs(rows, labels, n_boot=0)  # the ranking needs only the mean differences
    pretrained = [a for a in headline_pretrained_arms() if a not in without]
    # the report's own list of what the rule still needs, at the smallest budget alone: every arm's seeds there
    short = [(a, n) for _, a, n in st.still_to_run(paired, dataset, [smallest], pretrained, min_seeds)]
    if short:
        return BestArms([], short)
    ranked = st.rank_arms(paired, dataset, smallest, pretrained, min_seeds)
    return BestArms([r["arm"] for r in ranked[:n]], [])
