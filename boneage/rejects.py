"""Reasons an input row or file is rejected, and the exception that carries one.

Every input row and every file in a cohort ends up either in the manifest or in the
rejected list with one of these reasons and a one-line detail.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    UNREADABLE_IMAGE = "unreadable_image"  # truncated / corrupt / undecodable image data
    NOT_AN_IMAGE = "not_an_image"  # a file in the cohort that is no image we can read
    TOO_MANY_PIXELS = "too_many_pixels"  # over ingest.max_pixels (decompression bomb guard)
    BLANK_IMAGE = "blank_image"  # constant or near-constant pixels
    UNSUPPORTED_DICOM = "unsupported_dicom"  # e.g. compressed transfer syntax, no pixel data
    DUPLICATE_ID = "duplicate_id"  # id seen before (the first occurrence is kept)
    DUPLICATE_IMAGE = "duplicate_image"  # several image files for one id (one is used)
    INVALID_ID = "invalid_id"  # empty id or id with characters not allowed
    MISSING_LABEL = "missing_label"  # no bone age where one is required
    INVALID_LABEL = "invalid_label"  # non-numeric age
    LABEL_OUT_OF_RANGE = "label_out_of_range"  # age outside 0..240 months
    UNKNOWN_SEX = "unknown_sex"  # sex code not recognised / missing
    PATH_ESCAPES_COHORT = "path_escapes_cohort"  # CSV path resolves outside the cohort dir
    IMAGE_NOT_FOUND = "image_not_found"  # CSV row whose image file does not exist
    NO_LABEL_ROW = "no_label_row"  # image file with no CSV row (when a CSV is given)
    DUPLICATE_CONTENT = "duplicate_content"  # same file bytes as an image ingested under another id
    TOO_SMALL = "too_small"  # QC: shorter side under ingest.qc.min_side, or a sliver
    NOT_A_HAND = "not_a_hand"  # QC: no hand radiograph (hand score / feature distance)


class RejectError(Exception):
    """Raised by a per-image step; the caller turns it into a rejected row."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = " ".join(str(detail).split())  # always one line
