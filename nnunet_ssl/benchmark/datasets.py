"""The benchmark's datasets: where they live, how cases group, which nnU-Net configuration, which budgets."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _case_is_group(case: str) -> str:
    return case


def _acdc_patient(case: str) -> str:
    """``acdc_patient012_frame02`` -> ``acdc_patient012``: both frames of a patient form one group."""
    m = re.match(r"(.*patient\d+)", case)
    return m.group(1) if m else case


@dataclass(frozen=True)
class BenchDataset:
    key: str
    folder_name: str  # under ../shared/data
    dataset_id: int  # labeled downstream dataset; +1 unlabeled pool; +2 ReFs reference (the other dataset's labels)
    configuration: str
    why_configuration: str
    group_of: Callable[[str], str]
    group_word: str  # "case" or "patient"
    num_test_groups: int
    num_val_groups: int
    budgets: Tuple[int, ...]  # labeled groups
    reference: str  # key of the dataset whose labels serve as ReFs' reference task
    num_reference_cases: int
    # the CPU schedule every arm trains with (only these may differ from nnU-Net's defaults)
    cpu_schedule: Dict[str, int] = field(default_factory=dict)

    @property
    def source(self) -> Path:
        return SHARED_DATA / self.folder_name

    # the labeled downstream dataset has dataset_id, the unlabeled pool the next id, the ReFs reference the one after
    unlabeled_id = property(lambda self: self.dataset_id + 1)
    reference_id = property(lambda self: self.dataset_id + 2)
    downstream_name = property(lambda self: f"Dataset{self.dataset_id:03d}_LowLabel{self.key.capitalize()}")
    unlabeled_name = property(lambda self: f"Dataset{self.unlabeled_id:03d}_LowLabel{self.key.capitalize()}Unlabeled")

    def groups(self, cases: List[str]) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for c in sorted(cases):
            out.setdefault(self.group_of(c), []).append(c)
        return out


# Hippocampus: 1000 training iterations at batch 2 for every arm: about 1.4-1.5 s per stock iteration on 2 CPU
# cores with either dataset's default plans (ACDC 2d at nnU-Net's batch 56, or even 8, would take hours per run)
CPU_SCHEDULE = {"num_epochs": 50, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 10, "batch_size": 2,
                "save_every": 5}  # save_every: a stopped run continues with --c from at most 5 epochs back
# ACDC: 4000 iterations (100 epochs of 40). With 1000, stock nnU-Net on one labeled patient had not converged for
# every label subset; with 2000 (100 x 20) still not: the mean validation pseudo Dice of seeds 1 and 2 rose by 0.06
# and 0.05 from the fourth fifth of training to the last (0.42 -> 0.48, 0.35 -> 0.40), so runs of that schedule
# measured how fast an arm converges, not where it ends. 40 iterations per epoch rather than 200 epochs: the same
# training for fewer validation passes
ACDC_CPU_SCHEDULE = dict(CPU_SCHEDULE, num_epochs=100, num_iterations_per_epoch=40)

DATASETS: Dict[str, BenchDataset] = {
    "hippocampus": BenchDataset(
        key="hippocampus", folder_name="hippocampus", dataset_id=401, configuration="3d_fullres",
        why_configuration="nnU-Net plans only 3d_fullres (and 2d) for these small isotropic crops; 3d_fullres is "
                          "its recommended configuration",
        group_of=_case_is_group, group_word="case", num_test_groups=30, num_val_groups=10, budgets=(1, 2, 5),
        reference="acdc", num_reference_cases=40,
        cpu_schedule=CPU_SCHEDULE),
    "acdc": BenchDataset(
        key="acdc", folder_name="acdc", dataset_id=271, configuration="2d",
        why_configuration="thick short-axis stacks (10 mm slices, 6-17 of them): nnU-Net plans both 2d and a "
                          "3d_fullres whose patch is the whole stack (10x256x224); 2d costs about a tenth per "
                          "sample on a CPU and is the configuration the semi-supervised ACDC literature uses",
        group_of=_acdc_patient, group_word="patient", num_test_groups=20, num_val_groups=5, budgets=(1, 3, 7),
        reference="hippocampus", num_reference_cases=40,
        cpu_schedule=ACDC_CPU_SCHEDULE),
}


def dataset_labels(work: Path, key: str) -> Dict[int, str]:
    """Foreground labels and names: the work dir's downstream dataset.json, else the source's."""
    ds = DATASETS[key]
    for dj in (work / "nnUNet_raw" / ds.downstream_name / "dataset.json", ds.source / "dataset.json"):
        if dj.is_file():
            return {int(v): k for k, v in json.loads(dj.read_text())["labels"].items() if int(v) > 0}
    return {}
