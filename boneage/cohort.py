"""Finding the rows and files of a cohort.

Accepted layouts:

1. RSNA/Kaggle: labels CSV ``id,boneage,male``; images ``DIR/{id}.png|.jpg|.jpeg|.dcm``.
2. Generic CSV: ``id,sex[,path][,boneage_months][,chronological_age_months]``; sex as
   M/F, male/female, 1/0 or true/false; ``path`` relative to DIR (must stay inside DIR),
   else ``DIR/{id}.<image suffix>``.
3. No CSV: every image file under DIR (DICOM with or without suffix, PNG, JPEG, TIFF, BMP,
   WebP, GIF). Sex and chronological age come from DICOM headers; the id is the path
   relative to DIR without its image suffix, '/' written as '__', Unicode letters and
   digits kept and any other character escaped reversibly as %XX (UTF-8 bytes) — two
   files never share an id (`id_from_relpath` / `relpath_from_id`).

Files are confined to DIR after resolving symbolic links: a link that leads outside DIR
is rejected (`path_escapes_cohort`), a broken link or a link loop is `unreadable_image`.

Discovery does no image decoding: it pairs rows with files and rejects what it can judge
from the CSV and the file tree alone. Every CSV row and every file under DIR ends up as a
`Candidate` or a `Rejected` row with its reason.
"""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pandas as pd

from boneage.imageio import IMAGE_SUFFIXES, SUFFIX_PRIORITY, sniff_image
from boneage.rejects import Reason

MAX_AGE_MONTHS = 240.0
MAX_ID_LENGTH = 128
_ID_PUNCT = "._-"
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


def id_problem(id_: str) -> str | None:
    """Why a CSV id cannot be used, or None: 1-128 characters, letters (any script),
    digits, '.', '_' and '-', starting with a letter or digit."""
    if not id_:
        return "id is empty"
    if len(id_) > MAX_ID_LENGTH:
        return f"id {id_[:40]!r}... is longer than {MAX_ID_LENGTH} characters"
    bad = sorted({c for c in id_ if not (c.isalnum() or c in _ID_PUNCT)})
    if bad:
        return (f"id {id_!r} has characters other than letters, digits, '.', '_', '-': "
                f"{' '.join(repr(c) for c in bad)}")  # fmt: skip
    if not id_[0].isalnum():
        return f"id {id_!r} must start with a letter or digit, not {id_[0]!r}"
    return None


def _escape_segment(seg: str) -> str:
    """Letters/digits (any script), '.', '-' and single inner '_' kept; everything else —
    and a leading '.'/'-', and '_' at an edge or next to another '_' (so that '__' can
    only mean '/') — as %XX of its UTF-8 bytes."""
    out = []
    n = len(seg)
    for i, ch in enumerate(seg):
        keep = ch.isalnum() or ch in _ID_PUNCT
        if ch == "_" and (i == 0 or i == n - 1 or seg[i - 1] == "_" or seg[i + 1] == "_"):
            keep = False
        if i == 0 and ch in ".-":
            keep = False
        out.append(ch if keep else "".join(f"%{b:02X}" for b in ch.encode("utf-8")))
    return "".join(out)


def id_from_relpath(rel: str, keep_suffix: bool = False) -> str:
    """The id of a file found without a CSV: its posix path relative to the cohort dir,
    without its image suffix (unless `keep_suffix`: two files that differ only by it),
    escaped losslessly (`relpath_from_id` inverts it)."""
    head, _, name = rel.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    if not keep_suffix and dot and stem and f".{suffix.lower()}" in IMAGE_SUFFIXES:
        name = stem
    rel = f"{head}/{name}" if head else name
    return "__".join(_escape_segment(seg) for seg in rel.split("/"))


def relpath_from_id(id_: str) -> str:
    """The relative path (without the suffix the id left out) an id was made from."""
    return "/".join(unquote(seg, errors="strict") for seg in id_.split("__"))


def parse_age(value: str, column: str, required: bool) -> tuple[float | None, Rejected | None]:
    """Parse an age in months. Returns (age, None) or (None, rejection)."""
    text = value.strip()
    missing = {"": "is empty", "na": f"is {text!r} (missing)", "n/a": f"is {text!r} (missing)",
               "null": f"is {text!r} (missing)", "none": f"is {text!r} (missing)",
               "nan": f"is {text!r} (not a number: missing)"}  # fmt: skip
    if text.lower() in missing:
        if required:
            return None, Rejected(Reason.MISSING_LABEL, f"{column} {missing[text.lower()]}")
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


def _walk_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(files, symbolic links to directories) under root; links to directories are not
    followed (their targets inside root are walked anyway)."""
    files, dir_links = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        dir_links += [Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        for name in sorted(filenames):
            files.append(Path(dirpath) / name)
    return files, dir_links


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return sniff_image(head)


# set by discover(allow_external_links=...) for the duration of one discovery
_EXTERNAL_LINKS_OK: ContextVar[bool] = ContextVar("external_links_ok", default=False)


def _link_problem(path: Path, root: Path) -> tuple[Reason, str] | None:
    """A file (or link) that resolves outside the cohort dir (unless the caller allowed
    links to outside), or a broken link / loop."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        if path.is_symlink():
            return Reason.UNREADABLE_IMAGE, "broken symbolic link or symbolic link loop"
        return None
    if not real.is_relative_to(root) and not _EXTERNAL_LINKS_OK.get():
        return (
            Reason.PATH_ESCAPES_COHORT,
            "resolves (through a symbolic link) outside the cohort dir",
        )
    return None


