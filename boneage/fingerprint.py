"""Content fingerprints of files and directory trees (for cache keys: the Prefect retrain
flow keys every step on the fingerprints of its inputs, never on the data itself)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_hash(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(path: Path | None, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 over the sorted relative paths and contents of every file under `path`
    (or of the file itself); 'missing' when it does not exist, 'none' for None.
    Hidden files and __pycache__ are ignored; `suffixes` restricts to those endings."""
    if path is None:
        return "none"
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if suffixes and not f.name.endswith(suffixes):
            continue
        h.update(rel.as_posix().encode() + b"\0")
        file_hash(f, h)
        h.update(b"\0")
    return h.hexdigest()


def code_version() -> str:
    """Fingerprint of the boneage package's Python source: any library change counts."""
    return tree_hash(Path(__file__).resolve().parent, (".py", ".csv"))
