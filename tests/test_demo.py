"""The synthetic demo cohort: layout, determinism, ground truth and absence of shortcuts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage import demo
from boneage.demo import (
    BOX_COLUMNS,
    CARPALS,
    LABEL_COLUMNS,
    carpal_size,
    image_shape,
    make_demo_cohort,
    ossified_carpals,
    physis_state,
    render_hand,
    skeletal_maturity,
)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return _pearson(pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """200 small images: enough for correlation checks, ~3 s."""
    out = tmp_path_factory.mktemp("demo") / "cohort"
    table = make_demo_cohort(out, n=200, seed=3, size=128)
    return out, table


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def test_files_and_columns(tmp_path: Path) -> None:
    table = make_demo_cohort(tmp_path, n=5, seed=0, size=160)
    labels = pd.read_csv(tmp_path / "labels.csv")
    boxes = pd.read_csv(tmp_path / "boxes.csv")
    assert list(labels.columns) == LABEL_COLUMNS == ["id", "boneage", "male"]
    assert list(boxes.columns) == ["id", *BOX_COLUMNS]
    assert BOX_COLUMNS[:4] == ["hand_x0", "hand_y0", "hand_x1", "hand_y1"]
    assert list(labels["id"]) == [f"demo{i:05d}" for i in range(1, 6)]
    assert list(boxes["id"]) == list(labels["id"])
    assert labels["male"].dtype == bool
    assert labels["boneage"].between(6, 228).all()
    assert list(table.columns) == [*LABEL_COLUMNS, *BOX_COLUMNS]
    assert len(table) == 5
    readme = (tmp_path / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "seed=0" in readme and "n=5" in readme
    for image_id in labels["id"]:
        with Image.open(tmp_path / "images" / f"{image_id}.png") as im:
            assert im.mode == "L"
            assert im.size == (128, 160)  # (width, height): portrait, long side = size
    assert image_shape(512) == (512, 410)


def test_png_metadata_marks_synthetic(tmp_path: Path) -> None:
    make_demo_cohort(tmp_path, n=1, seed=7, size=96)
    with Image.open(tmp_path / "images" / "demo00001.png") as im:
        text = im.text
    assert "SYNTHETIC" in text["Description"] and "not a patient image" in text["Description"]
    assert text["Software"] == "boneage demo-cohort"
    assert "seed=7" in text["Comment"]


def test_deterministic_and_independent_of_n(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_demo_cohort(a, n=3, seed=5, size=96)
    make_demo_cohort(b, n=4, seed=5, size=96)
    make_demo_cohort(c, n=3, seed=6, size=96)
    for i in range(1, 4):
        name = f"images/demo{i:05d}.png"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    assert (a / "labels.csv").read_text() == "".join(
        (b / "labels.csv").read_text().splitlines(keepends=True)[:4]
    )
    # Same (n, seed, size): byte-identical files.
    make_demo_cohort(b, n=3, seed=5, size=96)
    for name in ("labels.csv", "boxes.csv", "README.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # The stale 4th image of the earlier, larger cohort is gone.
    assert sorted(p.name for p in (b / "images").iterdir()) == sorted(
        p.name for p in (a / "images").iterdir()
    )


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_demo_cohort(tmp_path, n=0)
    with pytest.raises(ValueError):
        make_demo_cohort(tmp_path, n=1, size=16)


# --------------------------------------------------------------------------------------
# Maturity model
# --------------------------------------------------------------------------------------


def test_maturity_monotone_and_girls_ahead() -> None:
    ages = np.arange(0, 241, 3)
    for male in (True, False):
        m = [skeletal_maturity(a, male) for a in ages]
        assert np.all(np.diff(m) > 0)
    for a in (24, 60, 120, 156, 200):
        lead = skeletal_maturity(a, False) - skeletal_maturity(a, True)
        assert lead > 0
    # ~1-2 years ahead around puberty.
    assert 1.0 <= skeletal_maturity(156, False) - skeletal_maturity(156, True) <= 2.2
    rng = np.random.default_rng(0)
    noisy = [skeletal_maturity(120, True, rng) for _ in range(200)]
    assert 9.5 < np.mean(noisy) < 10.5 and 0.1 < np.std(noisy) < 0.6


def test_carpal_count_and_size_grow_with_maturity() -> None:
    grid = np.linspace(0, 20, 401)
    counts = [len(ossified_carpals(m)) for m in grid]
    assert counts[0] == 0 and counts[-1] == 8
    assert np.all(np.diff(counts) >= 0)
    assert ossified_carpals(1.0) == ["capitate", "hamate"]
    assert ossified_carpals(20.0)[-1] == "pisiform"
    assert len(ossified_carpals(skeletal_maturity(84, True))) in (6, 7)  # 7 y boy
    assert len(ossified_carpals(skeletal_maturity(42, False))) < 7  # 3.5 y girl
    for name, spec in CARPALS.items():
        onset = spec[4]
        sizes = [carpal_size(m, onset) for m in grid]
        assert np.all(np.diff(sizes) >= 0), name
        assert carpal_size(onset - 0.01, onset) == 0.0
        assert 0.0 < carpal_size(onset, onset) < 0.3
        assert carpal_size(18.0, onset) == pytest.approx(1.0)


def test_epiphyses_appear_narrow_and_fuse_monotonically() -> None:
    onset, fuse = 2.0, 16.0
    states = [physis_state(m, onset, fuse) for m in np.linspace(0, 20, 801)]
    present = [s.present for s in states]
    fused = [s.fused for s in states]
    gaps = [s.gap_mm for s in states]
    widths = [s.width for s in states]
    for seq in (present, fused, widths):
        assert np.all(np.diff(np.asarray(seq, float)) >= 0)
    assert np.all(np.diff(gaps) <= 0)
    assert not physis_state(1.9, onset, fuse).present
    open_ = physis_state(8.0, onset, fuse)
    assert open_.present and not open_.fused and open_.gap_mm > 0.8
    assert physis_state(16.0, onset, fuse).fused and physis_state(16.0, onset, fuse).gap_mm == 0
    # Distal phalanges (fuse at maturity 14.5): a 13.5-year-old girl is fused, a boy is not.
    assert physis_state(skeletal_maturity(162, False), 2.2, 14.5).fused
    assert not physis_state(skeletal_maturity(162, True), 2.2, 14.5).fused


# --------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------


def test_boxes_inside_image_and_nested(cohort: tuple[Path, pd.DataFrame]) -> None:
    _, table = cohort
    rows, cols = image_shape(128)
    for region in ("hand", "r1", "r2"):
        x0, y0, x1, y1 = (table[f"{region}_{c}"] for c in ("x0", "y0", "x1", "y1"))
        assert ((0 <= x0) & (x0 < x1) & (x1 <= cols)).all(), region
        assert ((0 <= y0) & (y0 < y1) & (y1 <= rows)).all(), region
    # The hand is inside the image with a margin, and contains R1 and R2 (1 px tolerance).
    assert (table["hand_x0"] > 0).all() and (table["hand_y0"] > 0).all()
    assert (table["hand_x1"] < cols).all() and (table["hand_y1"] < rows).all()
    for region in ("r1", "r2"):
        inside = (
            (table[f"{region}_x0"] >= table["hand_x0"] - 1)
            & (table[f"{region}_y0"] >= table["hand_y0"] - 1)
            & (table[f"{region}_x1"] <= table["hand_x1"] + 1)
            & (table[f"{region}_y1"] <= table["hand_y1"] + 1)
        )
        assert inside.mean() >= 0.98, region
    # R1 (carpus) is proximal to R2 (fingers) in the canonical pose: its centre lies below
    # R2's centre for moderate rotations (always, given +-15 degrees).
    r1_cy = (table["r1_y0"] + table["r1_y1"]) / 2
    r2_cy = (table["r2_y0"] + table["r2_y1"]) / 2
    assert (r1_cy > r2_cy).all()
    # R1 is much smaller than the hand; R2 is a large part of it.
    area = {
        r: (table[f"{r}_x1"] - table[f"{r}_x0"]) * (table[f"{r}_y1"] - table[f"{r}_y0"])
        for r in ("hand", "r1", "r2")
    }
    assert (area["r1"] < 0.2 * area["hand"]).all()
    assert (area["r2"] > 0.4 * area["hand"]).all()


def test_regions_contain_the_anatomy() -> None:
    """The boxes are where the drawn bones are, and R1's content changes with age."""
    rng_seed = 11
    fractions, ages = [], []
    for i, age in enumerate(np.linspace(6, 228, 24)):
        male = bool(i % 2)
        hand = render_hand(float(age), male, np.random.default_rng([rng_seed, i]), size=256)
        bone = hand.masks["bone"]
        x0, y0, x1, y1 = hand.boxes["r1"]
        r1_bone = bone[y0:y1, x0:x1].mean()
        x0, y0, x1, y1 = hand.boxes["r2"]
        assert bone[y0:y1, x0:x1].mean() > 0.08  # metacarpals and phalanges are there
        # The carpal box holds the carpals (or their place) and sits inside the tissue.
        assert hand.masks["tissue"][hand.boxes["r1"][1] : hand.boxes["r1"][3]].any()
        # No bone is drawn outside the tissue silhouette.
        assert not (bone & ~hand.masks["tissue"]).any()
        # The side marker lies outside the hand box.
        mx0, my0, mx1, my1 = hand.boxes["marker"]
        hx0, hy0, hx1, hy1 = hand.boxes["hand"]
        assert mx1 <= hx0 or mx0 >= hx1 or my1 <= hy0 or my0 >= hy1
        fractions.append(r1_bone)
        ages.append(age)
    # Ossified bone in the carpal box grows with bone age (carpals appear and grow).
    assert _spearman(np.array(ages), np.array(fractions)) > 0.85
    assert fractions[0] < 0.1 < 0.25 < fractions[-1]


