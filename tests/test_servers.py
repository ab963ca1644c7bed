"""Real servers on free loopback ports: `prefect server start` gets the scheduled retrain
deployment registered and read back through its API; `mlflow/start-server.sh` accepts a
run logged over HTTP. Both are stopped at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            tail = proc.stdout.read()[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_prefect_and_mlflow_servers(tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               BONEAGE_MLFLOW_DIR=str(tmp_path / "mlflow"))  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    pport, mport = _free_port(), _free_port()
    bg = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True,
          "start_new_session": True, "env": env}  # fmt: skip
    prefect = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(pport)], **bg
    )
    mlflow_srv = subprocess.Popen(
        ["bash", str(REPO / "mlflow/start-server.sh"), str(mport)], cwd=tmp_path, **bg
    )
    try:
        api = f"http://127.0.0.1:{pport}/api"
        _wait(f"{api}/health", prefect)
        reg = subprocess.run(
            [sys.executable, "-m", "flows.deployments", "--register-only"], cwd=REPO,
            env=dict(env, PREFECT_API_URL=api), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-3000:]
        deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        by_name = {d["name"]: d for d in deps}
        assert set(by_name) == {"retrain-scheduled", "score-cohort"}
        sched = by_name["retrain-scheduled"]["schedules"]
        assert len(sched) == 1 and sched[0]["schedule"]["cron"] == "0 3 * * 1"
        assert sched[0]["schedule"]["timezone"] == "UTC" and sched[0]["active"]
        assert by_name["retrain-scheduled"]["parameters"]["workdir"] == "data/retrain"
        assert not by_name["score-cohort"]["schedules"]  # on demand
        flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
        assert flows[by_name["retrain-scheduled"]["flow_id"]] == "boneage-retrain"

        uri = f"http://127.0.0.1:{mport}"
        _wait(f"{uri}/health", mlflow_srv)
        from boneage.tracking import Tracker

        t = Tracker(uri=uri)
        with t.run("server-test", "via-http", {"k": "v"}):
            t.log_metrics({"val_mae": 9.5})
            f = tmp_path / "note.txt"
            f.write_text("hello")
            t.log_artifact(f)
        import mlflow

        run = mlflow.MlflowClient(tracking_uri=uri).get_run(t.run_id)
        assert run.data.metrics["val_mae"] == 9.5 and run.data.tags["k"] == "v"
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()  # the script's SQLite store
        assert any((tmp_path / "mlflow" / "artifacts").rglob("note.txt"))
    finally:
        _stop(prefect)
        _stop(mlflow_srv)
    assert prefect.poll() is not None and mlflow_srv.poll() is not None
