"""Install a GPU run's result: one command after the device call.

    python profiles/gpu/install.py FILES_DIR [--dry-run]      (make gpu-install FILES=...)

FILES_DIR: the folder the device call's files came back to (its `files_at`): summary.json,
job.log, reports.tar.gz, export.tar.gz.NN (profiles/gpu/result.py).

1. The export is reassembled from its parts and unpacked (a scratch folder).
2. models/rsna299 is replaced by it ONLY if its validation MAE (the aggregator's,
   card.json) is lower than the committed model's; otherwise it stays, and says why.
3. The GPU figures are written into docs/gpu.md (between its `gpu-figures` markers) and
   the one-line headline into README.md (between its `gpu-headline` markers), replaced or
   not: training images/s real vs synthetic and their ratio (goal >= 0.9), per-stage
   times, the ablation, the exported model's test MAE with its 95 % interval (goal <= 5.5
   months), and the decision.

A result from the CPU rehearsal (device "cpu") is refused unless --allow-cpu (tests).
Review `git diff` and commit.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import REPO  # noqa: E402

MAE_GOAL = 5.5
RATIO_GOAL = 0.9
FIGURES = ("<!-- gpu-figures:start -->", "<!-- gpu-figures:end -->")
HEADLINE = ("<!-- gpu-headline:start -->", "<!-- gpu-headline:end -->")


def assemble_export(files: Path, dest: Path) -> Path | None:
    """Concatenate files/export.tar.gz.NN in order, unpack into dest; dest/rsna299, or
    None when the result has no export."""
    parts = sorted(files.glob("export.tar.gz.[0-9][0-9]"))
    if not parts:
        return None
    data = b"".join(p.read_bytes() for p in parts)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    out = dest / "rsna299"
    if not (out / "card.json").is_file():
        raise SystemExit(f"{files}: the export has no rsna299/card.json")
    return out


def val_mae(model_dir: Path) -> float | None:
    card = model_dir / "card.json"
    if not card.is_file():
        return None
    agg = json.loads(card.read_text()).get("components", {}).get("aggregator", {})
    v = agg.get("metrics", {}).get("val_mae")
    return float(v) if v is not None else None


def _f(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def figures_markdown(s: dict, decision: str) -> str:
    """The GPU figures section (markdown) from a result's summary.json."""
    host, tp, e = s.get("host", {}), s.get("throughput") or {}, s.get("export") or {}
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    n = (s.get("pack") or {}).get("n_images")
    lines = [f"Run installed {when}: {host.get('device', '?')}, torch {host.get('torch', '?')}, "
             f"Python {host.get('python', '?')}, {host.get('cpus', '?')} CPUs; "
             f"{n if n is not None else '?'} images; job "
             + ("complete" if s.get("complete") else "INCOMPLETE") + "."]  # fmt: skip
    phases = ", ".join(f"{p['phase']} {p['seconds']} s" for p in s.get("phases", []))
    total = sum(p["seconds"] for p in s.get("phases", []))
    lines += ["", f"Job phases: {phases} ({total} s in all; limit 600 s per command)."]
    if tp:
        ok = "meets" if tp["ratio"] >= RATIO_GOAL else "BELOW"
        lines += ["", f"Training throughput ({tp['backbone']} at {tp['size']} px, "
                  f"{tp['channels']} ch, batch {tp['batch']}): real images "
                  f"**{tp['real_images_per_second']:.0f} img/s**, synthetic "
                  f"{tp['synthetic_images_per_second']:.0f} img/s, ratio **{tp['ratio']:.2f}** "
                  f"({ok} the goal >= {RATIO_GOAL})."]  # fmt: skip
    if s.get("timings_s"):
        cpu = s.get("cpu_s") or {}
        lines += ["", "| step | wall s | CPU s |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.1f} | {_f(cpu.get(k), 1)} |" for k, v in s["timings_s"].items()]
    if s.get("ablation"):
        lines += ["", "| regions | val MAE | test MAE | RMSE | interval coverage | seconds |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in s["ablation"]:
            cov = r.get("coverage")
            lines.append(f"| {r['regions']} | {_f(r.get('val_mae'))} | {_f(r.get('test_mae'))} "
                         f"| {_f(r.get('test_rmse'))} | "
                         f"{'–' if cov is None else f'{100 * cov:.0f} %'} | "
                         f"{_f(r.get('seconds'), 0)} |")  # fmt: skip
    if e:
        ci = e.get("test_mae_ci95") or [None, None]
        goal = "meets" if e.get("test_mae") is not None and e["test_mae"] <= MAE_GOAL else "misses"
        cov = e.get("coverage")
        lines += ["", f"Exported model ({e.get('weights_precision')} weights, regions "
                  f"{'+'.join(e.get('regions') or [])}): validation MAE {_f(e.get('val_mae'))}, "
                  f"**test MAE {_f(e.get('test_mae'))} months (95 % CI {_f(ci[0])}–{_f(ci[1])})** "
                  f"on {e.get('test_n')} test images scored end to end, "
                  f"{'–' if cov is None else f'{100 * cov:.0f} %'} coverage of the "
                  f"{100 * (e.get('interval') or 0):.0f} % interval ({goal} the goal <= "
                  f"{MAE_GOAL} months)."]  # fmt: skip
    lines += ["", f"Install: {decision}"]
    return "\n".join(lines)


def headline(s: dict, decision_short: str) -> str:
    tp, e = s.get("throughput") or {}, s.get("export") or {}
    ci = e.get("test_mae_ci95") or [None, None]
    return (f"Last GPU run ({datetime.now(UTC).strftime('%Y-%m-%d')}, "
            f"{s.get('host', {}).get('device', '?')}): test MAE {_f(e.get('test_mae'))} months "
            f"(95 % CI {_f(ci[0])}–{_f(ci[1])}), training real/synthetic "
            f"{_f(tp.get('ratio'))}; {decision_short}; figures in docs/gpu.md.")  # fmt: skip


def replace_between(text: str, markers: tuple[str, str], body: str, where: Path) -> str:
    start, end = markers
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        raise SystemExit(f"{where}: no {start} … {end} markers")
    return pat.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1)


