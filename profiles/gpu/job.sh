#!/usr/bin/env bash
# The GPU job: the whole pipeline on the full RSNA set in ONE device call (docs/gpu.md).
#
#   bash profiles/gpu/job.sh --out "$OUT" [--profile profiles/rsna_gpu_full.yaml]
#       [--pack .gpu/pack] [--wheels .gpu/wheels] [--weights .gpu/weights]
#       [--work DIR] [--deadline 530] [--bench-steps 30] [--status TEXT]
#
# 1. installs the carried wheels (what boneage needs and the machine lacks: pydantic) with
#    `pip install --no-index --target WORK/site`; the ImageNet weights come from the
#    compact file in --weights (BONEAGE_OFFLINE_WEIGHTS_DIR); MLflow is off (--no-track);
# 2. profiles/run.py PROFILE on the pack, step `ingest` first, then the GPU training
#    throughput benchmark (real vs synthetic images/s, benchmarks/train_throughput.py),
#    then profiles/gpu/fit_budget.py (at the measured speed, does the profile's training
#    fit the time left? if not, every epoch count is scaled down, and the log says so),
#    then the rest of the pipeline: 3 localizers + attend, aggregator, evaluate, carpal
#    head, ablation O vs H+R1+R2, for the row with the lowest validation MAE: calibrate,
#    evaluate with calibration, bundle, export with model card (`validate` is skipped:
#    Great Expectations is not there);
# 3. profiles/gpu/result.py packs what must come back into <= 8 files <= 16 MiB under
#    --out — always, also after a failure or when the pipeline ran out of time: each
#    stage runs under `timeout` so that the whole job ends by --deadline seconds.
# The same script runs the CPU rehearsal (profiles/gpu/rehearse.py) with a small pack.
# Exit status: the pipeline's (0 = complete), or the result step's when that failed.
set -uo pipefail
T0=$SECONDS
REPO=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${PYTHON:-}" ]; then  # the machine's Python with torch: python3, else python
  for p in python3 python; do
    if command -v $p >/dev/null && $p -c "import torch" 2>/dev/null; then PYTHON=$p; break; fi
  done
  PYTHON=${PYTHON:-python3}
fi
OUT=
PROFILE=$REPO/profiles/rsna_gpu_full.yaml
PACK=$REPO/.gpu/pack
WHEELS=$REPO/.gpu/wheels
WEIGHTS=$REPO/.gpu/weights
WORK=${TMPDIR:-/tmp}/boneage-gpu-job
DEADLINE=530
BENCH_STEPS=30
STATUS="full-set GPU run (all 12,611 RSNA 299-px training images except the 12 \
full-resolution ids, profiles/rsna_gpu_full.yaml, one H200 in one device call of \
profiles/gpu/job.sh). Not for clinical use."
RESERVE=40  # seconds kept for the result step after the pipeline's deadline
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2 ;;
    --profile) PROFILE=$2 ;;
    --pack) PACK=$2 ;;
    --wheels) WHEELS=$2 ;;
    --weights) WEIGHTS=$2 ;;
    --work) WORK=$2 ;;
    --deadline) DEADLINE=$2 ;;
    --bench-steps) BENCH_STEPS=$2 ;;
    --status) STATUS=$2 ;;
    *) echo "job.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$OUT" ] || { echo "job.sh: --out DIR is required (on the device: --out \"\$OUT\")" >&2; exit 2; }
abspath() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
mkdir -p "$OUT" "$WORK"
OUT=$(abspath "$OUT"); WORK=$(abspath "$WORK"); PROFILE=$(abspath "$PROFILE")
PACK=$(abspath "$PACK"); WHEELS=$(abspath "$WHEELS"); WEIGHTS=$(abspath "$WEIGHTS")
exec > >(tee -a "$WORK/job.log") 2>&1
left() { echo $((DEADLINE - RESERVE - (SECONDS - T0))); }
say() { printf '[job %4ds] %s\n' $((SECONDS - T0)) "$*"; }
STATE=$WORK/job_state.tsv  # phase, exit status, seconds: read by result.py
: > "$STATE"
phase() {  # phase NAME LIMIT_S CMD...: run CMD under timeout, record its status
  local name=$1 limit=$2 t=$SECONDS rc
  shift 2
  if [ "$limit" -le 5 ]; then
    say "$name: not started, no time left before the deadline"
    printf '%s\t%s\t%s\n' "$name" "no-time" 0 >> "$STATE"
    return 124
  fi
  say "$name: start (limit ${limit} s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t)) >> "$STATE"
  [ $rc -eq 124 ] && say "$name: TIMED OUT after ${limit} s (the deadline)"
  say "$name: exit $rc after $((SECONDS - t)) s"
  return $rc
}
finish() {
  local rc=$1
  say "result: packing into $OUT"
  timeout 60 "$PYTHON" "$REPO/profiles/gpu/result.py" --work "$WORK" --out "$OUT" \
    --profile "${USE:-$PROFILE}" --pack "$PACK"
  local rrc=$?
  say "job done: pipeline exit $rc, result exit $rrc, $((SECONDS - T0)) s in all"
  [ $rc -ne 0 ] && exit $rc
  exit $rrc
}

