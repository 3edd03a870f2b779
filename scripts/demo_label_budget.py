"""The demo's data at other label budgets: pre-trained against scratch with N of the 8 labeled synthetic cases.

    python scripts/demo_label_budget.py [--dir DIR] [--budgets 1 2 8] [--seeds 0 1 2] [--method mae]

Runs ``nnunet_ssl demo``'s workflow (same synthetic dataset, pre-training, route and schedule) once per label budget
and label seed, all sharing one pre-training, and prints pretrained and scratch mean test Dice per run and per
budget. Resumable: finished runs are kept in DIR/results.jsonl and skipped when run again. About 3 minutes of 2 CPU
cores per run, plus one pre-training (about 3 minutes). Results: docs/benchmarks.md, "The demo at other label
budgets".
"""
import argparse
import json
import os
import statistics

from nnunet_ssl.cli import demo
from nnunet_ssl.cli.workflow import run_workflow


def run_one(directory: str, method: str, budget: int, seed: int) -> dict:
    extra = demo.finetune_extra(demo.REINIT_STAGES.get(method, 0), budget, seed)
    cfg = demo.workflow_config(method, "cpu", 10, 10, extra,
                               work_dir=os.path.join(directory, f"report_{method}_b{budget}_s{seed}"))
    arms = run_workflow(cfg)["arms"]
    return {a: arms[a].get("mean_dice") for a in arms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="demo_label_budget", help="work folder (default: ./demo_label_budget)")
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 2], help="labeled cases (8: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label seeds (one run each)")
    p.add_argument("--method", default=demo.DEFAULT_METHOD)
    args = p.parse_args(argv)
    directory = os.path.abspath(args.dir)
    demo.prepare(directory)
    out = os.path.join(directory, "results.jsonl")
    done = {}
    if os.path.isfile(out):
        with open(out) as f:
            done = {r["key"]: r for r in map(json.loads, f)}
    for budget in args.budgets:
        for seed in args.seeds if budget < demo.N_TRAIN else args.seeds[:1]:
            key = f"{args.method}_b{budget}_s{seed}"
            if key not in done:
                print(f"== {key}: pre-trained and scratch with {budget} labeled case(s), label seed {seed}",
                      flush=True)
                done[key] = {"key": key, "budget": budget, "seed": seed,
                             **run_one(directory, args.method, budget, seed)}
                with open(out, "a") as f:
                    f.write(json.dumps(done[key]) + "\n")
    print(f"\n{'budget':>6} {'seed':>4} {'pretrained':>10} {'scratch':>8} {'diff':>7}")
    for budget in args.budgets:
        rows = [r for r in done.values() if r["budget"] == budget and r["key"].startswith(args.method + "_")]
        for r in sorted(rows, key=lambda r: r["seed"]):
            print(f"{budget:>6} {r['seed']:>4} {r['pretrained']:>10.3f} {r['scratch']:>8.3f} "
                  f"{r['pretrained'] - r['scratch']:>+7.3f}")
        if rows:
            diffs = [r["pretrained"] - r["scratch"] for r in rows]
            print(f"{budget:>6} mean {statistics.mean(r['pretrained'] for r in rows):>10.3f} "
                  f"{statistics.mean(r['scratch'] for r in rows):>8.3f} {statistics.mean(diffs):>+7.3f}  "
                  f"pretrained ahead in {sum(d > 0 for d in diffs)} of {len(diffs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
