"""boneage.dicom: DICOM files built around real RSNA pixels decode back to those pixels.

Every file here is written by tests/dicom_factory.make_dicom with canary PHI values;
no canary may ever show up in a DicomInfo, a reject detail, a warning or a log line.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    BasicTextSRStorage,
    HTJ2KLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from boneage import dicom as dicom_mod
from boneage.dicom import DicomInfo, is_dicom, read_dicom
from boneage.rejects import Reason, RejectError
from tests.dicom_factory import (
    CANARY_STRINGS,
    DEFAULT_BIRTH_DATE,
    DEFAULT_STUDY_DATE,
    make_dicom,
)

RSNA_IDS = ("10000", "10001", "10002")
MAX_PIXELS = 50_000_000
PHI_STRINGS = [*CANARY_STRINGS, DEFAULT_BIRTH_DATE, DEFAULT_STUDY_DATE]


# --- helpers -------------------------------------------------------------------------


def _load_l(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def _stretch(src: np.ndarray) -> np.ndarray:
    """src with [min, max] mapped linearly to 0..255 (what a no-VOI >8-bit read gives)."""
    s = src.astype(np.float64)
    lo, hi = s.min(), s.max()
    return np.clip(np.rint((s - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def _assert_no_phi(text: str) -> None:
    for canary in PHI_STRINGS:
        assert canary not in text, f"PHI canary {canary!r} leaked"


def _read(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, DicomInfo]:
    image, info = read_dicom(path, max_pixels)
    assert image.dtype == np.uint8 and image.ndim == 2
    assert (info.rows, info.columns) == image.shape
    _assert_no_phi(repr(info))
    return image, info


def _reject(path: Path, max_pixels: int = MAX_PIXELS) -> RejectError:
    with pytest.raises(RejectError) as excinfo:
        read_dicom(path, max_pixels)
    err = excinfo.value
    assert "\n" not in err.detail and err.detail
    _assert_no_phi(str(err))
    _assert_no_phi(err.detail)
    return err


@pytest.fixture(scope="module")
def sources(rsna299: Path) -> list[np.ndarray]:
    """A few real 299-px RSNA radiographs (uint8 grayscale)."""
    return [_load_l(rsna299 / "boneage-training-dataset" / f"{i}.jpg") for i in RSNA_IDS]


@pytest.fixture(scope="module")
def src(sources: list[np.ndarray]) -> np.ndarray:
    return sources[1]  # max 245: not full range, so stretching is visible


@pytest.fixture(scope="module")
def fullres_small(rsna_fullres: Path) -> np.ndarray:
    """One full-resolution RSNA radiograph, downsized 4x."""
    path = sorted(rsna_fullres.glob("*.png"))[0]
    with Image.open(path) as im:
        im = im.convert("L")
        small = im.resize((im.width // 4, im.height // 4), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


# --- is_dicom --------------------------------------------------------------------------


def test_is_dicom(tmp_path: Path, src: np.ndarray, rsna299: Path) -> None:
    assert is_dicom(make_dicom(tmp_path / "a.dcm", src))
    assert not is_dicom(rsna299 / "boneage-training-dataset" / f"{RSNA_IDS[0]}.jpg")
    png = tmp_path / "a.png"
    Image.fromarray(src).save(png)
    assert not is_dicom(png)
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert not is_dicom(tmp_path / "empty.dcm")
    (tmp_path / "short.dcm").write_bytes(b"\0" * 130)
    assert not is_dicom(tmp_path / "short.dcm")
    assert not is_dicom(tmp_path / "missing.dcm")
    assert not is_dicom(tmp_path)  # a directory


def test_non_dicom_file_is_not_an_image(tmp_path: Path, rsna299: Path) -> None:
    err = _reject(rsna299 / "boneage-training-dataset" / f"{RSNA_IDS[0]}.jpg")
    assert err.reason == Reason.NOT_AN_IMAGE


# --- decoding real pixels ------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(RSNA_IDS)))
def test_monochrome2_8bit_is_identity(tmp_path: Path, sources: list[np.ndarray], index) -> None:
    source = sources[index]
    image, info = _read(make_dicom(tmp_path / "a.dcm", source))
    np.testing.assert_array_equal(image, source)
    assert info.photometric == "MONOCHROME2"
    assert info.bits_stored == 8
    assert info.voi_applied == "none"
    assert info.transfer_syntax == "1.2.840.10008.1.2.1"
    assert (info.rows, info.columns) == source.shape


def test_monochrome1_8bit_is_inverted(tmp_path: Path, sources: list[np.ndarray]) -> None:
    for source in sources:
        path = make_dicom(tmp_path / "m1.dcm", 255 - source, photometric="MONOCHROME1")
        image, info = _read(path)
        np.testing.assert_array_equal(image, source)
        assert info.photometric == "MONOCHROME1"


def test_dx_sop_class(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(tmp_path / "dx.dcm", 255 - src, photometric="MONOCHROME1", modality="DX")
    image, _ = _read(path)
    np.testing.assert_array_equal(image, src)


def test_16bit_bits_stored_12_without_voi(tmp_path: Path, sources: list[np.ndarray]) -> None:
    for source in sources:
        stored = source.astype(np.uint16) * 16 + 8
        path = make_dicom(tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12)
        image, info = _read(path)
        assert _max_diff(image, _stretch(source)) <= 1
        assert info.bits_stored == 12 and info.voi_applied == "none"


def test_16bit_fullres_without_voi(tmp_path: Path, fullres_small: np.ndarray) -> None:
    stored = fullres_small.astype(np.uint16) * 256 + 37
    path = make_dicom(tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=16)
    image, _ = _read(path)
    assert _max_diff(image, _stretch(fullres_small)) <= 1


def test_unused_high_bits_are_ignored(tmp_path: Path, src: np.ndarray) -> None:
    """Old-style overlays live in the bits above Bits Stored; they must not leak in."""
    stored = src.astype(np.uint16) * 16 + 8
    stored[::7, ::5] |= 0x4000
    path = make_dicom(tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12)
    image, _ = _read(path)
    assert _max_diff(image, _stretch(src)) <= 1


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT"])
def test_16bit_window_maps_to_source(
    tmp_path: Path, sources: list[np.ndarray], fullres_small: np.ndarray, function
) -> None:
    for source in [*sources, fullres_small]:
        stored = source.astype(np.uint16) * 16 + 8
        lo, hi = float(stored.min()), float(stored.max())
        if function == "LINEAR_EXACT":
            window = ((lo + hi) / 2, hi - lo)
        else:  # PS3.3 C.11.2.1.2.1: lo -> 0 and hi -> max for c - 0.5 +- (w - 1) / 2
            window = ((lo + hi) / 2 + 0.5, hi - lo + 1)
        path = make_dicom(
            tmp_path / "w.dcm",
            stored,
            bits_allocated=16,
            bits_stored=12,
            window=window,
            voi_lut_function=function,
        )
        image, info = _read(path)
        assert info.voi_applied == "window"
        assert _max_diff(image, _stretch(source)) <= 1


def test_window_clips_outside_range(tmp_path: Path, src: np.ndarray) -> None:
    stored = src.astype(np.uint16) * 16
    # window over source values 64..191 only: below -> 0, above -> 255
    lo, hi = 64 * 16, 191 * 16
    path = make_dicom(
        tmp_path / "w.dcm",
        stored,
        bits_allocated=16,
        bits_stored=12,
        window=((lo + hi) / 2 + 0.5, hi - lo + 1),
    )
    image, _ = _read(path)
    assert (image[src <= 64] == 0).all()
    assert (image[src >= 191] == 255).all()
    mid = (src > 64) & (src < 191)
    expected = np.rint((src[mid].astype(float) - 64) * 255 / 127)
    assert np.abs(image[mid] - expected).max() <= 1


def test_sigmoid_window(tmp_path: Path, src: np.ndarray) -> None:
    stored = src.astype(np.uint16) * 16
    path = make_dicom(
        tmp_path / "s.dcm",
        stored,
        bits_allocated=16,
        bits_stored=12,
        window=(2048, 1024),
        voi_lut_function="SIGMOID",
    )
    image, info = _read(path)
    assert info.voi_applied == "window"
    expected = 255 / (1 + np.exp(-4 * (stored.astype(float) - 2048) / 1024))
    assert _max_diff(image, np.rint(expected).astype(np.uint8)) <= 1


def test_monochrome1_16bit_window(tmp_path: Path, fullres_small: np.ndarray) -> None:
    stored = (255 - fullres_small.astype(np.uint16)) * 16 + 8
    lo, hi = float(stored.min()), float(stored.max())
    path = make_dicom(
        tmp_path / "m1.dcm",
        stored,
        bits_allocated=16,
        bits_stored=12,
        photometric="MONOCHROME1",
        window=((lo + hi) / 2 + 0.5, hi - lo + 1),
    )
    image, _ = _read(path)
    assert _max_diff(image, _stretch(fullres_small)) <= 1


@pytest.mark.parametrize("lut_bits", [16, 8])
def test_voi_lut_sequence(tmp_path: Path, sources: list[np.ndarray], lut_bits: int) -> None:
    """A 4096-entry VOI LUT; with 8-bit entries (pydicom 3.0's apply_voi wraps the
    indices of such a LUT at 256, so dicom.py applies LUTs itself)."""
    entries = np.arange(4096)
    top = 2**lut_bits - 1
    lut = np.rint(np.clip((entries - 8) / (255 * 16), 0, 1) * top).astype(np.int64)
    for source in sources:
        stored = source.astype(np.uint16) * 16 + 8
        path = make_dicom(
            tmp_path / "lut.dcm",
            stored,
            bits_allocated=16,
            bits_stored=12,
            voi_lut=lut,
            voi_lut_bits=lut_bits,
            window=(100, 10),  # present but the LUT wins
        )
        image, info = _read(path)
        assert info.voi_applied == "lut"
        assert _max_diff(image, source) <= 1


def test_voi_lut_first_mapped_value(tmp_path: Path, src: np.ndarray) -> None:
    stored = src.astype(np.uint16) * 16 + 1000
    lut = np.arange(256 * 16) // 16  # covers input values 1000 .. 1000 + 4095
    path = make_dicom(
        tmp_path / "lut.dcm",
        stored,
        bits_allocated=16,
        bits_stored=16,
        voi_lut=lut,
        voi_lut_first_map=1000,
        voi_lut_bits=8,
    )
    image, _ = _read(path)
    assert _max_diff(image, src) <= 1


def test_rescale_feeds_the_window(tmp_path: Path, src: np.ndarray) -> None:
    """The window is in modality (rescaled) units: ignoring the rescale would saturate."""
    stored = src.astype(np.uint16) * 4 + 100
    path = make_dicom(
        tmp_path / "r.dcm",
        stored,
        bits_allocated=16,
        bits_stored=12,
        rescale=(0.25, -25),  # modality value == src
        window=(128, 256),  # 0 -> 0, 255 -> 255
    )
    image, info = _read(path)
    assert info.voi_applied == "window"
    assert _max_diff(image, src) <= 1


def test_negative_rescale_slope(tmp_path: Path, src: np.ndarray) -> None:
    stored = 4095 - src.astype(np.uint16) * 16
    path = make_dicom(
        tmp_path / "r.dcm", stored, bits_allocated=16, bits_stored=12, rescale=(-1, 4095)
    )
    image, _ = _read(path)
    assert _max_diff(image, _stretch(src)) <= 1


def test_8bit_rescale_out_of_range_is_stretched(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(tmp_path / "r.dcm", src, rescale=(2, -300))
    image, _ = _read(path)
    assert _max_diff(image, _stretch(src)) <= 1


def test_signed_pixels(tmp_path: Path, sources: list[np.ndarray]) -> None:
    for source in sources:
        stored = source.astype(np.int16) * 16 - 2048  # -2048 .. 2032
        path = make_dicom(tmp_path / "s.dcm", stored, bits_allocated=16, bits_stored=12)
        assert pydicom.dcmread(path).PixelRepresentation == 1
        image, _ = _read(path)
        assert _max_diff(image, _stretch(source)) <= 1

        lo, hi = float(stored.min()), float(stored.max())
        path = make_dicom(
            tmp_path / "sw.dcm",
            stored,
            bits_allocated=16,
            bits_stored=12,
            window=((lo + hi) / 2 + 0.5, hi - lo + 1),
        )
        image, _ = _read(path)
        assert _max_diff(image, _stretch(source)) <= 1


def test_signed_12bit_without_sign_extension(tmp_path: Path, src: np.ndarray) -> None:
    """12-bit two's complement stored with the high 4 bits clear must be sign-extended."""
    signed = src.astype(np.int16) * 16 - 2048
    raw = (signed.astype(np.int32) & 0x0FFF).astype(np.uint16)
    path = make_dicom(
        tmp_path / "s.dcm",
        raw,
        bits_allocated=16,
        bits_stored=12,
        extra={"PixelRepresentation": 1},
    )
    image, _ = _read(path)
    assert _max_diff(image, _stretch(src)) <= 1


