#!/usr/bin/env bash
# The CPU-sized interim reference model: the whole pipeline (profiles/run.py) on 4,000
# real RSNA 299-px images with profiles/rsna_cpu_reference.yaml, ending with the int8
# export + model card in WORK/run/export/rsna299 (what models/rsna299 holds).
#   bash profiles/rsna_cpu_reference.sh [WORK]            (~1 hour on 2 CPU cores)
# (Moved from benchmarks/, where the committed model card still names it; it ran the same
# boneage commands through the former benchmarks/rsna_full_gpu.sh.)
# The cohort is the first 4,012 rows of the RSNA training CSV minus the 12 ids of
# ../shared/data/rsna-bone-age-fullres, linked (never copied) into WORK/cohort, so the
# full-resolution originals stay unseen by every model and can test it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/boneage-rsna-ref}
SRC=${RSNA299:-$HERE/../shared/data/rsna-bone-age-299}
FULLRES=${RSNAFULL:-$HERE/../shared/data/rsna-bone-age-fullres}
N=4000
mkdir -p "$WORK/cohort"
tail -n +2 "$FULLRES/labels.csv" | cut -d, -f1 | sort > "$WORK/excluded_ids.txt"
{
  head -n 1 "$SRC/boneage-training-dataset.csv"
  tail -n +2 "$SRC/boneage-training-dataset.csv" \
    | awk -F, -v n=$N 'NR==FNR {skip[$1]=1; next} !($1 in skip) && kept < n {print; kept++}' \
      "$WORK/excluded_ids.txt" -
} > "$WORK/cohort/labels.csv"
tail -n +2 "$WORK/cohort/labels.csv" | cut -d, -f1 | while read -r id; do
  ln -sf "$SRC/boneage-training-dataset/$id.jpg" "$WORK/cohort/$id.jpg"
done
PYTHON=${PYTHON:-python3}
exec "$PYTHON" "$HERE/profiles/run.py" "$HERE/profiles/rsna_cpu_reference.yaml" \
  --work "$WORK/run" --cohort "$WORK/cohort" --labels "$WORK/cohort/labels.csv" \
  --command "bash profiles/rsna_cpu_reference.sh" \
  --export-status "interim, CPU-budget model (4,000 of the 12,611 images, 112-px networks, \
3-6 epochs on 2 CPU cores). It shows the package working end to end on real data; it is \
far from the method's accuracy. The full-set GPU job (profiles/gpu/job.sh, docs/gpu.md) \
replaces it once run. Not for clinical use."
