"""Test helper: write DICOM Part 10 files around given pixels.

`make_dicom` builds a CR (or DX) image with explicit VR little endian (or any other
transfer syntax when pre-encoded frames are given) and fills the patient/study
identifying attributes with *canary* values. Tests assert that no canary ever shows
up in outputs (manifests, reject details, logs, reprs): `CANARY_STRINGS` lists them all.

Pixels are written as given (no scaling): their dtype decides Pixel Representation
(signed integer dtype -> 1), `bits_allocated` the storage size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

CANARY_PATIENT_NAME = "CANARY^PHI^NAME"
CANARY_PATIENT_ID = "CANARY-PHI-ID-0001"
CANARY_ACCESSION = "CANARY-ACC-1"
CANARY_INSTITUTION = "CANARY HOSPITAL"
CANARY_STUDY_UID = "1.2.826.0.1.3680043.8.498.777001"
CANARY_SERIES_UID = "1.2.826.0.1.3680043.8.498.777002"

# Written when extra_phi=True: keyword -> value (every value contains "CANARY").
EXTRA_PHI: dict[str, str] = {
    "OtherPatientIDs": "CANARY-OTHER-ID",
    "PatientAddress": "CANARY STREET 1 CANARYTOWN",
    "PatientTelephoneNumbers": "CANARY-555-0100",
    "PatientMotherBirthName": "CANARY^MOTHER",
    "ReferringPhysicianName": "CANARY^REFERRER",
    "PerformingPhysicianName": "CANARY^PERFORMER",
    "OperatorsName": "CANARY^OPERATOR",
    "InstitutionAddress": "CANARY ROAD 2",
    "InstitutionalDepartmentName": "CANARY RADIOLOGY",
    "StationName": "CANARYSTATION",
    "StudyID": "CANARYSTUDY",
    "StudyDescription": "CANARY STUDY DESCRIPTION",
    "SeriesDescription": "CANARY SERIES DESCRIPTION",
    "DeviceSerialNumber": "CANARY-SERIAL",
    "PatientComments": "CANARY PATIENT COMMENT",
}

# Every identifying value make_dicom writes by default. (Dates are not in here: they are
# digit strings; tests check DEFAULT_BIRTH_DATE / DEFAULT_STUDY_DATE separately.)
CANARY_STRINGS: list[str] = [
    CANARY_PATIENT_NAME,
    CANARY_PATIENT_ID,
    CANARY_ACCESSION,
    CANARY_INSTITUTION,
    CANARY_STUDY_UID,
    CANARY_SERIES_UID,
    *EXTRA_PHI.values(),
]
DEFAULT_BIRTH_DATE = "20100101"
DEFAULT_STUDY_DATE = "20200101"

_SOP_CLASSES = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}


def _ds_str(value: float) -> str:
    """A DS (decimal string, at most 16 characters) for `value`."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.6g}"
    return text