def test_signed_8bit(tmp_path: Path, src: np.ndarray) -> None:
    stored = (src.astype(np.int16) - 128).astype(np.int8)
    image, _ = _read(make_dicom(tmp_path / "s8.dcm", stored))
    assert _max_diff(image, _stretch(src)) <= 1


def test_pixel_padding_is_black_and_left_out_of_min_max(tmp_path: Path, src: np.ndarray) -> None:
    stored = src.astype(np.uint16) * 16 + 1000
    stored[:20, :] = 0  # padding outside the collimated field
    path = make_dicom(
        tmp_path / "p.dcm", stored, bits_allocated=16, bits_stored=16, pixel_padding_value=0
    )
    image, _ = _read(path)
    assert (image[:20] == 0).all()
    assert _max_diff(image[20:], _stretch(src[20:])) <= 1


def test_rle_lossless_decodes(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(
        tmp_path / "a.dcm", src.astype(np.uint16) * 16, bits_allocated=16, bits_stored=12
    )
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    image, info = _read(tmp_path / "rle.dcm")
    assert info.transfer_syntax == RLELossless
    assert _max_diff(image, _stretch(src)) <= 1


def test_jpeg_baseline_decodes_when_a_decoder_is_installed(tmp_path: Path, src: np.ndarray):
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG Baseline decoder installed")
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, format="JPEG", quality=95)
    path = make_dicom(
        tmp_path / "j.dcm",
        src,
        transfer_syntax=JPEGBaseline8Bit,
        encapsulated_frames=[buf.getvalue()],
    )
    image, info = _read(path)
    assert info.transfer_syntax == JPEGBaseline8Bit
    reference = _load_l(io.BytesIO(buf.getvalue()))  # type: ignore[arg-type]
    assert _max_diff(image, reference) <= 1
    assert np.abs(image.astype(int) - src).mean() < 2