say "repo $REPO; work $WORK; out $OUT; profile $PROFILE; deadline ${DEADLINE} s"
for d in "$PACK" "$WHEELS" "$WEIGHTS"; do
  [ -d "$d" ] || { say "MISSING carried folder $d (see docs/gpu.md: make gpu-prepare)"; finish 2; }
done
say "pack: $(du -sh "$PACK" | cut -f1); wheels: $(ls "$WHEELS" | tr '\n' ' ')"

# 1. the Python: carried wheels into WORK/site, this checkout's boneage, compact weights
rm -rf "$WORK/site"
if ! phase install 120 "$PYTHON" -m pip install --no-index --no-cache-dir \
    --disable-pip-version-check --quiet --target "$WORK/site" "$WHEELS"/*.whl; then
  say "pip could not install the wheels; unpacking them into $WORK/site instead"
  for w in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$w" "$WORK/site" || finish 3; done
fi
export PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
export BONEAGE_OFFLINE_WEIGHTS_DIR=$WEIGHTS
export PYTHONUNBUFFERED=1
"$PYTHON" - <<'EOF' || finish 3
import importlib.util, os, platform, sys
import torch
import boneage.config  # pydantic from the carried wheels
from boneage.pretrained import offline_weights_file
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}; "
      f"cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
      + f"; {os.cpu_count()} CPUs")
print("pydantic from", os.path.dirname(importlib.util.find_spec("pydantic").origin))
print("ImageNet weights:", offline_weights_file("tf_efficientnet_lite0"))
spec = importlib.util.find_spec("mlflow")  # the repo's mlflow/ folder: a namespace, origin None
print("MLflow tracking is OFF in this job (run.py --no-track; MLflow is "
      + ("not installed here" if spec is None or spec.origin is None else "installed, unused")
      + "): the metrics come back as the reports/ files")
EOF

# the images: one archive in the pack (what travels), unpacked here
rm -rf "$WORK/pack"
mkdir -p "$WORK/pack"
phase unpack 60 tar -xzf "$PACK/images.tar.gz" -C "$WORK/pack" || finish $?
say "unpacked $(ls "$WORK/pack/images" | wc -l) images into $WORK/pack/images"

RUN=(--work "$WORK/run" --cohort "$WORK/pack/images" --labels "$PACK/labels.csv"
     --holdout "$PACK/holdout.csv" --no-track --skip validate
     --command "bash profiles/gpu/job.sh --out \"\$OUT\" (one device call; docs/gpu.md)"
     --export-title "boneage rsna299 reference model" --export-status "$STATUS")

# 2. ingest, the throughput benchmark on its store, the budget check, the rest
phase ingest "$(left)" "$PYTHON" "$REPO/profiles/run.py" "$PROFILE" "${RUN[@]}" --until ingest \
  || finish $?
phase throughput "$(( $(left) < 120 ? $(left) : 120 ))" "$PYTHON" \
  "$REPO/benchmarks/train_throughput.py" --store "$WORK/run/ingest/store" \
  --params "$PROFILE" --amp bf16 --steps "$BENCH_STEPS" --json "$WORK/throughput.json" \
  || say "throughput benchmark failed; the pipeline goes on"
USE=$PROFILE
if [ -f "$WORK/throughput.json" ]; then
  "$PYTHON" "$REPO/profiles/gpu/fit_budget.py" --profile "$PROFILE" \
    --throughput "$WORK/throughput.json" --manifest "$WORK/run/ingest/manifest.parquet" \
    --seconds "$(left)" --out "$WORK/profile_fitted.yaml" --report "$WORK/budget.json" \
    || say "budget check failed; the profile runs as it is"
  [ -f "$WORK/profile_fitted.yaml" ] && USE=$WORK/profile_fitted.yaml
fi
phase pipeline "$(left)" "$PYTHON" "$REPO/profiles/run.py" "$USE" "${RUN[@]}"
finish $?