def make_dicom(
    path: Path | str,
    pixels: np.ndarray,
    *,
    bits_allocated: int = 8,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    voi_lut_first_map: int = 0,
    voi_lut_bits: int = 16,
    voi_lut_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    sex: str | None = "M",
    birth_date: str | None = DEFAULT_BIRTH_DATE,
    study_date: str | None = DEFAULT_STUDY_DATE,
    series_date: str | None = None,
    acquisition_date: str | None = None,
    content_date: str | None = None,
    patient_age: str | None = None,
    patient_name: str = CANARY_PATIENT_NAME,
    patient_id: str = CANARY_PATIENT_ID,
    accession: str = CANARY_ACCESSION,
    institution: str = CANARY_INSTITUTION,
    extra_phi: bool = True,
    modality: str = "CR",
    pixel_padding_value: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encapsulated_frames: Sequence[bytes] | None = None,
    include_pixel_data: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `pixels` as a DICOM Part 10 file at `path` and return the path.

    pixels: (rows, cols) or, for several frames, (frames, rows, cols); with
        photometric "RGB" / "YBR_FULL" a trailing axis of 3 samples.
    bits_allocated: 8 or 16 (storage); bits_stored defaults to bits_allocated.
    window: (center, width) -> WindowCenter / WindowWidth (+ VOILUTFunction if given).
    voi_lut: LUT entries -> a VOI LUT Sequence item with descriptor
        [len, voi_lut_first_map, voi_lut_bits].
    rescale: (slope, intercept) -> RescaleSlope / RescaleIntercept.
    sex / birth_date / study_date / ... / patient_age: None leaves the attribute out.
    transfer_syntax + encapsulated_frames: write pre-encoded frames (encapsulated)
        under a compressed transfer syntax; `pixels` then only gives the geometry.
    include_pixel_data: False writes a file without (7FE0,0010) Pixel Data.
    extra: further attributes by keyword, set last (may override anything above);
        a value of None removes the attribute.
    """
    with pydicom_config.disable_value_validation():  # tests write invalid values on purpose
        return _make_dicom(**locals())


def _make_dicom(
    path: Path | str,
    pixels: np.ndarray,
    *,
    bits_allocated: int,
    bits_stored: int | None,
    photometric: str,
    window: tuple[float, float] | None,
    voi_lut: np.ndarray | None,
    voi_lut_first_map: int,
    voi_lut_bits: int,
    voi_lut_function: str | None,
    rescale: tuple[float, float] | None,
    sex: str | None,
    birth_date: str | None,
    study_date: str | None,
    series_date: str | None,
    acquisition_date: str | None,
    content_date: str | None,
    patient_age: str | None,
    patient_name: str,
    patient_id: str,
    accession: str,
    institution: str,
    extra_phi: bool,
    modality: str,
    pixel_padding_value: int | None,
    transfer_syntax: str,
    encapsulated_frames: Sequence[bytes] | None,
    include_pixel_data: bool,
    extra: Mapping[str, Any] | None,
) -> Path:
    path = Path(path)
    if bits_allocated not in (8, 16):
        raise ValueError("bits_allocated must be 8 or 16")
    bits_stored = bits_allocated if bits_stored is None else int(bits_stored)
    pixels = np.asarray(pixels)
    colour = photometric.upper() in ("RGB", "YBR_FULL")
    samples = 3 if colour else 1
    plane_ndim = 3 if colour else 2
    if pixels.ndim == plane_ndim:
        n_frames = 1
    elif pixels.ndim == plane_ndim + 1:
        n_frames = int(pixels.shape[0])
    else:
        raise ValueError(f"pixels of shape {pixels.shape} do not fit photometric {photometric}")
    rows, cols = (int(pixels.shape[-3]), int(pixels.shape[-2])) if colour else pixels.shape[-2:]
    signed = np.issubdtype(pixels.dtype, np.signedinteger)

    file_meta = FileMetaDataset()
    sop_class = _SOP_CLASSES[modality.upper()]
    sop_instance = generate_uid()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = sop_instance
    file_meta.TransferSyntaxUID = UID(transfer_syntax)

    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = CANARY_STUDY_UID
    ds.SeriesInstanceUID = CANARY_SERIES_UID
    ds.Modality = modality.upper()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.AccessionNumber = accession
    ds.InstitutionName = institution
    if sex is not None:
        ds.PatientSex = sex
    if birth_date is not None:
        ds.PatientBirthDate = birth_date
    if patient_age is not None:
        ds.PatientAge = patient_age
    for keyword, value in (
        ("StudyDate", study_date),
        ("SeriesDate", series_date),
        ("AcquisitionDate", acquisition_date),
        ("ContentDate", content_date),
    ):
        if value is not None:
            setattr(ds, keyword, value)
    if extra_phi:
        for keyword, value in EXTRA_PHI.items():
            setattr(ds, keyword, value)
    ds.BodyPartExamined = "HAND"

    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows = int(rows)
    ds.Columns = int(cols)
    if n_frames > 1 or pixels.ndim == plane_ndim + 1:
        ds.NumberOfFrames = n_frames
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if photometric.upper().startswith("MONOCHROME") and modality.upper() == "DX":
        ds.PresentationLUTShape = "INVERSE" if photometric.upper() == "MONOCHROME1" else "IDENTITY"

    if rescale is not None:
        ds.RescaleSlope = _ds_str(rescale[0])
        ds.RescaleIntercept = _ds_str(rescale[1])
    if window is not None:
        ds.WindowCenter = _ds_str(window[0])
        ds.WindowWidth = _ds_str(window[1])
    if voi_lut_function is not None:
        ds.VOILUTFunction = voi_lut_function
    if voi_lut is not None:
        lut = np.asarray(voi_lut).astype(np.int64).ravel()
        item = Dataset()
        n_entries = len(lut)
        descriptor_vr = "SS" if voi_lut_first_map < 0 else "US"
        item.add_new(
            0x00283002,
            descriptor_vr,
            [0 if n_entries == 65536 else n_entries, int(voi_lut_first_map), int(voi_lut_bits)],
        )
        item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUT Data
        item.LUTExplanation = "TEST LUT"
        ds.VOILUTSequence = DicomSequence([item])
    if pixel_padding_value is not None:
        ds.add_new(0x00280120, "SS" if signed else "US", int(pixel_padding_value))

    if include_pixel_data:
        if encapsulated_frames is not None:
            from pydicom.encaps import encapsulate

            ds.add_new(0x7FE00010, "OB", encapsulate(list(encapsulated_frames)))
        else:
            kind = "i" if signed else "u"
            dtype = np.dtype(f"<{kind}{bits_allocated // 8}")
            stored = pixels.astype(dtype)
            if not np.array_equal(stored.astype(np.int64), pixels.astype(np.int64)):
                raise ValueError(f"pixel values do not fit {dtype} (bits_allocated)")
            data = stored.tobytes()
            if len(data) % 2:
                data += b"\x00"
            ds.add_new(0x7FE00010, "OB" if bits_allocated == 8 else "OW", data)

    for keyword, value in (extra or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path