def install(files: Path, repo: Path = REPO, dry_run: bool = False,
            allow_cpu: bool = False) -> dict:  # fmt: skip
    summary = json.loads((files / "summary.json").read_text())
    device = summary.get("host", {}).get("device", "cpu")
    if device == "cpu" and not allow_cpu:
        raise SystemExit(f"{files}: a CPU result (the rehearsal?); refusing (--allow-cpu)")
    target = repo / "models" / "rsna299"
    old = val_mae(target)
    with tempfile.TemporaryDirectory() as tmp:
        new_dir = assemble_export(files, Path(tmp) / "export")
        new = val_mae(new_dir) if new_dir else None
        if new is None:
            replaced, why = False, "the run returned no export"
        elif old is not None and not new < old:
            replaced, why = False, f"validation MAE {new:.2f} does not beat the committed {old:.2f}"
        else:
            replaced = True
            why = f"validation MAE {new:.2f} beats the committed {_f(old)}"
            if not dry_run:
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(new_dir, target)
    decision = ("replaced models/rsna299" if replaced else "kept models/rsna299") + f" ({why})"
    if dry_run:
        decision += " [dry run: nothing written]"
    docs, readme = repo / "docs" / "gpu.md", repo / "README.md"
    fig = replace_between(docs.read_text(), FIGURES, figures_markdown(summary, decision), docs)
    short = "models/rsna299 replaced" if replaced else "models/rsna299 kept"
    head = replace_between(readme.read_text(), HEADLINE, headline(summary, short), readme)
    if not dry_run:
        docs.write_text(fig)
        readme.write_text(head)
    print(decision)
    return {"replaced": replaced, "old_val_mae": old, "new_val_mae": new, "decision": decision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", type=Path, help="the folder the device call's files came back to")
    ap.add_argument("--dry-run", action="store_true", help="decide and print; write nothing")
    ap.add_argument("--allow-cpu", action="store_true", help="accept a CPU (rehearsal) result")
    ap.add_argument("--repo", type=Path, default=REPO)
    a = ap.parse_args()
    install(a.files, a.repo, a.dry_run, a.allow_cpu)


if __name__ == "__main__":
    main()
