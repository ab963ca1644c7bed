"""Ingest: layouts, the bad-input corpus (one assertion per reason), real RSNA data."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.cohort import CohortError
from boneage.config import IngestConfig
from boneage.imageio import decode_png, resize_long_side, resize_square
from boneage.ingest import ingest
from boneage.rejects import Reason
from boneage.store import ImageStore
from tests.corpus import png_bomb, save, textured

CFG = IngestConfig(workers=1, store_long_side=64, shard_size=4)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


@pytest.fixture()
def bad_cohort(tmp_path: Path) -> tuple[Path, Path]:
    """An RSNA-layout cohort with one instance of every rejection reason."""
    d = tmp_path / "cohort"
    for i, name in enumerate(["ok1", "ok2", "ok3", "dupid", "noage", "badage", "oldage",
                              "badsex", "norow", "nosex"]):  # fmt: skip
        save(d / f"{name}.png", textured(seed=i))
    save(d / "twin.png", textured(seed=20))
    save(d / "twin.jpg", textured(seed=21))
    good = (d / "ok1.png").read_bytes()
    (d / "trunc.png").write_bytes(good[: len(good) // 2])
    (d / "fake.png").write_text("this is not an image")
    (d / "notes.txt").write_text("scanner notes")
    save(d / "blank.png", np.full((64, 64), 128, np.uint8))
    png_bomb(d / "bomb.png")
    labels = _csv(
        tmp_path / "labels.csv",
        """
id,boneage,male
ok1,120,True
ok2,36.5,False
ok3,0,1
dupid,100,True
dupid,101,True
noage,,True
badage,ten,True
oldage,250,False
badsex,100,maybe
trunc,100,True
fake,100,False
blank,100,False
bomb,100,True
missing,100,True
twin,90,False
bad id,10,True
nosex,10,
""",
    )
    return d, labels


def test_every_rejection_reason_is_reported(bad_cohort, tmp_path):
    d, labels = bad_cohort
    res = ingest(d, labels, tmp_path / "out", CFG, progress=False)
    rej = res.rejected.set_index(["source"], drop=False)
    by_id = {r.id: r for r in res.rejected.itertuples() if r.id is not pd.NA}

    def reason_of(id_=None, source=None):
        if source is not None:
            return rej.loc[source, "reason"]
        return by_id[id_].reason

    assert sorted(res.manifest["id"]) == ["dupid", "ok1", "ok2", "ok3", "twin"]
    assert reason_of("dupid") == Reason.DUPLICATE_ID  # second row of dupid
    assert reason_of("noage") == Reason.MISSING_LABEL
    assert reason_of("badage") == Reason.INVALID_LABEL
    assert reason_of("oldage") == Reason.LABEL_OUT_OF_RANGE
    assert reason_of("badsex") == Reason.UNKNOWN_SEX
    assert reason_of("nosex") == Reason.UNKNOWN_SEX
    assert reason_of("trunc") == Reason.UNREADABLE_IMAGE
    assert reason_of("fake") == Reason.NOT_AN_IMAGE
    assert reason_of("blank") == Reason.BLANK_IMAGE
    assert reason_of("bomb") == Reason.TOO_MANY_PIXELS
    assert reason_of("missing") == Reason.IMAGE_NOT_FOUND
    assert reason_of("bad id") == Reason.INVALID_ID
    assert reason_of(source="twin.jpg") == Reason.DUPLICATE_IMAGE
    assert reason_of(source="norow.png") == Reason.NO_LABEL_ROW
    assert reason_of(source="notes.txt") == Reason.NOT_AN_IMAGE
    # CSV rows carry their line number; details are one line and name the problem.
    assert int(by_id["oldage"].row) == 9
    assert "250" in by_id["oldage"].detail
    assert "3600000000" in by_id["bomb"].detail
    assert all("\n" not in d for d in res.rejected["detail"])


def test_nothing_is_silently_lost(bad_cohort, tmp_path):
    d, labels = bad_cohort
    res = ingest(d, labels, tmp_path / "out", CFG, progress=False)
    n_rows = len(pd.read_csv(labels))
    n_files = sum(1 for p in d.rglob("*") if p.is_file())
    # every CSV row is in the manifest or rejected with its row number ...
    rows_seen = set(res.manifest["label_row"].dropna().astype(int)) | set(
        res.rejected["row"].dropna().astype(int)
    )
    assert rows_seen == set(range(2, n_rows + 2))
    # ... and every file in the cohort dir is in the manifest or rejected.
    files_seen = set(res.manifest["source"]) | set(res.rejected["source"].dropna())
    assert files_seen == {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert len(files_seen) == n_files
    # written outputs
    out = tmp_path / "out"
    for name in ("manifest.parquet", "rejected.parquet", "rejected.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert len(pd.read_csv(out / "rejected.csv")) == len(res.rejected)


def test_generic_csv_with_paths_and_escape(tmp_path):
    d = tmp_path / "cohort"
    save(d / "sub" / "a.png", textured(seed=1))
    save(d / "b.jpg", textured(seed=2))
    save(tmp_path / "outside.png", textured(seed=3))
    labels = _csv(
        tmp_path / "labels.csv",
        """
