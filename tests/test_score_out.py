"""`score --out` never destroys a user's files (finding 3): a non-empty folder that is not
an earlier run of the same cohort and model is refused untouched; nothing score did not
create is deleted or overwritten; an unusable OUT is `error:` + exit 2 (finding 8);
resuming keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from boneage.bundle import ScoreError
from boneage.score_cohort import score_cohort
from tests.bundle_factory import make_bundle, rsna_cohort


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), age=120)


@pytest.fixture(scope="module")
def cohort(rsna299, tmp_path_factory) -> Path:
    return rsna_cohort(rsna299, tmp_path_factory.mktemp("c") / "c", 2)


def _score(bundle: Path, cohort: Path, out: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boneage.cli", "score", "--model", str(bundle),
                           "--cohort", str(cohort), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_a_users_folder_is_refused_and_left_untouched(bundle, cohort, tmp_path):
    out = tmp_path / "mine"
    (out / ".work").mkdir(parents=True)
    (out / ".work" / "draft.txt").write_text("my notes")
    (out / "predictions.csv").write_text("my own table\n")
    (out / "overlays").mkdir()
    (out / "overlays" / "x.png").write_bytes(b"mine")
    before = _snapshot(out)
    p = _score(bundle, cohort, out)
    assert p.returncode == 2 and p.stderr.startswith("error: "), p.stderr
    assert "not empty" in p.stderr and "Nothing in it was changed" in p.stderr
    assert _snapshot(out) == before
    assert sorted(x.name for x in out.iterdir()) == [".work", "overlays", "predictions.csv"]


def test_rerun_resumes_and_keeps_what_score_did_not_create(bundle, cohort, tmp_path):
    out = tmp_path / "run"
    score_cohort(str(bundle), cohort, out, cohort / "labels.csv")
    first = pd.read_parquet(out / "predictions.parquet")
    (out / "notes.txt").write_text("reviewed by Dr X")  # added by the user after the run
    (out / ".work").mkdir()
    (out / ".work" / "mine.txt").write_text("keep me")
    s = score_cohort(str(bundle), cohort, out, cohort / "labels.csv")
    assert s["shards_scored_now"] == 0 and s["shards_reused"] == s["shards"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "predictions.parquet"), first)
    assert (out / "notes.txt").read_text() == "reviewed by Dr X"
    assert (out / ".work" / "mine.txt").read_text() == "keep me"


def test_another_cohort_or_model_in_an_earlier_run_is_refused(bundle, cohort, rsna299, tmp_path):
    out = tmp_path / "run"
    score_cohort(str(bundle), cohort, out, cohort / "labels.csv")
    other = rsna_cohort(rsna299, tmp_path / "other", 2, start=7)
    before = _snapshot(out)
    with pytest.raises(ScoreError, match="different cohort, model or shard size"):
        score_cohort(str(bundle), other, out, other / "labels.csv")
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["file", "unwritable", "inside_cohort"])
def test_unusable_out_is_error_exit_2(bundle, cohort, tmp_path, kind):
    if kind == "file":
        out = tmp_path / "out.txt"
        out.write_text("a file, not a folder")
    elif kind == "unwritable":
        out = Path("/proc/boneage-out")  # a read-only location even for root
    else:
        out = cohort / "results"
    p = _score(bundle, cohort, out)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    if kind == "file":
        assert out.read_text() == "a file, not a folder"
    if kind == "inside_cohort":
        assert not out.exists()
