"""Read single-frame grayscale DICOM radiographs as 8-bit images, keeping no PHI.

`read_dicom` returns a 2-D uint8 image (0 = black, bone bright) and a `DicomInfo` that
holds only non-identifying facts: sex, chronological age (derived, never the dates
themselves), and how the pixels were decoded. Names, IDs, dates, UIDs, institution,
physicians ... are never returned, logged or put into a reject detail.

Pipeline (PS3.3 C.11 order):
1. header only (stop_before_pixels): size guard (Rows*Columns > max_pixels is rejected
   before any pixel data is read or decoded) and the checks on what we can handle:
   one frame, one sample per pixel, MONOCHROME1/2, 8/16 bits allocated, a transfer
   syntax with an available decoder;
2. decode the pixel data (pydicom; unused high bits masked, signed data sign-extended);
3. modality LUT / Rescale Slope+Intercept (pydicom.pixels.apply_modality_lut);
4. VOI: the first VOI LUT Sequence item, else the first Window Center/Width
   (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID); the VOI output range maps
   linearly to 0..255. A VOI LUT's output range is taken as [min, max] of its data
   (robust to LUTs whose descriptor bit depth overstates the data's);
   without VOI: Bits Stored <= 8 and values already in 0..255 are kept as they are,
   anything else maps its robust [min, max] linearly to 0..255 — outliers far beyond the
   0.5-99.5th percentile bulk (saturated markers, hot pixels) are left out of the window
   and clip to black/white (boneage.windowing.robust_range); Pixel Padding Value pixels
   are left out too and come out black;
5. MONOCHROME1 is inverted (255 - x) so that bone is bright.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, JPEGExtended12Bit

from boneage.rejects import Reason, RejectError
from boneage.windowing import robust_range

_PREFIX_OFFSET = 128
_PREFIX = b"DICM"
DAYS_PER_MONTH = 365.2425 / 12
# HIPAA Safe Harbor: ages over 89 are identifying; such ages are not reported.
MAX_REPORTED_AGE_MONTHS = 90 * 12
_STUDY_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_PATIENT_AGE = re.compile(r"(\d{1,3})([DWMY])")
_UID_TEXT = re.compile(r"[0-9.]{1,64}")
_CODE_TEXT = re.compile(r"[A-Z0-9_ ]{1,16}")


@dataclass(frozen=True)
class DicomInfo:
    """Non-identifying facts about a decoded DICOM image (safe to store and log)."""

    sex: str | None  # 'M' / 'F'; None when absent or anything else ('O', '', ...)
    chronological_age_months: float | None
    age_source: str | None  # 'dates' / 'patient_age' / None
    photometric: str  # 'MONOCHROME1' / 'MONOCHROME2'
    bits_stored: int
    rows: int
    columns: int
    transfer_syntax: str  # the UID, e.g. '1.2.840.10008.1.2.1'
    voi_applied: str  # 'lut' / 'window' / 'none'


def is_dicom(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 prefix b"DICM" at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PREFIX_OFFSET + len(_PREFIX))
    except OSError:
        return False
    return head[_PREFIX_OFFSET:] == _PREFIX


@contextmanager
def _quiet() -> Iterator[None]:
    """No pydicom value-validation warnings (they quote element values, i.e. PHI)."""
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


def _dcmread(path: Path | io.BytesIO, what: str, **kwargs: Any) -> Dataset:
    """pydicom.dcmread that treats a truncated file as unreadable.

    pydicom stops quietly (with a warning) where a file ends inside an element; here
    that is an UNREADABLE_IMAGE reject, not a dataset with elements missing.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, **kwargs)
        except EOFError:
            raise _unreadable(f"DICOM file is truncated (it ends inside the {what})") from None
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise _unreadable(f"DICOM {what} could not be parsed ({type(exc).__name__})") from None
    if any("end of file" in str(w.message).lower() for w in caught):
        raise _unreadable(f"DICOM file is truncated (it ends inside the {what})")
    return ds


def _unsupported(detail: str) -> RejectError:
    return RejectError(Reason.UNSUPPORTED_DICOM, detail)


def _unreadable(detail: str) -> RejectError:
    return RejectError(Reason.UNREADABLE_IMAGE, detail)