id,sex,path,boneage_months,chronological_age_months
a,female,sub/a.png,100,110
b,M,,80,
c,F,../outside.png,50,
e,F,/etc/passwd,50,
""",
    )
    res = ingest(d, labels, tmp_path / "out", CFG, progress=False)
    m = res.manifest.set_index("id")
    assert list(m.index) == ["a", "b"]
    assert m.loc["a", "sex"] == "F" and m.loc["a", "source"] == "sub/a.png"
    assert m.loc["a", "chronological_age_months"] == 110
    assert m.loc["b", "sex"] == "M" and m.loc["b", "format"] == "jpeg"
    rej = res.rejected.set_index("id")
    assert rej.loc["c", "reason"] == Reason.PATH_ESCAPES_COHORT
    assert rej.loc["e", "reason"] == Reason.PATH_ESCAPES_COHORT


@pytest.mark.parametrize(
    "code,expected",
    [("M", "M"), ("f", "F"), ("Male", "M"), ("FEMALE", "F"), ("1", "M"), ("0", "F"),
     ("True", "M"), ("false", "F")],
)  # fmt: skip
def test_sex_codes(tmp_path, code, expected):
    d = tmp_path / "c"
    save(d / "x.png", textured())
    labels = _csv(tmp_path / "l.csv", f"id,sex,boneage_months\nx,{code},10")
    res = ingest(d, labels, tmp_path / "out", CFG, progress=False)
    assert res.manifest.loc[0, "sex"] == expected


def test_malformed_csv_is_a_clear_error(tmp_path):
    d = tmp_path / "c"
    save(d / "x.png", textured())
    labels = _csv(tmp_path / "l.csv", "identifier,age\nx,10")
    with pytest.raises(CohortError, match="missing required columns"):
        ingest(d, labels, tmp_path / "out", CFG, progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "boneage.cli", "ingest", "--cohort", str(d), "--labels",
         str(labels), "--out", str(tmp_path / "out2")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "l.csv" in proc.stderr and "missing required columns" in proc.stderr


def test_generic_csv_without_label_column_when_labels_required(tmp_path):
    d = tmp_path / "c"
    save(d / "x.png", textured())
    labels = _csv(tmp_path / "l.csv", "id,sex\nx,M")
    with pytest.raises(CohortError, match="boneage_months"):
        ingest(d, labels, tmp_path / "out", CFG, progress=False)
    cfg = CFG.model_copy(update={"require_labels": False})
    res = ingest(d, labels, tmp_path / "out", cfg, progress=False)
    assert res.manifest["boneage_months"].isna().all() and len(res.manifest) == 1


def test_missing_cohort_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        ingest(tmp_path / "nope", None, tmp_path / "out", CFG, progress=False)


def test_store_holds_resized_images_and_hashes(tmp_path):
    d = tmp_path / "c"
    src = textured(300, 200, seed=5)
    save(d / "big.png", src)
    save(d / "small.png", textured(40, 30, seed=6))
    labels = _csv(tmp_path / "l.csv", "id,boneage,male\nbig,10,1\nsmall,20,0")
    res = ingest(d, labels, tmp_path / "out", CFG, progress=False)
    m = res.manifest.set_index("id")
    assert (m.loc["big", "store_height"], m.loc["big", "store_width"]) == (64, 43)
    assert (m.loc["big", "orig_height"], m.loc["big", "orig_width"]) == (300, 200)
    assert m.loc["big", "scale"] == pytest.approx(64 / 300)
    # never upscaled
    assert (m.loc["small", "store_height"], m.loc["small", "scale"]) == (40, 1.0)
    store = ImageStore(tmp_path / "out" / "store")
    img = store.get("big")
    expected, _ = resize_long_side(src, 64)
    np.testing.assert_array_equal(img.pixels, expected)
    assert img.sha256 == hashlib.sha256((d / "big.png").read_bytes()).hexdigest()
    assert m.loc["big", "sha256"] == img.sha256


def test_square_geometry_stretches_the_short_side_and_records_both_sizes(tmp_path):
    d = tmp_path / "c"
    src = textured(300, 200, seed=5)  # portrait: 300 high, 200 wide
    save(d / "big.png", src)
    save(d / "small.png", textured(40, 30, seed=6))
    labels = _csv(tmp_path / "l.csv", "id,boneage,male\nbig,10,1\nsmall,20,0")
    cfg = CFG.model_copy(update={"store_geometry": "square"})
    m = ingest(d, labels, tmp_path / "out", cfg, progress=False).manifest.set_index("id")
    assert (m.loc["big", "store_height"], m.loc["big", "store_width"]) == (64, 64)
    assert (m.loc["big", "orig_height"], m.loc["big", "orig_width"]) == (300, 200)
    assert m.loc["big", "scale"] == pytest.approx(64 / 300)  # the long side's factor
    # no larger than the original's long side: the short side stretched, nothing upscaled
    assert (m.loc["small", "store_height"], m.loc["small", "store_width"]) == (40, 40)
    store = ImageStore(tmp_path / "out" / "store")
    expected, _ = resize_square(src, 64)
    assert expected.shape == (64, 64)
    np.testing.assert_array_equal(store.get("big").pixels, expected)
    # a column of the source maps to the same relative column of the stored square
    edge = np.zeros((300, 200), np.uint8)
    edge[:, 100:] = 255
    sq, _ = resize_square(edge, 64)
    assert sq[:, :30].max() < 40 and sq[:, 34:].min() > 215


def test_rgb_16bit_and_exif_orientation(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    base = textured(60, 40, seed=9)
    Image.fromarray(np.stack([base] * 3, -1)).save(d / "rgb.png")
    Image.fromarray(base.astype(np.uint16) * 200 + 1000).save(d / "deep.png")
    img = Image.fromarray(base)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    img.save(d / "rot.jpg", exif=exif, quality=98)
    labels = _csv(tmp_path / "l.csv", "id,boneage,male\nrgb,10,1\ndeep,20,0\nrot,30,0")
    res = ingest(d, labels, tmp_path / "out", CFG, progress=False)
    assert len(res.rejected) == 0, res.rejected
    store = ImageStore(tmp_path / "out" / "store")
    np.testing.assert_array_equal(store.get("rgb").pixels, base)
    deep = store.get("deep").pixels.astype(int)
    expect = np.rint((base.astype(float) - base.min()) * 255 / (base.max() - base.min()))
    assert np.abs(deep - expect).max() <= 1
    assert store.get("rot").pixels.shape == (40, 60)  # EXIF orientation applied


def test_pool_and_serial_give_identical_outputs(bad_cohort, tmp_path):
    d, labels = bad_cohort
    a = ingest(d, labels, tmp_path / "a", CFG, progress=False)
    b = ingest(d, labels, tmp_path / "b", CFG.model_copy(update={"workers": 2}), progress=False)
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    pd.testing.assert_frame_equal(a.rejected, b.rejected)
    sa, sb = ImageStore(tmp_path / "a" / "store"), ImageStore(tmp_path / "b" / "store")
    assert [r["png"] for r in sa.iter_rows()] == [r["png"] for r in sb.iter_rows()]


# ---------------------------------------------------------------- real RSNA data


def _link_subset(src_dir: Path, ids: list[str], dst: Path, suffix: str) -> Path:
    dst.mkdir(parents=True)
    for i in ids:
        (dst / f"{i}{suffix}").symlink_to(src_dir / f"{i}{suffix}")
    return dst


@pytest.mark.slow
def test_real_rsna299_subset(rsna299, tmp_path):
    labels = pd.read_csv(rsna299 / "boneage-training-dataset.csv").head(300)
    cohort = _link_subset(
        rsna299 / "boneage-training-dataset", labels["id"].astype(str).tolist(),
        tmp_path / "c", ".jpg",
    )  # fmt: skip
    labels.to_csv(tmp_path / "labels.csv", index=False)
    cfg = IngestConfig(workers=2, allow_external_links=True)  # links into the RSNA folder
    res = ingest(cohort, tmp_path / "labels.csv", tmp_path / "out", cfg, progress=False)
    assert len(res.rejected) == 0, res.rejected.head()
    assert len(res.manifest) == 300
    m = res.manifest.set_index("id")
    assert set(m["split"]) == {"train", "val", "test"}
    assert (m[["orig_height", "orig_width", "store_height", "store_width"]] == 299).all().all()
    truth = labels.astype({"id": str}).set_index("id")
    np.testing.assert_allclose(m.loc[truth.index, "boneage_months"], truth["boneage"])
    assert (m.loc[truth.index, "sex"] == truth["male"].map({True: "M", False: "F"})).all()
    store = ImageStore(tmp_path / "out" / "store")
    first = truth.index[0]
    src = np.asarray(Image.open(cohort / f"{first}.jpg").convert("L"))
    np.testing.assert_array_equal(store.get(first).pixels, src)


@pytest.mark.slow
def test_real_fullres(rsna_fullres, tmp_path):
    cfg = IngestConfig(workers=2)
    res = ingest(rsna_fullres, rsna_fullres / "labels.csv", tmp_path / "out", cfg, progress=False)
    assert len(res.rejected) == 0, res.rejected
    assert len(res.manifest) == 12
    m = res.manifest
    assert (m[["store_height", "store_width"]].max(axis=1) == 1024).all()
    assert (m[["orig_height", "orig_width"]].max(axis=1) > 1024).all()
    # landscape originals stay landscape, aspect ratio kept within rounding
    ratio_orig = m["orig_width"] / m["orig_height"]
    ratio_store = m["store_width"] / m["store_height"]
    np.testing.assert_allclose(ratio_store, ratio_orig, rtol=0.01)
    store = ImageStore(tmp_path / "out" / "store")
    row = m.iloc[0]
    src = np.asarray(Image.open(rsna_fullres / row["source"]).convert("L"))
    expected, _ = resize_long_side(src, 1024)
    np.testing.assert_array_equal(store.get(row["id"]).pixels, expected)
    assert decode_png(next(store.iter_rows())["png"]).dtype == np.uint8


@pytest.mark.slow
def test_cli_ingest_on_real_fullres(rsna_fullres, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "boneage.cli", "ingest", "--cohort", str(rsna_fullres),
         "--labels", str(rsna_fullres / "labels.csv"), "--out", str(tmp_path / "o"),
         "--no-progress", "--summary", str(tmp_path / "s.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ingested 12 of 12" in proc.stdout
    assert (tmp_path / "s.json").is_file()
    shutil.rmtree(tmp_path / "o")


def test_png_encoder_roundtrips_through_pillow():
    from boneage.imageio import encode_png

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 13), (299, 299), (120, 1)]:
        px = rng.integers(0, 256, shape, dtype=np.uint8)
        data = encode_png(px)
        with Image.open(__import__("io").BytesIO(data)) as img:
            assert img.format == "PNG" and img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), px)
    for shape in [(1, 1, 3), (7, 13, 3), (120, 77, 3)]:  # RGB (overlays)
        px = rng.integers(0, 256, shape, dtype=np.uint8)
        with Image.open(__import__("io").BytesIO(encode_png(px))) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(img), px)
    for bad in (np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError):
            encode_png(bad)


def test_ingest_with_a_process_pool_from_a_worker_thread(tmp_path):
    """Inside Prefect/Ray workers ingest runs in a multi-threaded process: its pool then
    uses forkserver (forking such a process can deadlock) and gives the same result."""
    import threading

    from boneage import ingest as ingest_mod

    d = tmp_path / "c"
    for i in range(6):
        save(d / f"t{i}.png", textured(seed=i))
    cfg = CFG.model_copy(update={"workers": 2, "require_labels": False,
                                 "allow_unknown_sex": True})  # fmt: skip
    seen: dict = {}

    def work():
        seen["context"] = ingest_mod._pool_context().get_start_method()
        seen["result"] = ingest(d, None, tmp_path / "out", cfg, progress=False)

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert not t.is_alive(), "ingest hung in a worker thread"
    assert seen["context"] == "forkserver"
    assert len(seen["result"].manifest) == 6
    ref = ingest(d, None, tmp_path / "ref", cfg.model_copy(update={"workers": 1}), progress=False)
    a = seen["result"].manifest.drop(columns=["shard"]).sort_values("id").reset_index(drop=True)
    b = ref.manifest.drop(columns=["shard"]).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
