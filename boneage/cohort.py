"""Finding the rows and files of a cohort.

Accepted layouts:

1. RSNA/Kaggle: labels CSV ``id,boneage,male``; images ``DIR/{id}.png|.jpg|.jpeg|.dcm``.
2. Generic CSV: ``id,sex[,path][,boneage_months][,chronological_age_months]``; sex as
   M/F, male/female, 1/0 or true/false; ``path`` relative to DIR (must stay inside DIR),
   else ``DIR/{id}.<image suffix>``.
3. No CSV: every image file under DIR (DICOM with or without suffix, PNG, JPEG, ...). Sex
   and chronological age come from DICOM headers; the id is the path relative to DIR
   without suffix ('/' replaced by '__').

Discovery does no image decoding: it pairs rows with files and rejects what it can judge
from the CSV and the file tree alone. Every CSV row and every file under DIR ends up as a
`Candidate` or a `Rejected` row with its reason.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from boneage.imageio import IMAGE_SUFFIXES, SUFFIX_PRIORITY
from boneage.rejects import Reason

MAX_AGE_MONTHS = 240.0
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEX_CODES = {
    "m": "M", "male": "M", "1": "M", "true": "M", "t": "M", "1.0": "M",
    "f": "F", "female": "F", "0": "F", "false": "F", "0.0": "F",
}  # fmt: skip


class CohortError(ValueError):
    """The cohort as a whole cannot be read (missing dir, malformed CSV): exit code 2."""


@dataclass
class Candidate:
    id: str
    path: Path  # absolute path of the image file
    source: str  # path relative to the cohort dir (posix)
    sex: str | None  # 'M' / 'F'; None = not given (may come from DICOM)
    sex_source: str  # 'csv' / 'missing'
    boneage_months: float | None
    chronological_age_months: float | None
    label_row: int | None  # line number in the CSV (header is line 1)


@dataclass
class Rejected:
    reason: Reason
    detail: str
    id: str | None = None
    source: str | None = None
    row: int | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "source": self.source,
            "row": self.row,
            "reason": self.reason.value,
            "detail": self.detail,
        }


@dataclass
class Cohort:
    root: Path
    layout: str  # 'rsna' / 'generic' / 'folder'
    labels: Path | None
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def parse_sex(value: str) -> str | None:
    return _SEX_CODES.get(value.strip().lower())


def parse_age(value: str, column: str, required: bool) -> tuple[float | None, Rejected | None]:
    """Parse an age in months. Returns (age, None) or (None, rejection)."""
    text = value.strip()
    if text == "" or text.lower() in {"na", "nan", "null", "none"}:
        if required:
            return None, Rejected(Reason.MISSING_LABEL, f"{column} is empty")
        return None, None
    try:
        age = float(text)
    except ValueError:
        return None, Rejected(Reason.INVALID_LABEL, f"{column} {text!r} is not a number")
    if not math.isfinite(age):
        return None, Rejected(Reason.INVALID_LABEL, f"{column} {text!r} is not a finite number")
    if not 0.0 <= age <= MAX_AGE_MONTHS:
        return None, Rejected(
            Reason.LABEL_OUT_OF_RANGE, f"{column} {age:g} outside 0-{MAX_AGE_MONTHS:g} months"
        )
    return age, None


def _walk_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            files.append(Path(dirpath) / name)
    return files


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _id_from_relpath(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem.replace("/", "__")).lstrip("._-") or "_"


def read_labels_csv(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a labels CSV as strings. Returns (frame with lower-case columns, layout)."""
    if not path.is_file():
        raise CohortError(f"{path}: labels CSV not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CohortError(f"{path}: cannot parse CSV: {' '.join(str(exc).split())}") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    cols = set(df.columns)
    if len(cols) != len(df.columns):
        raise CohortError(f"{path}: duplicate column names {list(df.columns)}")
    if {"id", "boneage", "male"} <= cols:
        return df, "rsna"
    if {"id", "sex"} <= cols:
        return df, "generic"
    raise CohortError(
        f"{path}: missing required columns. Expected RSNA layout 'id,boneage,male' or "
        f"generic 'id,sex[,path][,boneage_months][,chronological_age_months]'; "
        f"found {list(df.columns)}"
    )


def discover(
    root: Path,
    labels: Path | None,
    *,
    require_labels: bool,
    allow_unknown_sex: bool,
) -> Cohort:
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"{root}: cohort directory not found")
    root = root.resolve()
    labels_resolved = Path(labels).resolve() if labels is not None else None
    files = [  # the labels CSV itself may sit inside the cohort dir; resolve only same-named files
        p
        for p in _walk_files(root)
        if labels_resolved is None
        or p.name != labels_resolved.name
        or p.resolve() != labels_resolved
    ]
    if labels is None:
        if require_labels:
            raise CohortError(
                f"{root}: no labels CSV given, but labels are required "
                "(ingest.require_labels=true); pass --labels or set require_labels false"
            )
        return _discover_folder(root, files)
    df, layout = read_labels_csv(Path(labels))
    if layout == "generic" and require_labels and "boneage_months" not in df.columns:
        raise CohortError(
            f"{labels}: labels are required (ingest.require_labels=true) but the CSV has no "
            "'boneage_months' column"
        )
    return _discover_csv(root, Path(labels), df, layout, files, require_labels, allow_unknown_sex)


