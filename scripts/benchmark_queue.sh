#!/usr/bin/env bash
# The low-label benchmark's CPU campaign, one queue line after the other.
#
#   WORK=~/low_label_work COMMIT=1 [DEADLINE=HH:MM] scripts/benchmark_queue.sh [QUEUE]
#
# Each line of QUEUE (default: scripts/benchmark_queue_cpu.txt; '#' starts a comment) holds arguments of
# scripts/benchmark_low_label.py, run with --profile cpu --stage runs --order arm. Runs already evaluated, in the
# work dir or in the record (docs/benchmarks/low_label_cpu_runs), are skipped, so the same queue continues on any
# machine from the first run the record lacks. COMMIT=1: commit the record's folder (and only it) after every run
# and pre-training the driver records (--commit-record) and after every line.
# Stops at the first failing line (exit code of the driver).
set -u
cd "$(dirname "$0")/.."
QUEUE="${1:-scripts/benchmark_queue_cpu.txt}"
WORK="${WORK:-./low_label_work/stock}"
RECORD="${RECORD:-docs/benchmarks/low_label_cpu_runs}"
PYTHON="${PYTHON:-python}"
[ -f "$QUEUE" ] || { echo "error: queue file $QUEUE not found" >&2; exit 2; }
# DEADLINE=HH:MM (or +MIN): a first pass starts only the runs estimated to finish before it (--deadline: epoch times
# of nnU-Net's logs on this machine, else in the record), so a session or job with a time limit spends it on runs
# that finish, and continues the runs stopped in the work dir whatever they still need (with --c, from their last
# checkpoint); then a second pass without it starts what is left in queue order (a run the stop interrupts continues
# with --c if the machine survives).
run_queue() {  # $1: extra driver arguments of this pass
  local n=0 line rc
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    [ -z "${line// /}" ] && continue
    n=$((n + 1))
    echo "[$(date +%H:%M:%S)] queue line $n: $line${1:+ ($1)}"
    # shellcheck disable=SC2086
    "$PYTHON" scripts/benchmark_low_label.py --profile cpu --work-dir "$WORK" --stage runs --order arm $line $1 \
      $([ "${COMMIT:-0}" = 1 ] && echo --commit-record) || {
      rc=$?; echo "[$(date +%H:%M:%S)] queue line $n failed (exit $rc): $line" >&2; exit $rc; }
    if [ "${COMMIT:-0}" = 1 ] && [ -d "$RECORD" ] && [ -n "$(git status --porcelain -- "$RECORD")" ]; then
      git add -A -- "$RECORD" && git commit -q -m "Benchmark record: $line" -- "$RECORD" \
        && echo "[$(date +%H:%M:%S)] committed the record"
    fi
  done < "$QUEUE"
}
if [ -n "${DEADLINE:-}" ]; then
  # one fixed moment for every line (HH:MM read again after midnight would mean the next day)
  at=$("$PYTHON" -c "from nnunet_ssl.benchmark.pace import parse_deadline as p; print(int(p('$DEADLINE')))") || {
    echo "error: DEADLINE=$DEADLINE: expected HH:MM or +MIN" >&2; exit 2; }
  run_queue "--deadline $at"
  echo "[$(date +%H:%M:%S)] every run that fits before $DEADLINE ran; now the rest, in queue order"
fi
run_queue ""
echo "[$(date +%H:%M:%S)] queue done: every line ran"
