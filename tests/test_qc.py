"""Image QC (boneage.qc): the pieces, training end to end on a small synthetic ingest, the
committed QC model's size and measured rates, QC inside ingest (rejected.csv, manifest
flags), and (slow) the committed model on real RSNA test images and the bad-image corpus."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.config import IngestConfig, IngestQCConfig, load_params
from boneage.ingest import ingest
from boneage.qc import DEFAULT_QC_DIR, QCModelError, correct, load_qc, prepare, size_problem
from boneage.qc_measure import auroc, outcome
from boneage.qc_negatives import NEGATIVE_KINDS, corpus, synthetic_negative
from boneage.qc_train import train_qc
from boneage.rejects import Reason
from boneage.store import ImageStore
from tests.bundle_factory import REPO
from tests.corpus import gradient, noise, photo, save

QC_ON = IngestQCConfig(enabled=True)


def _fixes(v) -> tuple[str, ...]:
    return tuple(f for f in v.flags if f.startswith("auto_"))


@pytest.fixture(scope="module")
def hands(rsna299) -> dict[str, np.ndarray]:
    d = rsna299 / "boneage-training-dataset"
    ids = pd.read_csv(rsna299 / "boneage-training-dataset.csv")["id"].astype(str).tolist()
    return {i: np.asarray(Image.open(d / f"{i}.jpg").convert("L")) for i in ids[:6]}


def test_prepare_letterboxes_and_stretches():
    px = np.zeros((200, 100), np.uint8)
    px[:, :] = np.linspace(20, 120, 100, dtype=np.uint8)
    a = prepare(px, 64)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert (a[:, :16] == 0).all() and (a[:, -16:] == 0).all()  # letterbox bars
    assert a[:, 16:48].max() == pytest.approx(1.0) and a[:, 16:48].min() == 0.0


def test_size_rules_and_correction_round_trip():
    cfg = IngestQCConfig(min_side=96, max_aspect=4)
    assert size_problem(10, 10, cfg) and "shorter side" in size_problem(10, 10, cfg)
    assert "long/short" in size_problem(200, 2000, cfg)
    assert size_problem(299, 299, cfg) is None and size_problem(2044, 1514, cfg) is None
    px = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for turns in range(4):
        for inv in (False, True):
            bad = np.rot90(255 - px if inv else px, turns)
            np.testing.assert_array_equal(correct(bad, turns, inv), px)


@pytest.mark.parametrize("kind", NEGATIVE_KINDS)
def test_synthetic_negatives(kind):
    rng = np.random.default_rng(0)
    hand = rng.random((80, 80)).astype(np.float32)
    a = synthetic_negative(kind, rng, 80, hand)
    assert a.shape == (80, 80) and a.min() >= 0 and a.max() <= 1 and a.std() > 0


def test_auroc():
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5


def test_committed_qc_model_is_small_and_measured():
    """The QC network shipped with the package: well under 1 MB, thresholds set on the
    validation split, and the rates measured on the real test split meet the goals."""
    assert (DEFAULT_QC_DIR / "model.pt").stat().st_size < 500_000
    meta = json.loads((DEFAULT_QC_DIR / "config.json").read_text())
    assert meta["thresholds_set_on"]["split"] == "val"
    t = meta["thresholds"]
    assert 0 < t["hand_prob"] < 1 and 0 < t["orientation_prob"] < 1 and t["distance"] > 0
    m = json.loads((DEFAULT_QC_DIR / "metrics.json").read_text())
    assert m["test"]["n"] > 1000  # the project's real test split of RSNA
    assert m["test"]["false_reject_rate"] <= 0.005
    assert m["test"]["corpus"]["catch_rate"] >= 0.99
    assert load_qc().size == meta["img_size"]


def test_broken_qc_model_is_a_clear_error(tmp_path):
    with pytest.raises(QCModelError, match="no QC model"):
        load_qc(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "boneage-qc/1"}))
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(QCModelError, match="cannot load the QC model"):
        load_qc(tmp_path)


def test_committed_qc_on_real_hands_and_the_corpus_kinds(hands):
    """Each upright RSNA radiograph passes untouched; every turned / inverted copy is
    turned / inverted back exactly; photos, noise and gradients are not hands."""
    model = load_qc()
    for i, px in hands.items():
        assert outcome(px, model, QC_ON) == "ok", i
        for turns in (1, 2, 3):
            v = model.assess(np.rot90(px, turns))
            assert _fixes(v) == (f"auto_rotated_{90 * turns}",) and not v.reject, (i, turns)
            np.testing.assert_array_equal(v.pixels, px)
        v = model.assess(255 - px)
        assert _fixes(v) == ("auto_inverted",) and not v.reject, i
        np.testing.assert_array_equal(v.pixels, px)
    for name, px in (("photo", photo()), ("noise", noise()), ("gradient", gradient())):
        assert outcome(px, model, QC_ON) == "not_a_hand", name
    assert outcome(noise(10, 10), model, QC_ON) == "too_small"
    assert outcome(noise(20, 2000), model, QC_ON) == "too_small"


def test_qc_in_ingest_corrects_flags_and_rejects(hands, tmp_path):
    d = tmp_path / "cohort"
    (a, pa), (b, pb) = list(hands.items())[:2]
    save(d / f"{a}.png", pa)
    save(d / f"{b}.png", np.rot90(255 - pb, 3))  # inverted, lying 270° counter-clockwise
    save(d / "noise.png", noise())
    save(d / "tiny.png", noise(12, 12))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"id,boneage,male\n{a},100,1\n{b},110,0\nnoise,50,1\ntiny,60,0\n")
    cfg = IngestConfig(workers=1, qc=QC_ON)
    res = ingest(d, labels, tmp_path / "out", cfg, progress=False)
    man = res.manifest.set_index("id")
    assert sorted(man.index) == sorted([a, b])
    assert (
        man.loc[a, "qc_flags"] == "" and man.loc[b, "qc_flags"] == "auto_inverted;auto_rotated_270"
    )
    np.testing.assert_array_equal(ImageStore(tmp_path / "out" / "store").get(b).pixels, pb)
    assert man.loc[b, "orig_height"] == pb.shape[0]  # the corrected image's size
    rej = pd.read_csv(tmp_path / "out" / "rejected.csv").set_index("id")
    assert rej.loc["noise", "reason"] == Reason.NOT_A_HAND
    assert rej.loc["tiny", "reason"] == Reason.TOO_SMALL
    assert 0 < man.loc[a, "qc_hand_score"] <= 1


def test_qc_is_on_for_scoring_and_real_training_ingests():
    assert not IngestConfig().qc.enabled  # library default: off (unit tests' textures)
    p = load_params(REPO / "params.yaml")
    assert p.score.qc  # scoring always runs it; the synthetic demo's ingest does not
    for profile in ("rsna_gpu_full.yaml", "rsna_cpu_reference.yaml"):
        real = load_params(REPO / "profiles" / profile)
        assert real.ingest.qc.enabled and real.ingest.qc.model == "default", profile


def test_train_qc_end_to_end_on_a_small_ingest(tmp_path):
    """train-qc on a tiny synthetic ingest: weights + config with validation thresholds +
    metrics (test split, corpus); the model loads and judges images."""
    from boneage.demo import make_demo_cohort

    make_demo_cohort(tmp_path / "demo", n=40, seed=1, size=160)
    cfg = IngestConfig(workers=1, store_long_side=160)
    ingest(tmp_path / "demo" / "images", tmp_path / "demo" / "labels.csv", tmp_path / "ing",
           cfg, progress=False)  # fmt: skip
    params = load_params(REPO / "params.yaml", {
        "qc": {"train": {"max_images": 24, "epochs": 1, "batch_size": 16}},
    })  # fmt: skip
    m = train_qc(params, tmp_path / "ing", tmp_path / "qc")
    meta = json.loads((tmp_path / "qc" / "config.json").read_text())
    assert set(meta["thresholds"]) == {"correct_prob", "orientation_prob", "hand_prob",
                                       "distance"}  # fmt: skip
    assert meta["thresholds_set_on"]["split"] == "val"
    assert m["weights_bytes"] < 500_000 and "test" in m
    assert set(m["signals_val"]["auroc"]) >= {"hand_head_vs_synthetic_negatives",
                                              "feature_distance_mahalanobis",
                                              "foreground_evidence_otsu"}  # fmt: skip
    assert json.loads((tmp_path / "qc" / "metrics.json").read_text())["n_parameters"] > 0
    model = load_qc(tmp_path / "qc")
    v = model.assess(noise())
    assert v.pixels.shape == (400, 320) and 0 <= v.hand_prob <= 1


def test_corpus_builder_covers_every_kind(hands):
    items = corpus(dict(list(hands.items())[:4]), seed=0)
    kinds = {k for k, *_ in items}
    assert {"rotated_90", "rotated_180", "rotated_270", "inverted", "inverted_rotated_90",
            "tiny_hand", "photo", "tiny_image"} <= kinds  # fmt: skip
    assert any(k.startswith("synthetic_") for k in kinds)
    assert {e for *_, e in items} >= {"auto_rotated_90", "auto_inverted", "not_a_hand", "too_small"}


@pytest.mark.slow
def test_committed_qc_on_real_test_images(rsna299, tmp_path):
    """The committed QC on 400 images of the project's real test split (ids the QC never
    trained on) and the corpus made from 60 of them: few false rejects, and the bad
    images caught (the full measurement: docs/qc.md)."""
    from boneage.config import SplitConfig
    from boneage.split import assign_split

    labels = pd.read_csv(rsna299 / "boneage-training-dataset.csv")
    ids = [str(i) for i in labels["id"] if assign_split(str(i), SplitConfig()) == "test"][:400]
    d = rsna299 / "boneage-training-dataset"
    px = {i: np.asarray(Image.open(d / f"{i}.jpg").convert("L")) for i in ids}
    model = load_qc()
    verdicts = model.assess_many(list(px.values()))
    rejected = [i for i, v in zip(ids, verdicts, strict=True) if v.reject]
    assert len(rejected) <= 4, rejected  # <= 1 % here; 0.5 % is the goal on the whole split
    upright = [i for i, v in zip(ids, verdicts, strict=True) if not v.reject and not _fixes(v)]
    items = corpus({i: px[i] for i in upright[:60]}, seed=3)  # 1840 really lies sideways
    caught = 0
    for _kind, _name, img, expected in items:
        got = outcome(img, model, QC_ON)
        caught += got == expected or (expected != "too_small" and got in ("not_a_hand",
                                                                          "too_small"))  # fmt: skip
    assert caught / len(items) >= 0.98, (caught, len(items))


def test_full_resolution_originals_pass_untouched(rsna_fullres):
    """The 12 full-resolution RSNA originals (1514-2570 px, some on tilted films): none
    rejected or 'corrected' (two are flagged orientation_uncertain, and still scored)."""
    model = load_qc()
    for f in sorted(rsna_fullres.glob("*.png")):
        px = np.asarray(Image.open(f).convert("L"))
        assert outcome(px, model, QC_ON) == "ok", f.name


def test_ingest_runs_qc_in_batches_with_the_per_image_verdicts(tmp_path, hands):
    """ingest's chunks (QC on up to QC_BATCH images in one pass) give each image the
    verdict QC gives it alone, and a chunk's bad files are rejected without harming it."""
    from boneage.ingest import _work_chunk
    from tests.corpus import qc_corpus

    expected = qc_corpus(tmp_path, next(iter(hands.values())))
    paths = sorted(tmp_path.iterdir())
    base = load_params().ingest
    cfg = base.model_copy(update={"qc": base.qc.model_copy(update={"enabled": True})})
    results = _work_chunk((paths, cfg))
    qc = load_qc("default")
    for path, (rec, err) in zip(paths, results, strict=True):
        want = expected[path.stem]
        if want.startswith("error:"):
            assert rec is None and err[0].value == want.removeprefix("error:"), path.name
            continue
        assert err is None, (path.name, err)
        alone = qc.assess(np.asarray(Image.open(path).convert("L")))
        assert rec["qc_flags"] == ";".join(alone.flags) == want, path.name
        assert rec["qc_hand_score"] == pytest.approx(alone.hand_prob, abs=1e-5)
        assert rec["qc_distance"] == pytest.approx(alone.distance, rel=1e-4)
