"""Input handling findings of issue 18, one test (or more) each; every one failed on the
code before the fix: lossless Unicode ids (4), robust 16-bit and DICOM windowing (5), one
reason per file (6), symbolic links confined after resolving (7), accurate messages (9),
duplicate content across ids and `validate` with sex U (10)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from boneage.cli import app
from boneage.cohort import discover, id_from_relpath, relpath_from_id
from boneage.config import IngestConfig
from boneage.dicom import read_dicom
from boneage.imageio import decode_raster
from boneage.ingest import ingest
from boneage.rejects import Reason, RejectError
from boneage.store import ImageStore
from tests.corpus import save, textured
from tests.dicom_factory import make_dicom

CFG = IngestConfig(workers=1, store_long_side=64, require_labels=False, allow_unknown_sex=True)


def _folder(d: Path, names: list[str]) -> None:
    for k, n in enumerate(names):
        save(d / n, textured(seed=k))


# --- 4: lossless ids ------------------------------------------------------------------


def test_unicode_and_punctuated_file_names_keep_distinct_reversible_ids(tmp_path):
    d = tmp_path / "c"
    names = ["ü.png", "手.jpg", "a b.png", "a_b.png", "a__b.png", "_x.png", "-y.png", ".z.png",
             "sub/ü.png", "sub__ü.png", "x.png", "x.jpg", "100%.png"]  # fmt: skip
    _folder(d, names)
    c = discover(d, None, require_labels=False, allow_unknown_sex=True)
    assert c.rejected == []
    ids = {cand.source: cand.id for cand in c.candidates}
    assert len(set(ids.values())) == len(names)  # never collapsed
    assert ids["ü.png"] == "ü" and ids["手.jpg"] == "手" and ids["sub/ü.png"] == "sub__ü"
    for source, id_ in ids.items():
        assert relpath_from_id(id_) in (source, source.rsplit(".", 1)[0]), (source, id_)
        assert not id_.startswith((".", "-", "_")) and "/" not in id_
    res = ingest(d, None, tmp_path / "out", CFG, progress=False)
    assert len(res.manifest) == len(names) and len(res.rejected) == 0


def test_id_escaping_round_trips():
    for rel in ["ü", "手/ü", "a b/c", "a__b", "_a_", "x%y", "-.a", "a/b/c", "tab\there"]:
        assert relpath_from_id(id_from_relpath(rel)) == rel


# --- 5: robust windowing ----------------------------------------------------------------


def _hand16(seed: int = 0) -> np.ndarray:
    """A 12-bit-range image (hand-like: bright blob on darker background)."""
    return (textured(200, 160, seed).astype(np.uint16) * 16) + 100


def test_16bit_png_bright_marker_pixel_does_not_crush_the_hand(tmp_path):
    base = _hand16()
    marked = base.copy()
    marked[5, 5] = 65535  # one saturated marker pixel
    marked[190:196, 150:158] = 65535  # and a small saturated label
    out = []
    for name, arr in (("base", base), ("marked", marked)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
        out.append(decode_raster((tmp_path / f"{name}.png").read_bytes(), 10**8).pixels)
    plain, robust = out
    assert np.percentile(robust, 99) > 200  # not crushed into a few grey levels
    keep = np.ones(base.shape, bool)
    keep[5, 5] = keep[190:196, 150:158] = False
    assert np.abs(plain[keep].astype(int) - robust[keep]).max() <= 1  # same window as without


def test_16bit_dicom_without_window_ignores_a_saturated_marker(tmp_path):
    base = _hand16(1)
    marked = base.copy()
    marked[:4, :4] = 65535
    a, _ = read_dicom(make_dicom(tmp_path / "a.dcm", base, bits_allocated=16, bits_stored=16),
                      10**8)  # fmt: skip
    b, _ = read_dicom(make_dicom(tmp_path / "b.dcm", marked, bits_allocated=16, bits_stored=16),
                      10**8)  # fmt: skip
    assert np.abs(a[4:].astype(int) - b[4:]).max() <= 1 and (b[:4, :4] == 255).all()


# --- 6: one reason per file -------------------------------------------------------------


def test_extensionless_dicom_listed_in_a_csv_is_found(tmp_path, rsna299):
    d = tmp_path / "c"
    px = np.asarray(Image.open(rsna299 / "boneage-training-dataset" / "1377.jpg").convert("L"))
    make_dicom(d / "IMG0001", px, sex="F")
    (tmp_path / "l.csv").write_text("id,sex,boneage_months\nIMG0001,,100\n")
    cfg = IngestConfig(workers=1, store_long_side=64)
    res = ingest(d, tmp_path / "l.csv", tmp_path / "out", cfg, progress=False)
    assert len(res.rejected) == 0, res.rejected
    m = res.manifest.set_index("id")
    assert m.loc["IMG0001", "sex"] == "F" and m.loc["IMG0001", "sex_source"] == "dicom"


def test_symlink_loop_listed_in_a_csv_is_one_row(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    os.symlink(d / "loop.png", d / "loop.png")  # points at itself
    save(d / "ok.png", textured())
    (tmp_path / "l.csv").write_text("id,boneage,male\nloop,100,1\nok,90,0\n")
    cfg = IngestConfig(workers=1, store_long_side=64)
    res = ingest(d, tmp_path / "l.csv", tmp_path / "out", cfg, progress=False)
    assert len(res.rejected) == 1, res.rejected
    r = res.rejected.iloc[0]
    assert r["id"] == "loop" and r["reason"] == Reason.UNREADABLE_IMAGE
    assert "symbolic link" in r["detail"] and list(res.manifest["id"]) == ["ok"]


# --- 7: symlinks confined after resolving -------------------------------------------------


def test_symlinks_leading_outside_the_cohort_are_rejected(tmp_path):
    secret = tmp_path / "elsewhere" / "private.png"
    save(secret, textured(seed=3))
    d = tmp_path / "c"
    save(d / "ok.png", textured())
    os.symlink(secret, d / "linked.png")  # folder mode / RSNA stem
    (d / "sub").mkdir()
    os.symlink(secret.parent, d / "sub" / "dirlink")  # a link to a directory outside
    folder = discover(d, None, require_labels=False, allow_unknown_sex=True)
    assert [c.id for c in folder.candidates] == ["ok"]
    reasons = {r.source: r.reason for r in folder.rejected}
    assert reasons == {"linked.png": Reason.PATH_ESCAPES_COHORT,
                       "sub/dirlink": Reason.PATH_ESCAPES_COHORT}  # fmt: skip
    # a CSV `path` inside the folder as text, outside once resolved
    (tmp_path / "g.csv").write_text("id,sex,path,boneage_months\na,F,linked.png,100\n"
                                    "b,M,ok.png,90\n")  # fmt: skip
    cfg = IngestConfig(workers=1, store_long_side=64)
    res = ingest(d, tmp_path / "g.csv", tmp_path / "out", cfg, progress=False)
    rej = res.rejected.set_index("id")
    assert rej.loc["a", "reason"] == Reason.PATH_ESCAPES_COHORT
    assert list(res.manifest["id"]) == ["b"]
    # RSNA layout: the id's file is a link out of the folder
    (tmp_path / "r.csv").write_text("id,boneage,male\nlinked,100,1\nok,90,0\n")
    res = ingest(d, tmp_path / "r.csv", tmp_path / "out2", cfg, progress=False)
    rej = res.rejected.set_index("id")
    assert rej.loc["linked", "reason"] == Reason.PATH_ESCAPES_COHORT
    assert list(res.manifest["id"]) == ["ok"]


# --- 9: accurate messages ---------------------------------------------------------------


def test_gif_and_webp_are_images_in_folders_and_csvs_alike(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    Image.fromarray(textured(seed=1)).save(d / "a.gif")
    Image.fromarray(textured(seed=2)).save(d / "b.webp", lossless=True)
    Image.fromarray(textured(seed=3)).save(d / "c_noext", format="PNG")  # no suffix: sniffed
    folder = ingest(d, None, tmp_path / "o1", CFG, progress=False)
    assert sorted(folder.manifest["id"]) == ["a", "b", "c_noext"] and len(folder.rejected) == 0
    (tmp_path / "l.csv").write_text("id,sex,path\na,F,a.gif\nb,M,b.webp\nc_noext,M,c_noext\n")
    csv = ingest(d, tmp_path / "l.csv", tmp_path / "o2", CFG, progress=False)
    assert sorted(csv.manifest["id"]) == ["a", "b", "c_noext"] and len(csv.rejected) == 0


def test_nan_tiff_is_unreadable_not_blank():
    import io

    buf = io.BytesIO()
    arr = np.ones((64, 64), np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr).save(buf, format="TIFF")
    with pytest.raises(RejectError) as exc:
        decode_raster(buf.getvalue(), 10**8)
    assert exc.value.reason == Reason.UNREADABLE_IMAGE and "not finite" in exc.value.detail


def test_csv_messages_say_what_is_wrong(tmp_path):
    d = tmp_path / "c"
    save(d / "ok.png", textured())
    (tmp_path / "l.csv").write_text(
        "id,boneage,male\n-5,100,1\nok,NaN,0\nmissing,100,1\nbad id,10,1\n"
    )
    cfg = IngestConfig(workers=1, store_long_side=64)
    res = ingest(d, tmp_path / "l.csv", tmp_path / "out", cfg, progress=False)
    det = res.rejected.set_index("id")["detail"]
    assert det["-5"] == "id '-5' must start with a letter or digit, not '-'"
    assert det["ok"] == "boneage is 'NaN' (not a number: missing)"
    assert "webp" in det["missing"] and "gif" in det["missing"] and "tif" in det["missing"]
    assert "' '" in det["bad id"]


# --- 10: duplicate content, validate with sex U -----------------------------------------


def test_the_same_file_under_two_ids_is_ingested_once(tmp_path):
    d = tmp_path / "c"
    save(d / "a.png", textured(seed=1))
    (d / "b.png").write_bytes((d / "a.png").read_bytes())
    save(d / "c.png", textured(seed=2))
    (tmp_path / "l.csv").write_text("id,boneage,male\na,100,1\nb,100,1\nc,90,0\n")
    cfg = IngestConfig(workers=1, store_long_side=64)
    res = ingest(d, tmp_path / "l.csv", tmp_path / "out", cfg, progress=False)
    assert sorted(res.manifest["id"]) == ["a", "c"]
    r = res.rejected.set_index("id").loc["b"]
    assert r["reason"] == Reason.DUPLICATE_CONTENT and "'a'" in r["detail"]
    assert len(ImageStore(tmp_path / "out" / "store")) == 2


def test_validate_accepts_sex_u_when_allow_unknown_sex(tmp_path):
    d = tmp_path / "c"
    for i in range(40):
        save(d / f"i{i}.png", textured(seed=i))
    rows = "".join(f"i{i},{'' if i % 2 else 'M'},{50 + i}\n" for i in range(40))
    (tmp_path / "l.csv").write_text("id,sex,boneage_months\n" + rows)
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  allow_unknown_sex: true\n  store_long_side: 64\n  workers: 1\n"
                      "validate:\n  max_rejected_fraction: 0.01\n")  # fmt: skip
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", "--cohort", str(d), "--labels", str(tmp_path / "l.csv"),
                            "--out", str(tmp_path / "o"), "--params", str(params),
                            "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    man = pd.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert (man["sex"] == "U").sum() == 20 and set(man["split"]) == {"train", "val", "test"}
    r = runner.invoke(app, ["validate", "--manifest", str(tmp_path / "o" / "manifest.parquet"),
                            "--rejected", str(tmp_path / "o" / "rejected.parquet"), "--out",
                            str(tmp_path / "v"), "--params", str(params)])  # fmt: skip
    assert r.exit_code == 0, r.output


def test_links_out_of_the_cohort_are_accepted_only_when_allowed(tmp_path):
    """ingest.allow_external_links: a cohort made of links into a trusted collection."""
    target = tmp_path / "collection" / "a.png"
    save(target, textured(seed=4))
    d = tmp_path / "c"
    save(d / "ok.png", textured())
    os.symlink(target, d / "a.png")
    (tmp_path / "r.csv").write_text("id,boneage,male\na,100,1\nok,90,0\n")
    cfg = IngestConfig(workers=1, store_long_side=64, allow_external_links=True)
    res = ingest(d, tmp_path / "r.csv", tmp_path / "out", cfg, progress=False)
    assert sorted(res.manifest["id"]) == ["a", "ok"] and res.rejected.empty
    strict = cfg.model_copy(update={"allow_external_links": False})
    res = ingest(d, tmp_path / "r.csv", tmp_path / "out2", strict, progress=False)
    assert list(res.manifest["id"]) == ["ok"]
