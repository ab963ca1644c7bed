"""The wheel set the GPU job installs (never committed): what boneage's pipeline imports
that the GPU machine lacks — pydantic and every dependency it declares — as binary wheels
for the machine's CPython 3.12 on manylinux x86_64, at the versions installed here (the
ones the tests ran with).

    python profiles/gpu/wheels.py [--out .gpu/wheels] [--python-version 3.12]
        [--check-python /path/to/python3.12]

`pip download --only-binary=:all: --no-deps` per pinned distribution (facts.WHEELS),
then a check that the set is complete: `pip install --no-index --target` of exactly these
files (what the job does; pip refuses when a declared dependency is missing) with the
interpreter given by --check-python (by default this one when its version matches, else
a python3.12 on PATH or under ~/.pyenv; without one the check is skipped, saying so).
The rehearsal uses the same script with --python-version of its own interpreter.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import PYTHON_VERSION, WHEELS, WHEELS_DIR, MiB  # noqa: E402


def pins() -> list[str]:
    return [f"{name}=={version(name)}" for name in WHEELS]


def download(out: Path, python_version: str = PYTHON_VERSION) -> list[Path]:
    """Fill `out` with the wheel set for CPython `python_version` (replacing what was there)."""
    tag = python_version.replace(".", "")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--no-deps", "--dest", str(out),
           "--python-version", python_version, "--implementation", "cp", "--abi", f"cp{tag}",
           "--abi", "abi3", "--abi", "none", "--platform", "manylinux2014_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
           "--platform", "any", *pins()]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = sorted(out.glob("*.whl"))
    got = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    missing = [n for n in WHEELS if n.lower() not in got]
    if missing:
        raise SystemExit(f"pip download gave no wheel for {missing}")
    return wheels


def find_python(python_version: str) -> str | None:
    """This interpreter when its version matches, else a working pythonX.Y on PATH or under
    ~/.pyenv (pyenv shims that do not run are passed over)."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
        return sys.executable
    pattern = os.path.expanduser(f"~/.pyenv/versions/{python_version}.*/bin/python3")
    candidates = sorted(glob.glob(pattern))[::-1] + [shutil.which(f"python{python_version}")]
    for c in filter(None, candidates):
        if subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0:
            return c
    return None


def check(wheels: list[Path], python: str) -> None:
    """Install exactly these wheels the job's way into a scratch target, import pydantic."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-cache-dir",
                        "--disable-pip-version-check", "--target", tmp, *map(str, wheels)],
                       check=True)  # fmt: skip
        code = ("import pydantic, pydantic_core; print("
                "'pydantic', pydantic.VERSION, 'from', pydantic.__file__)")  # fmt: skip
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONNOUSERSITE": "1"}
        subprocess.run([python, "-s", "-c", code], check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WHEELS_DIR)
    ap.add_argument("--python-version", default=PYTHON_VERSION)
    ap.add_argument("--check-python", default=None, help="interpreter for the install check")
    a = ap.parse_args()
    wheels = download(a.out, a.python_version)
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"  {w.stat().st_size / MiB:6.2f} MiB  {w.name}")
    print(f"{len(wheels)} wheels, {total / MiB:.2f} MiB -> {a.out}")
    python = a.check_python or find_python(a.python_version)
    if python is None:
        print(f"install check SKIPPED: no Python {a.python_version} here (--check-python)")
    else:
        check(wheels, python)
        print(f"install check OK with {python}")


if __name__ == "__main__":
    main()
