#!/usr/bin/env bash
# Start the MLflow tracking server + model registry for boneage, bound to loopback only.
#   mlflow/start-server.sh [PORT]      (default 5000; UI at http://127.0.0.1:PORT)
# Backend: SQLite (mlflow/mlflow.db). Artifacts: mlflow/artifacts/. MLflow >= 3.13 refuses
# a ./mlruns file store, so SQLite is the default everywhere in this project.
# BONEAGE_MLFLOW_DIR=DIR keeps the store and artifacts in DIR instead (tests use it).
set -euo pipefail
here="${BONEAGE_MLFLOW_DIR:-$(cd "$(dirname "$0")" && pwd)}"
port="${1:-5000}"
mkdir -p "$here/artifacts"
exec mlflow server \
  --host 127.0.0.1 --port "$port" \
  --backend-store-uri "sqlite:///$here/mlflow.db" \
  --artifacts-destination "$here/artifacts" \
  --serve-artifacts