# --- sex and age -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [("M", "M"), ("F", "F"), ("f", "F"), ("O", None), ("", None), (None, None)],
)
def test_sex(tmp_path: Path, src: np.ndarray, code, expected) -> None:
    _, info = _read(make_dicom(tmp_path / "a.dcm", src, sex=code))
    assert info.sex == expected


@pytest.mark.parametrize(
    ("kwargs", "months", "source"),
    [
        ({}, 120, "dates"),
        ({"birth_date": "20100615", "study_date": "20150101"}, 54.5, "dates"),
        ({"birth_date": "2010.01.01", "study_date": "2020.01.01"}, 120, "dates"),
        ({"study_date": None, "series_date": "20200101"}, 120, "dates"),
        ({"study_date": None, "acquisition_date": "20150101"}, 60, "dates"),
        ({"study_date": None, "content_date": "20110101"}, 12, "dates"),
        # dates win over Patient's Age
        ({"patient_age": "003Y"}, 120, "dates"),
        ({"birth_date": None, "patient_age": "010Y"}, 120, "patient_age"),
        ({"birth_date": None, "patient_age": "018M"}, 18, "patient_age"),
        ({"birth_date": None, "patient_age": "006W"}, 42 / (365.2425 / 12), "patient_age"),
        ({"birth_date": None, "patient_age": "030D"}, 30 / (365.2425 / 12), "patient_age"),
        ({"study_date": None, "patient_age": "012Y"}, 144, "patient_age"),
        # unusable dates fall back to Patient's Age
        ({"birth_date": "20101399", "patient_age": "011Y"}, 132, "patient_age"),
        ({"birth_date": "20210101", "patient_age": "008Y"}, 96, "patient_age"),
        # nothing usable
        ({"birth_date": None}, None, None),
        ({"study_date": None}, None, None),
        ({"birth_date": "20210101"}, None, None),
        ({"birth_date": None, "patient_age": "12 years"}, None, None),
        # ages over 89 are identifying (HIPAA safe harbor): not reported
        ({"birth_date": "19200101", "study_date": "20200101"}, None, None),
        ({"birth_date": None, "patient_age": "095Y"}, None, None),
    ],
)
def test_chronological_age(tmp_path: Path, src: np.ndarray, kwargs, months, source) -> None:
    _, info = _read(make_dicom(tmp_path / "a.dcm", src, **kwargs))
    assert info.age_source == source
    if months is None:
        assert info.chronological_age_months is None
    else:
        assert info.chronological_age_months == pytest.approx(months, abs=1)