def _discover_folder(root: Path, files: list[Path]) -> Cohort:
    cohort = Cohort(root=root, layout="folder", labels=None)
    seen: dict[str, str] = {}
    for path in files:
        rel = _rel(path, root)
        if not _looks_like_image(path):
            cohort.rejected.append(
                Rejected(
                    Reason.NOT_AN_IMAGE, "not an image file (by suffix and content)", source=rel
                )
            )
            continue
        id_ = _id_from_relpath(rel)
        if id_ in seen:
            cohort.rejected.append(
                Rejected(Reason.DUPLICATE_ID, f"id {id_!r} also derived from {seen[id_]}", id_, rel)
            )
            continue
        seen[id_] = rel
        cohort.candidates.append(Candidate(id_, path, rel, None, "missing", None, None, None))
    return cohort


def _index_by_stem(files: list[Path], root: Path) -> dict[str, list[Path]]:
    """Top-level image files of DIR by stem, best suffix first."""
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        if p.parent == root and p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, []).append(p)
    for paths in by_stem.values():
        paths.sort(key=lambda p: SUFFIX_PRIORITY.index(p.suffix.lower()))
    return by_stem


def _discover_csv(
    root: Path,
    labels: Path,
    df: pd.DataFrame,
    layout: str,
    files: list[Path],
    require_labels: bool,
    allow_unknown_sex: bool,
) -> Cohort:
    cohort = Cohort(root=root, layout=layout, labels=labels)
    by_stem = _index_by_stem(files, root)
    claimed: set[Path] = set()
    first_row: dict[str, int] = {}
    age_col = "boneage" if layout == "rsna" else "boneage_months"
    sex_col = "male" if layout == "rsna" else "sex"
    has_path = layout == "generic" and "path" in df.columns
    has_age = age_col in df.columns
    has_chrono = "chronological_age_months" in df.columns

    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2  # header is line 1
        id_ = rec["id"].strip()

        def reject(reason: Reason, detail: str, source: str | None = None) -> None:
            cohort.rejected.append(Rejected(reason, detail, id_ or None, source, line))  # noqa: B023

        if not ID_PATTERN.match(id_):
            reject(
                Reason.INVALID_ID,
                f"id {id_!r} is empty or has characters other than letters, digits, '.', '_', '-'",
            )
            continue
        # Locate the image first, so the rejected row can name the file.
        path: Path | None = None
        source: str | None = None
        if has_path and rec["path"].strip():
            raw = rec["path"].strip()
            rel = os.path.normpath(raw)
            if os.path.isabs(raw) or rel == ".." or rel.startswith(".." + os.sep):
                reject(Reason.PATH_ESCAPES_COHORT, f"path {raw!r} is outside the cohort dir")
                continue
            path = root / rel
            source = Path(rel).as_posix()
        else:
            hits = by_stem.get(id_, [])
            if hits:
                path = hits[0]
                source = _rel(path, root)
        if id_ in first_row:
            reject(Reason.DUPLICATE_ID, f"id {id_!r} already at row {first_row[id_]}", source)
            continue
        first_row[id_] = line
        if path is None or not path.is_file():
            want = source or f"{id_}.{{png,jpg,jpeg,dcm}}"
            reject(Reason.IMAGE_NOT_FOUND, f"no image file {want} in the cohort dir", source)
            continue
        claimed.add(path)
        if not has_path or not rec["path"].strip():
            for extra in by_stem.get(id_, [])[1:]:
                claimed.add(extra)
                cohort.rejected.append(
                    Rejected(
                        Reason.DUPLICATE_IMAGE,
                        f"another image for id {id_!r}; using {source}",
                        id_,
                        _rel(extra, root),
                        line,
                    )
                )
        sex = parse_sex(rec[sex_col])
        if sex is None and rec[sex_col].strip() != "":
            reject(
                Reason.UNKNOWN_SEX,
                f"unknown sex code {rec[sex_col].strip()!r} in column {sex_col!r}",
                source,
            )
            continue
        if sex is None and not allow_unknown_sex and path.suffix.lower() not in {".dcm", ".dicom"}:
            reject(Reason.UNKNOWN_SEX, f"column {sex_col!r} is empty", source)
            continue
        boneage = None
        if has_age:
            boneage, bad = parse_age(rec[age_col], age_col, require_labels)
            if bad:
                reject(bad.reason, bad.detail, source)
                continue
        elif require_labels:
            reject(Reason.MISSING_LABEL, f"no {age_col} column", source)
            continue
        chrono = None
        if has_chrono:
            chrono, bad = parse_age(
                rec["chronological_age_months"], "chronological_age_months", False
            )
            if bad:
                reject(bad.reason, bad.detail, source)
                continue
        cohort.candidates.append(
            Candidate(id_, path, source, sex, "csv" if sex else "missing", boneage, chrono, line)
        )

    for path in files:
        if path in claimed:
            continue
        rel = _rel(path, root)
        if _looks_like_image(path):
            cohort.rejected.append(
                Rejected(Reason.NO_LABEL_ROW, f"image has no row in {labels.name}", source=rel)
            )
        else:
            cohort.rejected.append(
                Rejected(
                    Reason.NOT_AN_IMAGE, "not an image file (by suffix and content)", source=rel
                )
            )
    return cohort
