#!/usr/bin/env bash
# The whole pipeline on the full RSNA 299-px training set, for the GPU machine:
#   here:    python benchmarks/pack_rsna.py                       # pack/rsna256, 56.9 MiB
#   device:  bash benchmarks/rsna_full_gpu.sh [PACK] [WORK] [PARAMS]   (carry: pack)
# ingest → validate → hand/r1/r2 localizers + attend → aggregator → evaluate → carpal head
# → ablation (O vs H+R1+R2 vs H+R1+E at the same budget); timings per step and all metrics
# in WORK/timings.tsv and WORK/reports/ (copied to $OUT when set).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
PACK=${1:-$HERE/pack/rsna256}
WORK=${2:-/tmp/boneage-rsna-full}
PARAMS=${3:-$HERE/benchmarks/params_rsna_full_gpu.yaml}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$WORK/mlflow.db}
mkdir -p "$WORK/reports"
cd "$WORK"
: > timings.tsv
step() {  # step NAME CMD...
  local name=$1; shift
  local t0
  t0=$(date +%s%N)
  "$@"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%d.%03d s\n' "$name" $((ms / 1000)) $((ms % 1000)) | tee -a timings.tsv
}
step ingest boneage ingest --cohort "$PACK" --labels "$PACK/labels.csv" --out ingest \
  --params "$PARAMS" --no-progress
step validate boneage validate --manifest ingest/manifest.parquet \
  --rejected ingest/rejected.parquet --out reports/validation --params "$PARAMS"
for s in hand r1 r2; do
  step "localizer_$s" boneage train-localizer --stage $s --ingest ingest --attend-root attend \
    --out models/localizer_$s --metrics reports/localizer_$s.json --params "$PARAMS" --no-progress
  step "attend_$s" boneage attend --stage $s --ingest ingest --attend-root attend \
    --model models/localizer_$s --reports reports/attend/$s --params "$PARAMS" --no-progress
done
step aggregator boneage train-aggregator --ingest ingest --attend-root attend \
  --out models/aggregator --metrics reports/aggregator.json --params "$PARAMS" --no-progress
step evaluate boneage evaluate --ingest ingest --attend-root attend --model models/aggregator \
  --out reports/evaluate --params "$PARAMS"
step carpal boneage train-aggregator --carpal --ingest ingest --attend-root attend \
  --out models/carpal --params "$PARAMS" --no-progress
step ablation boneage ablation --ingest ingest --attend-root attend --models-root models \
  --reports reports --params "$PARAMS"
cat reports/ablation.md timings.tsv
if [ -n "${OUT:-}" ]; then
  cp timings.tsv reports/ablation.md reports/evaluate/metrics.json "$OUT"/
  tar czf "$OUT/models.tgz" models/localizer_* models/aggregator models/carpal
fi
