#!/usr/bin/env bash
# The region ablation on a CPU-sized subset of the real RSNA 299-px training set.
#   bash profiles/rsna_subset_ablation.sh [N_IMAGES] [WORKDIR]
# Links (never copies) the first N images of ../shared/data/rsna-bone-age-299 into
# WORKDIR/cohort, then: ingest → 3 localizers → attend ×3 → ablation (every region set of
# params ablation.configs, identical budget). Budget: profiles/rsna_cpu_subset.yaml.
# Result: WORKDIR/reports/ablation.md (and .json). ~20 min for N=900 on 2 CPU cores.
set -euo pipefail
N=${1:-900}
WORK=${2:-/tmp/boneage-rsna-ablation}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC=${RSNA299:-$HERE/../shared/data/rsna-bone-age-299}
PARAMS=$HERE/profiles/rsna_cpu_subset.yaml
mkdir -p "$WORK/cohort"
head -n $((N + 1)) "$SRC/boneage-training-dataset.csv" > "$WORK/labels.csv"
tail -n +2 "$WORK/labels.csv" | cut -d, -f1 | while read -r id; do
  ln -sf "$SRC/boneage-training-dataset/$id.jpg" "$WORK/cohort/$id.jpg"
done
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$WORK/mlflow.db}
cd "$WORK"
boneage ingest --cohort "$WORK/cohort" --labels "$WORK/labels.csv" --out ingest --params "$PARAMS" --no-progress
for s in hand r1 r2; do
  boneage train-localizer --stage $s --ingest ingest --attend-root attend --out models/localizer_$s \
    --params "$PARAMS" --no-progress
  boneage attend --stage $s --ingest ingest --attend-root attend --model models/localizer_$s \
    --reports reports/attend/$s --params "$PARAMS" --no-progress
done
time boneage ablation --ingest ingest --attend-root attend --models-root models --reports reports \
  --params "$PARAMS"
cat reports/ablation.md
