"""Preflight: exactly what a device call would transfer, and whether it fits.

    python profiles/gpu/preflight.py [--carry .gpu/pack .gpu/wheels .gpu/weights]
        [--limit-mib 60] [--recorded] [--record]

A device call copies the working tree's git-tracked files, its untracked files that git
does not ignore, shared/ when the checkout has one, and every carried (ignored) path;
64 MiB in all. This sums those bytes, prints the parts and the largest items, and exits
1 above --limit-mib (60: the rest is margin).

`--record` writes what the carried paths measure now to profiles/gpu/budget.json (commit
it after building the full pack, wheels and weights). `--recorded` counts a carried path
that is not built here at its recorded size, so the full configuration can be checked
where the pack is not built (the fast test does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import CARRY, REPO, TRAVEL_LIMIT, MiB  # noqa: E402

BUDGET = HERE / "budget.json"


@dataclass
class Part:
    name: str
    files: dict[str, int] = field(default_factory=dict)  # path (repo-relative) -> bytes
    recorded: int | None = None  # size from budget.json (not built here)

    @property
    def bytes(self) -> int:
        return self.recorded if self.recorded is not None else sum(self.files.values())


def _git_files(repo: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", *args],
                         check=True, capture_output=True).stdout  # fmt: skip
    return [p for p in out.decode().split("\0") if p]


def _sizes(repo: Path, rels: list[str]) -> dict[str, int]:
    out = {}
    for rel in rels:
        p = repo / rel
        if p.is_file() and not p.is_symlink():
            out[rel] = p.stat().st_size
    return out


def _tree(repo: Path, rel: str) -> dict[str, int]:
    root = repo / rel
    if root.is_file():
        return {rel: root.stat().st_size}
    return {str(f.relative_to(repo)): f.stat().st_size
            for f in sorted(root.rglob("*")) if f.is_file()}  # fmt: skip


def measure(repo: Path = REPO, carry: list[str] = CARRY, recorded: bool = False,
            only_recorded: bool = False) -> list[Part]:  # fmt: skip
    """The parts of a transfer; `recorded`: a carried path not built here counts at its
    size in budget.json; `only_recorded`: every carried path does (what the full build
    measured, whatever is built here now)."""
    tracked = _git_files(repo, "--cached")
    others = _git_files(repo, "--others", "--exclude-standard")
    parts = [Part("tracked files", _sizes(repo, tracked)),
             Part("untracked, not ignored", _sizes(repo, others))]  # fmt: skip
    if (repo / "shared").is_dir():
        parts.append(Part("shared/", _tree(repo, "shared")))
    budget = json.loads(BUDGET.read_text()) if (recorded or only_recorded) else {}
    for rel in carry:
        rel = rel.rstrip("/")
        if (repo / rel).exists() and not only_recorded:
            parts.append(Part(f"carry {rel}", _tree(repo, rel)))
        elif rel in budget.get("carry", {}):
            parts.append(Part(f"carry {rel} (recorded)", recorded=budget["carry"][rel]["bytes"]))
        else:
            raise SystemExit(f"carry {rel}: not built here (make gpu-prepare) and not recorded "
                             f"in {BUDGET.name}")  # fmt: skip
    return parts


def report(parts: list[Part], limit: int, top: int = 10) -> bool:
    total = sum(p.bytes for p in parts)
    print("what a device call transfers:")
    for p in parts:
        n = "recorded size" if p.recorded is not None else f"{len(p.files)} files"
        print(f"  {p.bytes / MiB:8.2f} MiB  {p.name} ({n})")
    print(f"  {total / MiB:8.2f} MiB  TOTAL (limit {limit / MiB:.0f} MiB; the device tool's: 64)")
    every = {k: v for p in parts for k, v in p.files.items()}
    groups: dict[str, int] = {}
    for k, v in every.items():
        parts_ = Path(k).parts
        g = "/".join(parts_[:2]) if len(parts_) > 2 else k
        groups[g] = groups.get(g, 0) + v
    for p in parts:
        if p.recorded is not None:
            groups[p.name] = p.bytes
    print("largest items:")
    for g, v in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {v / MiB:8.2f} MiB  {g}")
    ok = total <= limit
    print("preflight " + ("OK" if ok else f"FAILED: {total / MiB:.2f} MiB > {limit / MiB:.0f} MiB"))
    return ok


def pack_images(repo: Path, carry: list[str]) -> int | None:
    """The number of images in a carried pack (its pack.json), if one is carried."""
    for rel in carry:
        info = repo / rel / "pack.json"
        if info.is_file():
            return int(json.loads(info.read_text())["n_images"])
    return None


def record(parts: list[Part], repo: Path, carry: list[str], path: Path = BUDGET) -> None:
    built = [p for p in parts if p.name.startswith("carry ") and p.recorded is None]
    carry_sizes = {p.name.removeprefix("carry "): {"bytes": p.bytes, "files": len(p.files)}
                   for p in built}  # fmt: skip
    tracked = next(p for p in parts if p.name == "tracked files")
    data = {"note": "sizes measured by profiles/gpu/preflight.py --record",
            "carry": carry_sizes, "pack_images": pack_images(repo, carry),
            "tracked_bytes_when_recorded": tracked.bytes}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"recorded -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--carry", nargs="*", default=CARRY)
    ap.add_argument("--limit-mib", type=float, default=TRAVEL_LIMIT / MiB)
    ap.add_argument("--recorded", action="store_true",
                    help="carried paths not built here count at their recorded size")  # fmt: skip
    ap.add_argument("--record", action="store_true", help=f"write {BUDGET.name}")
    ap.add_argument("--repo", type=Path, default=REPO)
    a = ap.parse_args()
    parts = measure(a.repo, a.carry, a.recorded)
    n = pack_images(a.repo, a.carry)
    if n is not None:
        print(f"the pack holds {n} images" + ("" if n >= 12_599 else " (NOT the full set)"))
    ok = report(parts, int(a.limit_mib * MiB))
    if a.record:
        record(parts, a.repo, a.carry)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
