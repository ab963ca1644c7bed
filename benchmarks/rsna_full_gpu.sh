#!/usr/bin/env bash
# The whole pipeline on the full RSNA 299-px training set, for the GPU machine:
#   here:    python benchmarks/pack_rsna.py                       # pack/rsna256, 56.9 MiB
#   device:  bash benchmarks/rsna_full_gpu.sh [PACK] [WORK] [PARAMS]   (carry: pack)
# ingest → validate → hand/r1/r2 localizers + attend → aggregator → evaluate → carpal head
# → ablation (O vs H+R1+R2 vs H+R1+E at the same budget) → bundle → export (int8 weights +
# model card: the models/rsna299 candidate); timings per step and all metrics in
# WORK/timings.tsv and WORK/reports/, the export in WORK/export/rsna299 (all copied to $OUT
# when set).
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
# The H+R1+R2 row is the aggregator just trained and evaluated (same params): reused, not
# trained twice (ablation --resume checks that its saved budget equals today's).
mkdir -p models/ablation reports/ablation
cp -rT models/aggregator "models/ablation/H+R1+R2"
cp -rT reports/evaluate "reports/ablation/H+R1+R2"
step ablation boneage ablation --ingest ingest --attend-root attend --models-root models \
  --reports reports --params "$PARAMS" --resume
# The reference model is the ablation row with the lowest VALIDATION MAE (test MAE only
# reported, never used to choose): its aggregator + the localizers + the carpal head,
# int8 weights + model card measured by scoring the test split's image files end to end
# (REF_COMMAND / REF_STATUS: what the card says produced it).
BEST=$(python -c "import json; r = json.load(open('reports/ablation.json'))['rows']; \
print(min(r, key=lambda x: x['val_mae'])['regions'].replace(' ', '_'))")
echo "reference: ablation row $BEST (lowest validation MAE)"
step bundle boneage bundle --models-root models --aggregator "models/ablation/$BEST" \
  --out models/bundle --params "$PARAMS"
step export boneage export --bundle models/bundle --out export/rsna299 --weights int8 \
  --ingest ingest --cohort "$PACK" --evaluation "reports/ablation/$BEST" \
  --ablation reports/ablation.json \
  --data-card "$HERE/profiles/rsna_data_card.md" \
  --command "${REF_COMMAND:-python benchmarks/pack_rsna.py && bash benchmarks/rsna_full_gpu.sh}" \
  --title "boneage rsna299 reference model" --use-path models/rsna299 \
  ${REF_STATUS:+--status "$REF_STATUS"}
cat reports/ablation.md timings.tsv
if [ -n "${OUT:-}" ]; then
  cp timings.tsv reports/ablation.md reports/evaluate/metrics.json "$OUT"/
  cp -r export/rsna299 "$OUT"/rsna299
fi
