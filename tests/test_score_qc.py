"""Acceptance: scoring a folder with rotated, inverted, non-hand, tiny and unreadable
images among good radiographs — the good ones scored exactly as without the bad ones,
each bad one corrected-and-flagged (with the age of its upright original) or rejected
with its reason; the QC flags separate (low_confidence is the calibration's business)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.score_cohort import score_cohort
from tests.bundle_factory import REPO, make_bundle
from tests.corpus import qc_corpus, save

REF = REPO / "models" / "rsna299"
GOOD = ("1377", "1378", "1380")  # three upright RSNA radiographs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), age=120)


def _hand(rsna299: Path, i: str) -> np.ndarray:
    return np.asarray(Image.open(rsna299 / "boneage-training-dataset" / f"{i}.jpg").convert("L"))


def _cohort(rsna299: Path, d: Path) -> dict[str, str]:
    expected = qc_corpus(d, _hand(rsna299, GOOD[0]))
    for i in GOOD[1:]:
        save(d / f"{i}.png", _hand(rsna299, i))
        expected[i] = ""
    return expected


def _qc_flags(flags: str) -> str:
    return ";".join(f for f in (flags or "").split(";") if f.startswith("auto_"))


def _check(df: pd.DataFrame, expected: dict[str, str]) -> None:
    df = df.set_index("id")
    assert sorted(df.index) == sorted(expected)  # one row per file, nothing lost
    for stem, want in expected.items():
        r = df.loc[stem]
        if want.startswith("error:"):
            reason = want.removeprefix("error:")
            assert r["status"] == "error" and r["error"].startswith(f"{reason}: "), (
                stem,
                r["error"],
            )
            assert "qc_reject" in r["flags"] and pd.isna(r["boneage_months"]), stem
        else:
            assert r["status"] == "ok", (stem, r["error"])
            assert _qc_flags(r["flags"]) == want, (stem, r["flags"])


def test_every_kind_of_bad_image_gets_its_exact_outcome(bundle, rsna299, tmp_path):
    d = tmp_path / "cohort"
    expected = _cohort(rsna299, d)
    s = score_cohort(str(bundle), d, tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    _check(df, expected)
    assert s["n"] == len(expected)
    assert s["flags"]["auto_inverted"] == 2 and s["flags"]["auto_rotated_90"] == 2
    # the good ones are scored exactly as they are without the bad ones
    g = tmp_path / "good"
    g.mkdir()
    for stem in ("good", *GOOD[1:]):
        shutil.copy(d / f"{stem}.png", g / f"{stem}.png")
    score_cohort(str(bundle), g, tmp_path / "out_good")
    alone = pd.read_parquet(tmp_path / "out_good" / "predictions.parquet").set_index("id")
    mixed = df.set_index("id").loc[alone.index]
    pd.testing.assert_frame_equal(mixed.drop(columns=["model_version"]),
                                  alone.drop(columns=["model_version"]))  # fmt: skip


@pytest.mark.slow
def test_acceptance_with_the_reference_model(rsna299, tmp_path):
    """Acceptance 3 with models/rsna299: good radiographs scored as before; the rotated and
    inverted copies corrected back to the same pixels, hence the same age as the upright
    original; the non-hand and the tiny image rejected with their reasons."""
    hand = _hand(rsna299, GOOD[0])
    d = tmp_path / "cohort"
    save(d / "upright.png", hand)
    for i in GOOD[1:]:
        save(d / f"{i}.png", _hand(rsna299, i))
    save(d / "rotated.png", np.rot90(hand, 1))
    save(d / "inverted.png", 255 - hand)
    from tests.corpus import noise, photo

    save(d / "photo.png", photo())
    save(d / "tiny.png", noise(10, 10))
    score_cohort(str(REF), d, tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "predictions.parquet").set_index("id")
    up = df.loc["upright"]
    for stem, flag in (("rotated", "auto_rotated_90"), ("inverted", "auto_inverted")):
        r = df.loc[stem]
        assert r["status"] == "ok" and flag in r["flags"].split(";"), r["flags"]
        # Same pixels, but scored in another batch position: CPU kernels may round the
        # last float bits differently (a CI machine gave 1.5e-5 months apart).
        assert r["boneage_months"] == pytest.approx(up["boneage_months"], abs=1e-3)
    assert df.loc["photo", "error"].startswith("not_a_hand: ")
    assert df.loc["tiny", "error"].startswith("too_small: ")
    g = tmp_path / "good"
    g.mkdir()
    for stem in ("upright", *GOOD[1:]):
        shutil.copy(d / f"{stem}.png", g / f"{stem}.png")
    score_cohort(str(REF), g, tmp_path / "out_good")
    alone = pd.read_parquet(tmp_path / "out_good" / "predictions.parquet").set_index("id")
    pd.testing.assert_series_equal(df.loc[alone.index, "boneage_months"], alone["boneage_months"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model_verified"] is True
