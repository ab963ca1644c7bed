"""Model bundles are verified on load (finding 2): every file against bundle.json, a
modified bundle refused with a clear error (`error:` + exit 2, finding 8, also for
tampered model dirs under --trust-modified), --trust-modified recorded in every output,
and the model version derived from the verified contents."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from boneage.bundle import ScoreError, load_bundle
from boneage.registry import open_model
from boneage.score_cohort import score_cohort
from tests.bundle_factory import REPO, make_bundle, rsna_cohort

REF = REPO / "models" / "rsna299"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), age=120)


@pytest.fixture()
def bundle(pristine, tmp_path) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(pristine, b)
    return b


@pytest.fixture(scope="module")
def cohort(rsna299, tmp_path_factory) -> Path:
    return rsna_cohort(rsna299, tmp_path_factory.mktemp("c") / "c", 2)


def _score(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boneage.cli", "score", *args],
                          capture_output=True, text=True)  # fmt: skip


def test_bundle_records_every_file_and_verifies(bundle):
    meta = json.loads((bundle / "bundle.json").read_text())
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(meta["files_sha256"]) == files - {"bundle.json"}
    assert "qc/model.pt" in meta["files_sha256"]  # the QC network travels with the bundle
    b = load_bundle(bundle)
    assert b.modified == () and len(b.content_sha256) == 64


def test_committed_reference_model_verifies():
    o = open_model(REF)
    assert o.modified == () and o.version.startswith("local-")


@pytest.mark.parametrize("tamper", ["weights", "params", "config", "extra_file", "missing"])
def test_a_modified_bundle_is_refused(bundle, tamper):
    if tamper == "weights":  # another component's weights swapped in: changes the ages
        shutil.copy(bundle / "carpal" / "model.pt", bundle / "aggregator" / "model.pt")
    elif tamper == "params":  # e.g. input checks switched off
        p = bundle / "params.yaml"
        p.write_text(p.read_text().replace("min_std: 2.0", "min_std: 0.0"))
    elif tamper == "config":
        c = bundle / "localizer_hand" / "config.json"
        c.write_text(c.read_text().replace('"img_size": 48', '"img_size": 64'))
    elif tamper == "extra_file":
        (bundle / "aggregator" / "payload.pt").write_bytes(b"planted")
    else:
        (bundle / "localizer_r2" / "config.json").unlink()
    with pytest.raises(ScoreError, match="does not match its bundle.json"):
        open_model(bundle)


def test_modified_bundle_cli_exit_2_and_trust_modified_is_recorded(bundle, cohort, tmp_path):
    shutil.copy(bundle / "carpal" / "model.pt", bundle / "aggregator" / "model.pt")
    p = _score(["--model", str(bundle), "--cohort", str(cohort), "--out", str(tmp_path / "o")])
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert "aggregator/model.pt: contents changed" in p.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    p = _score(["--model", str(bundle), "--cohort", str(cohort), "--out", str(tmp_path / "t"),
                "--trust-modified"])  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "MODIFIED bundle" in p.stderr
    df = pd.read_parquet(tmp_path / "t" / "predictions.parquet")
    assert df["flags"].str.contains("model_modified").all()
    assert df["model_version"].str.endswith("-modified").all()
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["trust_modified"] is True and summary["model_verified"] is False
    assert any("aggregator/model.pt" in m for m in summary["modified_files"])


def test_version_is_derived_from_the_verified_contents(pristine, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pristine, a)
    shutil.copytree(pristine, b)
    assert open_model(a).version == open_model(b).version  # same files, same version
    # a consistently re-sealed swap (bundle.json rewritten to match) is a new version
    shutil.copy(b / "carpal" / "model.pt", b / "aggregator" / "model.pt")
    from boneage.bundle import seal_bundle
    from boneage.fingerprint import file_hash

    meta = json.loads((b / "bundle.json").read_text())
    meta["weights_sha256"]["aggregator"] = file_hash(b / "aggregator" / "model.pt")
    seal_bundle(b, meta)
    assert open_model(b).modified == ()
    assert open_model(b).version != open_model(a).version


@pytest.mark.parametrize("tamper", ["pickle", "backbone", "params_key"])
def test_tampered_model_dir_is_error_exit_2_not_a_traceback(bundle, cohort, tmp_path, tamper):
    """Finding 8: even with --trust-modified, a pickle payload, an unknown backbone scheme
    or an unknown params key is an `error:` line and exit 2."""
    marker = tmp_path / "pwned"
    if tamper == "pickle":

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"w": Payload()}, bundle / "localizer_hand" / "model.pt")
    elif tamper == "backbone":
        c = bundle / "aggregator" / "config.json"
        meta = json.loads(c.read_text())
        meta["model"]["backbone"] = "evil:thing"
        c.write_text(json.dumps(meta))
    else:
        p = bundle / "params.yaml"
        p.write_text(p.read_text() + "surprise:\n  key: 1\n")
    p = _score(["--model", str(bundle), "--cohort", str(cohort), "--out", str(tmp_path / "o"),
                "--trust-modified"])  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    assert not marker.exists()


def test_trusting_an_unmodified_bundle_changes_nothing(pristine, cohort, tmp_path):
    s = score_cohort(str(pristine), cohort, tmp_path / "o", trust_modified=True)
    assert s["model_verified"] is True and "trust_modified" not in s
