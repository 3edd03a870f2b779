#!/usr/bin/env bash
# Is the benchmark's CPU schedule long enough for stock nnU-Net? Trains the scratch arm of one finished benchmark run
# again with FACTOR times its epochs (same fold = same labeled subset, same plans, iterations per epoch and batch),
# predicts the same test split and prints both test Dice. Resumable: training continues with --c, finished steps are
# skipped.
#
#   WORK=/work/bench/stock FACTOR=2 scripts/benchmark_length_check.sh acdc 1 [OUT]
#
# $1 dataset key (acdc, hippocampus), $2 seed of a recorded scratch run (docs/benchmarks/low_label_cpu_runs), OUT
# (default $WORK/length_check/<dataset>_s<seed>_x<FACTOR>) gets nnUNet_results, predictions and summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
KEY="${1:?dataset key (acdc or hippocampus)}"
SEED="${2:?seed of a recorded scratch run}"
WORK="${WORK:?WORK= work dir of the benchmark (its nnUNet_raw, nnUNet_preprocessed and test split are re-used)}"
FACTOR="${FACTOR:-2}"
RECORD="docs/benchmarks/low_label_cpu_runs/$KEY/arms/scratch/b1_s$SEED/run.json"
[ -f "$RECORD" ] || { echo "error: no recorded run $RECORD" >&2; exit 2; }
OUT="${3:-$WORK/length_check/${KEY}_s${SEED}_x$FACTOR}"
mkdir -p "$OUT"
read -r DATASET_ID CONFIG FOLD SETTINGS LABELS < <(python - "$RECORD" "$FACTOR" "$KEY" <<'EOF'
import json, sys
from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.settings import settings_items
run, factor, key = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3]
items = dict(i.split("=", 1) for i in settings_items(run["settings"]))
items["num_epochs"] = str(int(round(int(items["num_epochs"]) * factor)))
d = DATASETS[key]
labels = ",".join(str(i) for i in range(1, 1 + {"acdc": 3, "hippocampus": 2}[key]))
print(d.dataset_id, run["configuration"], run["fold"], ",".join(f"{k}={v}" for k, v in items.items()), labels)
EOF
)
NAME=$(ls "$WORK/nnUNet_preprocessed" | grep "^Dataset${DATASET_ID}_")
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$OUT/nnUNet_results"
export NNUNET_SSL_SETTINGS="$SETTINGS"
FOLDER="$OUT/nnUNet_results/$NAME/nnUNetTrainer_schedule__nnUNetPlans__$CONFIG/fold_$FOLD"
echo "[$(date +%H:%M:%S)] $KEY seed $SEED (fold $FOLD): stock nnU-Net with $SETTINGS -> $OUT"
if [ ! -f "$FOLDER/checkpoint_final.pth" ]; then
  C=""; [ -f "$FOLDER/checkpoint_latest.pth" ] && C="--c"
  nnUNetv2_train "$NAME" "$CONFIG" "$FOLD" -tr nnUNetTrainer_schedule -p nnUNetPlans -device cpu $C
fi
if [ ! -f "$OUT/summary.json" ]; then
  nnUNetv2_predict -i "$WORK/$KEY/test/imagesTs" -o "$OUT/predictions" -d "$NAME" -c "$CONFIG" -f "$FOLD" \
    -tr nnUNetTrainer_schedule -p nnUNetPlans -device cpu -npp 1 -nps 1 --disable_progress_bar --disable_tta
  nnUNetv2_evaluate_simple "$WORK/$KEY/test/labelsTs" "$OUT/predictions" -l ${LABELS//,/ } -o "$OUT/summary.json" -np 1
fi
python - "$OUT/summary.json" "${RECORD%run.json}summary.json" "$FACTOR" <<'EOF'
import json, sys
new, old = (json.load(open(p))["foreground_mean"]["Dice"] for p in sys.argv[1:3])
print(f"test Dice (foreground mean): recorded schedule {old:.3f}, x{sys.argv[3]} epochs {new:.3f}, "
      f"difference {100 * (new - old):+.1f} Dice points")
EOF