def test_image_is_brighter_on_bones(cohort: tuple[Path, pd.DataFrame]) -> None:
    """In the written PNGs, the R1/R2 boxes of older children hold bright structures."""
    out, table = cohort
    older = table[table["boneage"] > 96].head(20)
    for row in older.itertuples():
        with Image.open(out / "images" / f"{row.id}.png") as im:
            img = np.asarray(im, dtype=float)
        r1 = img[row.r1_y0 : row.r1_y1, row.r1_x0 : row.r1_x1]
        hand = img[row.hand_y0 : row.hand_y1, row.hand_x0 : row.hand_x1]
        assert np.percentile(r1, 90) > np.percentile(img, 75)
        assert r1.mean() > img.mean()
        assert hand.mean() > img.mean()


# --------------------------------------------------------------------------------------
# No shortcut: age is only in the bones
# --------------------------------------------------------------------------------------


def test_no_brightness_or_size_cue(cohort: tuple[Path, pd.DataFrame]) -> None:
    out, table = cohort
    assert table["boneage"].min() < 30 and table["boneage"].max() > 200
    assert 0.35 < table["male"].mean() < 0.65
    means, shapes = [], set()
    for image_id in table["id"]:
        with Image.open(out / "images" / f"{image_id}.png") as im:
            img = np.asarray(im, dtype=float)
        shapes.add(img.shape)
        means.append(img.mean())
    assert shapes == {image_shape(128)}
    assert abs(_pearson(table["boneage"], means)) < 0.2
    # The hand's apparent size is at most a weak cue (random global scale).
    hand_area = (table["hand_x1"] - table["hand_x0"]) * (table["hand_y1"] - table["hand_y0"])
    assert abs(_pearson(table["boneage"], hand_area)) < 0.5


def test_age_is_in_the_bones(cohort: tuple[Path, pd.DataFrame]) -> None:
    """A trivial bone feature (ossified fraction of the carpal box) tracks bone age."""
    _, table = cohort
    feats, ages = [], []
    for i, row in enumerate(table.head(60).itertuples()):
        rng = demo.cohort._image_rng(3, i)
        age, male = demo.cohort._sample_subject(rng)
        assert (age, male) == (row.boneage, row.male)
        hand = render_hand(age, male, rng, size=128)
        x0, y0, x1, y1 = hand.boxes["r1"]
        assert (x0, y0, x1, y1) == (row.r1_x0, row.r1_y0, row.r1_x1, row.r1_y1)
        feats.append(hand.masks["bone"][y0:y1, x0:x1].mean())
        ages.append(age)
    assert _spearman(np.array(ages), np.array(feats)) > 0.8
