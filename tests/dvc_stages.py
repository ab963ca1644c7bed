"""The stages of dvc.yaml and the code each one runs, for tests/test_dvc_deps.py.

A stage's code is the closure, over the import graph of `boneage` (tests/imports.py), of
the `boneage` CLI command its `cmd` runs: the modules the command function imports
(lazily, inside it, or through the cli helpers it calls), the cli module's own imports,
and the cli itself. A module maps to its file (`boneage/x.py`); modules of a subpackage
map to the package folder (`boneage/demo`)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from tests.imports import REPO, closure, graph

CLI = REPO / "boneage" / "cli.py"
# folders of data, not code, that stages may declare (the packaged QC network)
DATA_DIRS = {"boneage/qc_model"}


def stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    """{stage name: stage dict}, foreach stages expanded (name@key, ${key} substituted)."""
    doc = yaml.safe_load(dvc_yaml.read_text())
    out: dict[str, dict] = {}
    for name, st in doc["stages"].items():
        if "foreach" in st:
            for key, item in st["foreach"].items():
                text = yaml.safe_dump(st["do"]).replace("${key}", key)
                for k, v in (item or {}).items():
                    text = text.replace("${item." + k + "}", str(v))
                out[f"{name}@{key}"] = yaml.safe_load(text)
        else:
            out[name] = st
    return out


def command_of(stage: dict) -> str:
    """The `boneage` subcommand a stage runs (`boneage attend --stage hand` → attend)."""
    tokens = " ".join(str(stage["cmd"]).split()).split()
    if tokens[0] != "boneage":
        raise ValueError(f"stage cmd does not run boneage: {stage['cmd']}")
    return tokens[1]


def _cli_functions() -> tuple[dict[str, ast.FunctionDef], dict[str, str], set[str]]:
    """(every top-level function of cli.py, {command name: function name}, the package
    modules cli.py imports at module level)."""
    tree = ast.parse(CLI.read_text())
    funcs: dict[str, ast.FunctionDef] = {}
    commands: dict[str, str] = {}
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("boneage"):
            top.add(node.module)
        if not isinstance(node, ast.FunctionDef):
            continue
        funcs[node.name] = node
        for dec in node.decorator_list:
            call = dec if isinstance(dec, ast.Call) else None
            target = call.func if call else dec
            if isinstance(target, ast.Attribute) and target.attr == "command":
                name = node.name.replace("_", "-")
                if call and call.args and isinstance(call.args[0], ast.Constant):
                    name = call.args[0].value
                commands[name] = node.name
    return funcs, commands, top


def command_modules(command: str) -> set[str]:
    """The package modules a CLI command can run (closure over the import graph)."""
    funcs, commands, top = _cli_functions()
    if command not in commands:
        raise KeyError(f"boneage {command}: no such command in {CLI}")
    start = set(top)
    todo, seen = [commands[command]], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for node in ast.walk(funcs[f]):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("boneage"):
                    start.add(node.module)
                    start.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Name) and node.id in funcs and node.id not in seen:
                todo.append(node.id)
    g = graph()
    g.pop("boneage.cli")  # its edges are every command's imports: only this command's count
    return closure(sorted(m for m in start if m in g), g) | {"boneage.cli"}


def module_path(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (REPO / Path(*parts) / "__init__.py").is_file():
        return "/".join(parts[:2])  # a subpackage: its folder
    return "/".join(parts) + ".py"


def expected_code_deps(stage: dict) -> set[str]:
    return {module_path(m) for m in command_modules(command_of(stage))}


def declared_code_deps(stage: dict) -> set[str]:
    deps = {str(d).rstrip("/") for d in stage.get("deps", [])}
    return {d for d in deps if d.startswith("boneage/") and d not in DATA_DIRS}


def differences(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict[str, list[str]]]:
    """{stage: {'missing': [...], 'extra': [...]}} for every stage whose declared boneage/
    deps differ from the code its command runs."""
    out = {}
    for name, st in stages(dvc_yaml).items():
        want, have = expected_code_deps(st), declared_code_deps(st)
        if want != have:
            out[name] = {"missing": sorted(want - have), "extra": sorted(have - want)}
    return out


def declared_params(stage: dict) -> set[str]:
    """The params keys a stage declares (dotted; a section covers every key under it)."""
    out: set[str] = set()
    for entry in stage.get("params", []) or []:
        if isinstance(entry, dict):  # {params file: [keys]}
            for keys in entry.values():
                out.update(keys or [])
        else:
            out.add(str(entry))
    return out


def _covers(key: str, read: str) -> bool:
    return read == key or read.startswith(key + ".")


def stage_of_trace(argv: list[str], all_stages: dict[str, dict]) -> str | None:
    """The stage whose cmd ran with these arguments (`boneage ARGV`), if any."""
    for name, st in all_stages.items():
        tokens = " ".join(str(st["cmd"]).split()).split()[1:]
        if "$" in " ".join(tokens):  # ${...}: compare the literal tokens only
            fixed = [t for t in tokens if "$" not in t]
            if argv[:1] == tokens[:1] and all(t in argv for t in fixed):
                return name
        elif argv == tokens:
            return name
    return None


def params_differences(trace: Path, dvc_yaml: Path = REPO / "dvc.yaml"
                       ) -> dict[str, dict[str, list[str]]]:  # fmt: skip
    """{stage: {'undeclared': reads no declared key covers, 'unread': declared keys
    nothing was read under}} from a BONEAGE_TRACE_PARAMS file of a `dvc repro`."""
    all_stages = stages(dvc_yaml)
    reads: dict[str, set[str]] = {}
    for line in Path(trace).read_text().splitlines():
        rec = json.loads(line)
        name = stage_of_trace(rec["argv"], all_stages)
        if name is not None:
            reads.setdefault(name, set()).update(rec["reads"])
    out = {}
    for name, got in reads.items():
        declared = declared_params(all_stages[name])
        # a key the stage interpolates (${key} in its cmd or deps) is used by DVC itself
        text = yaml.safe_dump(all_stages[name])
        got = got | {k for k in declared if "${" + k + "}" in text}
        undeclared = sorted(r for r in got if not any(_covers(k, r) for k in declared))
        unread = sorted(k for k in declared if not any(_covers(k, r) for r in got))
        if undeclared or unread:
            out[name] = {"undeclared": undeclared, "unread": unread}
    return out