def _uid_label(value: Any) -> str:
    """'Name (uid)' for a UID we know, the bare UID if it looks like one, else a stub."""
    text = str(value).strip() if value is not None else ""
    if not _UID_TEXT.fullmatch(text):
        return "an invalid UID"
    name = UID(text).name
    return f"{name} ({text})" if name != text else text


def _code_label(value: Any) -> str:
    """A coded string (e.g. Photometric Interpretation) for a detail, or a stub."""
    text = str(value).strip().upper() if value is not None else ""
    return text if _CODE_TEXT.fullmatch(text) else "an invalid value"


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword)
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return default
    return int(value)


def _first_float(value: Any) -> float:
    if isinstance(value, str | bytes):
        return float(value)
    try:
        return float(value[0])
    except TypeError:
        return float(value)


# --- header: sex, age ----------------------------------------------------------------


def _sex(ds: Dataset) -> str | None:
    value = ds.get("PatientSex")
    text = str(value).strip().upper() if value is not None else ""
    return text if text in ("M", "F") else None


def _parse_da(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return date(value.year, value.month, value.day)
    text = str(value).strip().replace(".", "")  # also the old ACR-NEMA YYYY.MM.DD form
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _plausible(months: float) -> bool:
    return math.isfinite(months) and 0 <= months < MAX_REPORTED_AGE_MONTHS


def _age(ds: Dataset) -> tuple[float | None, str | None]:
    birth = _parse_da(ds.get("PatientBirthDate"))
    if birth is not None:
        for keyword in _STUDY_DATE_KEYWORDS:
            study = _parse_da(ds.get(keyword))
            if study is None:
                continue
            months = (study - birth).days / DAYS_PER_MONTH
            if _plausible(months):
                return round(months, 2), "dates"
            break  # the first study date present decides; an implausible one is no age
    value = ds.get("PatientAge")
    match = _PATIENT_AGE.fullmatch(str(value).strip().upper()) if value is not None else None
    if match:
        n, unit = int(match.group(1)), match.group(2)
        months = {"D": n / DAYS_PER_MONTH, "W": 7 * n / DAYS_PER_MONTH, "M": n, "Y": 12 * n}[unit]
        if _plausible(months):
            return round(float(months), 2), "patient_age"
    return None, None


# --- header: what we can decode --------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    transfer_syntax: str


def _check_header(ds: Dataset, max_pixels: int) -> _Geometry:
    rows = _int(ds, "Rows")
    columns = _int(ds, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        # pydicom stops quietly at a file end that falls between elements, so a missing
        # SOP class or an image object without Rows/Columns means a truncated/corrupt file
        sop = ds.get("SOPClassUID")
        if not sop and hasattr(ds, "file_meta"):
            sop = ds.file_meta.get("MediaStorageSOPClassUID")
        if not sop:
            raise _unreadable(
                "DICOM data set has neither SOP Class UID nor Rows/Columns (truncated or corrupt)"
            )
        if "Image Storage" in UID(str(sop).strip()).name:
            raise _unreadable(
                f"DICOM image object ({_uid_label(sop)}) without Rows/Columns "
                "(truncated or corrupt)"
            )
        raise _unsupported(f"DICOM object without an image ({_uid_label(sop)})")
    if rows * columns > max_pixels:
        raise RejectError(
            Reason.TOO_MANY_PIXELS,
            f"DICOM image of {rows}x{columns} = {rows * columns} pixels is over "
            f"max_pixels={max_pixels}",
        )
    frames = _int(ds, "NumberOfFrames", 1)
    if frames is not None and frames > 1:
        raise _unsupported(
            f"multi-frame DICOM with {frames} frames: a hand radiograph is one frame and "
            "it is not known which frame holds it; export the radiograph as a "
            "single-frame image"
        )
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1:
        raise _unsupported(
            f"{samples} samples per pixel ({_code_label(photometric)}): only grayscale "
            "(MONOCHROME1/MONOCHROME2) radiographs are supported"
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise _unsupported(
            f"photometric interpretation {_code_label(photometric)}: only grayscale "
            "(MONOCHROME1/MONOCHROME2) radiographs are supported"
        )
    bits_allocated = _int(ds, "BitsAllocated")
    if bits_allocated not in (8, 16):
        raise _unsupported(f"bits allocated {bits_allocated}: only 8 or 16 are supported")
    bits_stored = _int(ds, "BitsStored", bits_allocated)
    if bits_stored is None or not 1 <= bits_stored <= bits_allocated:
        raise _unsupported(
            f"bits stored {bits_stored} does not fit bits allocated {bits_allocated}"
        )
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsyntax:
        raise _unsupported("no Transfer Syntax UID in the DICOM file meta information")
    uid = UID(str(tsyntax).strip())
    if not _UID_TEXT.fullmatch(str(uid)) or not uid.is_transfer_syntax:
        raise _unsupported(f"unknown transfer syntax {_uid_label(uid)}")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise _unsupported(f"transfer syntax {_uid_label(uid)} has no pixel data decoder") from None
    if not decoder.is_available:
        raise _unsupported(
            f"compressed transfer syntax {_uid_label(uid)}: no decoder for it is installed"
        )
    if (
        uid == JPEGExtended12Bit
        and bits_stored > 8
        and set(decoder.available_plugins) <= {"pillow"}
    ):
        raise _unsupported(
            f"compressed transfer syntax {_uid_label(uid)} with {bits_stored}-bit samples: "
            "the installed decoder (Pillow) reads 8-bit samples only"
        )
    return _Geometry(rows, columns, bits_allocated, bits_stored, photometric, str(uid))


# --- pixels ----------------------------------------------------------------------------


def _padding_mask(ds: Dataset, raw: np.ndarray) -> np.ndarray | None:
    try:
        pad = _int(ds, "PixelPaddingValue")
        limit = _int(ds, "PixelPaddingRangeLimit")
    except (TypeError, ValueError):
        return None
    if pad is None:
        return None
    if limit is None:
        mask = raw == pad
    else:
        lo, hi = min(pad, limit), max(pad, limit)
        mask = (raw >= lo) & (raw <= hi)
    return mask if mask.any() and not mask.all() else None


def _lut_array(item: Dataset, little_endian: bool) -> tuple[np.ndarray, int]:
    """The LUT data as int64 and its first mapped input value."""
    descriptor = list(item.LUTDescriptor)
    n_entries = int(descriptor[0]) or 65536
    first_map = int(descriptor[1])
    elem = item["LUTData"]
    value = elem.value
    if isinstance(value, bytes | bytearray):
        if len(value) == n_entries:  # 8-bit entries stored as bytes
            lut = np.frombuffer(value, dtype=np.uint8)
        else:
            lut = np.frombuffer(value, dtype="<u2" if little_endian else ">u2")
    elif isinstance(value, int):
        lut = np.asarray([value])
    else:
        lut = np.asarray(list(value))
    lut = lut[:n_entries].astype(np.int64)
    if lut.size == 0:
        raise ValueError("empty LUT")
    return lut, first_map


def _apply_voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT Sequence item applied, scaled to 0..1; None if there is none."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    little_endian = True
    if hasattr(ds, "file_meta") and ds.file_meta.get("TransferSyntaxUID"):
        little_endian = UID(ds.file_meta.TransferSyntaxUID).is_little_endian
    lut, first_map = _lut_array(item, little_endian)
    if _int(ds, "PixelRepresentation", 0) == 1 and first_map > 32767:
        first_map -= 65536  # descriptor read as US although the data are signed
    index = np.clip(np.rint(values) - first_map, 0, lut.size - 1).astype(np.int64)
    out = lut[index].astype(np.float64)
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


def _apply_window(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first Window Center/Width applied (PS3.3 C.11.2.1.2/3), scaled to 0..1."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        center = _first_float(ds.WindowCenter)
        width = _first_float(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(center) and math.isfinite(width)):
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    x = values.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR, the default (an unknown function is treated as LINEAR)
    if width < 1:
        return None
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _min_max(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[lo, hi] → 0..255 over the robust range (boneage.windowing.robust_range): a
    saturated marker or hot pixel does not set the window; padding is left out."""

    lo, hi = robust_range(values, mask)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values.astype(np.float64) - lo) * (255.0 / (hi - lo))


def _to_uint8(raw: np.ndarray, ds: Dataset, geometry: _Geometry) -> tuple[np.ndarray, str]:
    mask = _padding_mask(ds, raw)
    try:
        values = apply_modality_lut(raw, ds)
    except Exception as exc:  # invalid rescale values / modality LUT
        raise _unsupported(
            f"modality LUT / rescale could not be applied ({type(exc).__name__})"
        ) from None
    values = np.asarray(values)
    if not np.all(np.isfinite(values)):
        raise _unsupported("modality LUT / rescale gives non-finite values")

    voi = "none"
    scaled: np.ndarray | None = None
    try:
        scaled = _apply_voi_lut(values, ds)
        if scaled is not None:
            voi = "lut"
    except Exception:  # a malformed VOI LUT: fall back to the window, if any
        scaled = None
    if scaled is None:
        scaled = _apply_window(values, ds)
        if scaled is not None:
            voi = "window"

    if scaled is not None:
        out = scaled * 255.0
    else:
        sample = values if mask is None else values[~mask]
        in_range = float(sample.min()) >= 0 and float(sample.max()) <= 255
        if geometry.bits_stored <= 8 and in_range:
            out = values.astype(np.float64)
        else:
            out = _min_max(values, mask)
    image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if geometry.photometric == "MONOCHROME1":
        image = 255 - image
    if mask is not None:
        image[mask] = 0
    return image, voi


# --- entry point -----------------------------------------------------------------------


def read_dicom(
    path: Path, max_pixels: int, data: bytes | None = None
) -> tuple[np.ndarray, DicomInfo]:
    """Decode a single-frame grayscale DICOM file into a 2-D uint8 image (bone bright).

    `data`: the file's bytes when the caller has read them already (ingest hashes them),
    so the file is not read from disk again; `path` then only names it.

    Raises RejectError: TOO_MANY_PIXELS (checked from the header, before decoding),
    UNSUPPORTED_DICOM (no pixel data, several frames, colour, unusual bit depth, a
    compressed transfer syntax without an installed decoder, ...), UNREADABLE_IMAGE
    (corrupt or truncated file), NOT_AN_IMAGE (no DICOM Part 10 prefix).
    Details never contain header values that identify a person.
    """
    path = Path(path)
    if data is not None:
        head = data[: _PREFIX_OFFSET + len(_PREFIX)]
    else:
        try:
            with open(path, "rb") as fh:
                head = fh.read(_PREFIX_OFFSET + len(_PREFIX))
        except OSError as exc:
            raise _unreadable(f"file could not be read ({type(exc).__name__})") from None

    def source() -> Path | io.BytesIO:
        return io.BytesIO(data) if data is not None else path

    if head[_PREFIX_OFFSET:] != _PREFIX:
        raise RejectError(
            Reason.NOT_AN_IMAGE, "not a DICOM Part 10 file (no 'DICM' prefix at byte 128)"
        )

    with _quiet():
        header = _dcmread(source(), "header", stop_before_pixels=True)
        try:
            geometry = _check_header(header, max_pixels)
        except RejectError:
            raise
        except Exception as exc:
            raise _unreadable(
                f"DICOM header has invalid image attributes ({type(exc).__name__})"
            ) from None
        try:
            sex = _sex(header)
        except Exception:  # an unparseable sex is no sex, not a reason to drop the image
            sex = None
        try:
            age, age_source = _age(header)
        except Exception:
            age, age_source = None, None
        del header

        ds = _dcmread(source(), "data set")
        if "PixelData" not in ds:
            other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
            if other:
                raise _unsupported(f"floating point pixel data ({other[0]}) is not supported")
            raise _unsupported("DICOM file has no Pixel Data element (7FE0,0010)")
        try:
            raw = ds.pixel_array
        except Exception as exc:
            raise _unreadable(
                f"DICOM pixel data could not be decoded with transfer syntax "
                f"{_uid_label(geometry.transfer_syntax)} ({type(exc).__name__})"
            ) from None
        if raw.shape != (geometry.rows, geometry.columns):
            raise _unreadable(
                f"decoded pixel data has shape {tuple(raw.shape)}, expected "
                f"({geometry.rows}, {geometry.columns})"
            )
        try:
            image, voi = _to_uint8(raw, ds, geometry)
        except RejectError:
            raise
        except Exception as exc:
            raise _unreadable(
                f"DICOM pixel values could not be converted ({type(exc).__name__})"
            ) from None

    info = DicomInfo(
        sex=sex,
        chronological_age_months=age,
        age_source=age_source,
        photometric=geometry.photometric,
        bits_stored=geometry.bits_stored,
        rows=geometry.rows,
        columns=geometry.columns,
        transfer_syntax=geometry.transfer_syntax,
        voi_applied=voi,
    )
    return image, info