def _is_dicom(path: Path) -> bool:
    """A DICOM file by suffix or by content (its sex may come from the header)."""
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _not_found_detail(id_: str, source: str | None) -> str:
    if source:
        return f"no image file {source} in the cohort dir"
    suffixes = ",".join(s.lstrip(".") for s in SUFFIX_PRIORITY)
    return f"no image file {id_}.{{{suffixes}}} (or an image file named {id_}) in the cohort dir"


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
    allow_external_links: bool = False,
) -> Cohort:
    """The cohort's candidates and rejected rows. Files are confined to `root` after
    resolving symbolic links; `allow_external_links` accepts links that resolve outside it
    (a cohort assembled as links into a trusted image collection)."""
    token = _EXTERNAL_LINKS_OK.set(allow_external_links)
    try:
        return _discover(root, labels, require_labels=require_labels,
                         allow_unknown_sex=allow_unknown_sex)  # fmt: skip
    finally:
        _EXTERNAL_LINKS_OK.reset(token)


def _discover(
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
    walked, dir_links = _walk_files(root)
    files = [  # the labels CSV itself may sit inside the cohort dir; resolve only same-named files
        p
        for p in walked
        if labels_resolved is None
        or p.name != labels_resolved.name
        or p.resolve() != labels_resolved
    ]
    outside = [  # links to directories outside DIR: reported, never followed
        Rejected(Reason.PATH_ESCAPES_COHORT, "a symbolic link to a directory outside the "
                 "cohort dir (not followed)", source=_rel(d, root))
        for d in dir_links if _link_problem(d, root) is not None
    ]  # fmt: skip
    if labels is None:
        if require_labels:
            raise CohortError(
                f"{root}: no labels CSV given, but labels are required "
                "(ingest.require_labels=true); pass --labels or set require_labels false"
            )
        cohort = _discover_folder(root, files)
    else:
        df, layout = read_labels_csv(Path(labels))
        if layout == "generic" and require_labels and "boneage_months" not in df.columns:
            raise CohortError(
                f"{labels}: labels are required (ingest.require_labels=true) but the CSV has "
                "no 'boneage_months' column"
            )
        cohort = _discover_csv(root, Path(labels), df, layout, files, require_labels,
                               allow_unknown_sex)  # fmt: skip
    cohort.rejected += outside
    return cohort


def _discover_folder(root: Path, files: list[Path]) -> Cohort:
    cohort = Cohort(root=root, layout="folder", labels=None)
    images = []
    for path in files:
        rel = _rel(path, root)
        problem = _link_problem(path, root)
        if problem is not None:
            cohort.rejected.append(Rejected(problem[0], problem[1], source=rel))
        elif not _looks_like_image(path):
            cohort.rejected.append(
                Rejected(
                    Reason.NOT_AN_IMAGE, "not an image file (by suffix and content)", source=rel
                )
            )
        else:
            images.append((path, rel))
    stems: dict[str, int] = {}
    for _, rel in images:
        stems[id_from_relpath(rel)] = stems.get(id_from_relpath(rel), 0) + 1
    seen: dict[str, str] = {}
    for path, rel in images:
        id_ = id_from_relpath(rel)
        if stems[id_] > 1:  # a.png and a.jpg: both kept, under ids that name the suffix
            id_ = id_from_relpath(rel, keep_suffix=True)
        if id_ in seen:
            cohort.rejected.append(
                Rejected(Reason.DUPLICATE_ID, f"id {id_!r} also derived from {seen[id_]}", id_, rel)
            )
            continue
        seen[id_] = rel
        cohort.candidates.append(Candidate(id_, path, rel, None, "missing", None, None, None))
    return cohort


def _index_by_stem(files: list[Path], root: Path) -> dict[str, list[Path]]:
    """Top-level image files of DIR by stem (image suffix left out; a file that is an
    image by content but has no image suffix, e.g. a DICOM file named by its UID, by its
    whole name), best suffix first."""
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        if p.parent != root:
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, []).append(p)
        elif _link_problem(p, root) is not None or _looks_like_image(p):
            by_stem.setdefault(p.name, []).append(p)

    def rank(p: Path) -> int:
        sfx = p.suffix.lower()
        return SUFFIX_PRIORITY.index(sfx) if sfx in SUFFIX_PRIORITY else len(SUFFIX_PRIORITY)

    for paths in by_stem.values():
        paths.sort(key=rank)
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

        bad_id = id_problem(id_)
        if bad_id:
            reject(Reason.INVALID_ID, bad_id)
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
        problem = _link_problem(path, root) if path is not None else None
        if problem is not None:  # the row and its file: one rejected row, one reason
            claimed.add(path)
            reject(problem[0], f"{source}: {problem[1]}", source)
            continue
        if path is None or not path.is_file():
            reject(Reason.IMAGE_NOT_FOUND, _not_found_detail(id_, source), source)
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
        if sex is None and not allow_unknown_sex and not _is_dicom(path):
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
        problem = _link_problem(path, root)
        if problem is not None:
            cohort.rejected.append(Rejected(problem[0], problem[1], source=rel))
        elif _looks_like_image(path):
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