# --- rejects ---------------------------------------------------------------------------


def test_too_many_pixels_rejected_before_decoding(
    tmp_path: Path, src: np.ndarray, monkeypatch
) -> None:
    # header claims 50000 x 50000 around a few bytes of pixel data: decoding would fail,
    # so TOO_MANY_PIXELS shows the check came first
    path = make_dicom(tmp_path / "big.dcm", src[:4, :4], extra={"Rows": 50000, "Columns": 50000})
    calls: list[bool] = []
    real_dcmread = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(bool(kwargs.get("stop_before_pixels")))
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(dicom_mod.pydicom, "dcmread", spy)
    err = _reject(path, max_pixels=10**8)
    assert err.reason == Reason.TOO_MANY_PIXELS
    assert calls == [True]  # only the header was read
    monkeypatch.undo()

    path = make_dicom(tmp_path / "a.dcm", src)
    n = src.shape[0] * src.shape[1]
    assert _reject(path, max_pixels=n - 1).reason == Reason.TOO_MANY_PIXELS
    _read(path, max_pixels=n)


@pytest.mark.parametrize("keep", [0.6, 0.95, 300, 140])
def test_truncated_file_is_unreadable(tmp_path: Path, src: np.ndarray, keep) -> None:
    path = make_dicom(
        tmp_path / "a.dcm", src.astype(np.uint16) * 16, bits_allocated=16, bits_stored=12
    )
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    assert is_dicom(path)
    assert _reject(path).reason == Reason.UNREADABLE_IMAGE


