"""Experiment tracking (MLflow is imported only here, in boneage.registry and in the
pyfunc model file boneage/mlflow_model.py).

Default backend: SQLite at ``mlflow/mlflow.db`` under the working directory (MLflow
≥ 3.13 refuses the ``./mlruns`` file store), artifacts under ``mlflow/artifacts``.
``MLFLOW_TRACKING_URI`` overrides it (e.g. ``http://127.0.0.1:5000`` for the server
started by ``mlflow/start-server.sh``). Only parameters, metrics and files the pipeline
produces are logged — never DICOM headers or anything else identifying a patient.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("mlflow")


def default_tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}; lists/tuples become strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list | tuple):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out


#: set to 1 to switch tracking off in every command (profiles/run.py --no-track does, for
#: the GPU machine, where MLflow is not installed)
NO_TRACK_ENV = "BONEAGE_NO_TRACK"


class Tracker:
    """A thin wrapper over one MLflow run. Methods are no-ops when `enabled` is False
    (tests, non-zero DDP ranks, `--no-track`, BONEAGE_NO_TRACK=1)."""

    def __init__(self, enabled: bool = True, uri: str | None = None):
        from boneage.distributed import is_main

        off = os.environ.get(NO_TRACK_ENV, "") not in ("", "0")
        self.enabled = enabled and is_main() and not off  # under torchrun only rank 0 logs
        self.uri = uri or default_tracking_uri()
        self.run_id: str | None = None
        self._mlflow = None

    def _client(self):
        if self._mlflow is None:
            import mlflow

            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(self.uri)
            self._mlflow = mlflow
        return self._mlflow

    def _experiment(self, name: str) -> str:
        mlflow = self._client()
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            root = Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts"
            location = (root / name).resolve().as_uri()
        return mlflow.create_experiment(name, artifact_location=location)

    @contextmanager
    def run(
        self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
    ) -> Iterator[Tracker]:
        if not self.enabled:
            yield self
            return
        mlflow = self._client()
        exp_id = self._experiment(experiment)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags or {})) as r:
            self.run_id = r.info.run_id
            yield self

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
            self._client().log_params(flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            self._client().log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            path = Path(path)
            if path.is_dir():
                self._client().log_artifacts(str(path), artifact_path)
            else:
                self._client().log_artifact(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            self._client().set_tags(dict(tags))