def test_garbage_after_prefix_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "g.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    assert _reject(path).reason == Reason.UNREADABLE_IMAGE


def _undecodable_syntax() -> str | None:
    for uid in (JPEGLSLossless, JPEGLosslessSV1, HTJ2KLossless, JPEG2000):
        if not get_decoder(uid).is_available:
            return uid
    return None


def test_compressed_without_decoder_is_unsupported(
    tmp_path: Path, src: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = _undecodable_syntax()
    if uid is None:
        # Every candidate has a decoder installed here: hide JPEG-LS's so the path without
        # one is still exercised (as on a machine without pylibjpeg/pyjpegls).
        uid = JPEGLSLossless

        class _NoDecoder:
            is_available = False
            available_plugins: tuple[str, ...] = ()

        real = dicom_mod.get_decoder
        monkeypatch.setattr(
            dicom_mod, "get_decoder", lambda u: _NoDecoder() if u == uid else real(u)
        )
    path = make_dicom(
        tmp_path / "c.dcm", src, transfer_syntax=uid, encapsulated_frames=[b"\xff\xd8bogus\xff\xd9"]
    )
    err = _reject(path)
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert uid in err.detail


def test_compressed_with_bogus_data(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(
        tmp_path / "c.dcm",
        src,
        transfer_syntax=JPEGBaseline8Bit,
        encapsulated_frames=[b"\xff\xd8not really a jpeg\xff\xd9"],
    )
    err = _reject(path)
    if get_decoder(JPEGBaseline8Bit).is_available:
        assert err.reason == Reason.UNREADABLE_IMAGE
    else:
        assert err.reason == Reason.UNSUPPORTED_DICOM
    assert JPEGBaseline8Bit in err.detail


def test_12bit_jpeg_extended_needs_more_than_pillow(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(
        tmp_path / "x.dcm",
        src.astype(np.uint16) * 16,
        bits_allocated=16,
        bits_stored=12,
        transfer_syntax=JPEGExtended12Bit,
        encapsulated_frames=[b"\xff\xd8not really a jpeg\xff\xd9"],
    )
    err = _reject(path)
    plugins = set(get_decoder(JPEGExtended12Bit).available_plugins)
    if plugins <= {"pillow"}:
        assert err.reason == Reason.UNSUPPORTED_DICOM
        assert JPEGExtended12Bit in err.detail and "12-bit" in err.detail
    else:  # a 12-bit capable decoder is installed: the bogus data is what fails
        assert err.reason == Reason.UNREADABLE_IMAGE


def test_unknown_transfer_syntax(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(tmp_path / "a.dcm", src)
    data = path.read_bytes()
    known = b"1.2.840.10008.1.2.1\x00"
    assert data.count(known) == 1
    path.write_bytes(data.replace(known, b"1.2.840.99999.1.2.1\x00"))
    err = _reject(path)
    assert err.reason in (Reason.UNSUPPORTED_DICOM, Reason.UNREADABLE_IMAGE)


def test_multi_frame_is_unsupported(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(tmp_path / "mf.dcm", np.stack([src, 255 - src]))
    err = _reject(path)
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert "2 frames" in err.detail and "single-frame" in err.detail


def test_single_frame_with_number_of_frames_1_is_fine(tmp_path: Path, src: np.ndarray) -> None:
    image, _ = _read(make_dicom(tmp_path / "a.dcm", src, extra={"NumberOfFrames": 1}))
    np.testing.assert_array_equal(image, src)


def test_colour_is_unsupported(tmp_path: Path, src: np.ndarray) -> None:
    rgb = np.stack([src, src, src], axis=-1)
    err = _reject(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert "3 samples per pixel" in err.detail

    path = make_dicom(
        tmp_path / "pal.dcm", src, extra={"PhotometricInterpretation": "PALETTE COLOR"}
    )
    err = _reject(path)
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert "PALETTE COLOR" in err.detail


def test_no_pixel_data_is_unsupported(tmp_path: Path, src: np.ndarray) -> None:
    err = _reject(make_dicom(tmp_path / "np.dcm", src, include_pixel_data=False))
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert "Pixel Data" in err.detail


def test_non_image_object_is_unsupported(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(
        tmp_path / "sr.dcm",
        src,
        include_pixel_data=False,
        extra={"SOPClassUID": BasicTextSRStorage, "Rows": None, "Columns": None},
    )
    err = _reject(path)
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert "Basic Text SR Storage" in err.detail


def test_image_object_without_rows_is_unreadable(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(
        tmp_path / "cr.dcm", src, include_pixel_data=False, extra={"Rows": None, "Columns": None}
    )
    err = _reject(path)
    assert err.reason == Reason.UNREADABLE_IMAGE
    assert "Computed Radiography Image Storage" in err.detail


def test_unusual_bit_depth_is_unsupported(tmp_path: Path, src: np.ndarray) -> None:
    path = make_dicom(
        tmp_path / "32.dcm", src.astype(np.uint16), bits_allocated=16, extra={"BitsAllocated": 32}
    )
    err = _reject(path)
    assert err.reason == Reason.UNSUPPORTED_DICOM
    assert "32" in err.detail


# --- PHI -------------------------------------------------------------------------------


def test_dicom_info_has_only_non_identifying_fields() -> None:
    assert [f.name for f in dataclasses.fields(DicomInfo)] == [
        "sex",
        "chronological_age_months",
        "age_source",
        "photometric",
        "bits_stored",
        "rows",
        "columns",
        "transfer_syntax",
        "voi_applied",
    ]


def test_no_phi_in_warnings_logs_or_output(tmp_path: Path, src: np.ndarray, caplog, capsys) -> None:
    """Invalid PHI values (which pydicom's validation would quote) stay out of warnings,
    logs, stdout/stderr, the DicomInfo and reject details."""
    kwargs = dict(
        birth_date="CANARY-BAD-DATE",
        study_date="CANARY-STUDY",
        patient_age="CANARY-AGE",
        sex="CANARY-SEX",
        extra={"AdditionalPatientHistory": "CANARY-HISTORY"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing invalid values warns (test side only)
        good = make_dicom(tmp_path / "good.dcm", src, **kwargs)
        multi = make_dicom(tmp_path / "mf.dcm", np.stack([src, src]), **kwargs)
    truncated = tmp_path / "trunc.dcm"
    truncated.write_bytes(good.read_bytes()[:-5000])

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, info = _read(good)
        errors = [_reject(multi), _reject(truncated), _reject(good, max_pixels=10)]
    text = "\n".join(
        [
            repr(info),
            *(str(w.message) for w in caught),
            caplog.text,
            *capsys.readouterr(),
            *(f"{e} {e.detail!r} {e.args!r}" for e in errors),
        ]
    )
    _assert_no_phi(text)
    assert "CANARY" not in text
    assert info.sex is None and info.chronological_age_months is None
    np.testing.assert_array_equal(image, src)
