"""Every DVC stage declares exactly the `boneage/` code its command runs (derived from
the imports: tests/dvc_stages.py), so DVC re-runs a stage when, and only when, code it
runs changed."""

import yaml

from tests.dvc_stages import (
    DATA_DIRS,
    command_modules,
    declared_code_deps,
    declared_params,
    differences,
    expected_code_deps,
    stages,
)
from tests.imports import REPO


def test_every_stage_declares_exactly_the_code_it_runs():
    assert differences() == {}


def _rewrite(tmp_path, edit):
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    edit(doc["stages"])
    out = tmp_path / "dvc.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_a_removed_dep_is_caught(tmp_path):
    def drop(st):
        st["train_aggregator"]["deps"].remove("boneage/ldl.py")

    assert differences(_rewrite(tmp_path, drop)) == {
        "train_aggregator": {"missing": ["boneage/ldl.py"], "extra": []}
    }


def test_an_extra_dep_is_caught(tmp_path):
    def add(st):
        st["attend"]["do"]["deps"].append("boneage/registry.py")

    diff = differences(_rewrite(tmp_path, add))
    assert set(diff) == {"attend@hand", "attend@r1", "attend@r2"}
    assert all(d == {"missing": [], "extra": ["boneage/registry.py"]} for d in diff.values())


def test_closure_follows_lazy_imports_and_cli_helpers():
    # `boneage attend` imports boneage.attend inside the command; attend → training →
    # compaction (weights) and checkpoint; the cli's module-level config import counts
    mods = command_modules("attend")
    assert {"boneage.attend", "boneage.cam_boxes", "boneage.training", "boneage.compaction",
            "boneage.config", "boneage.cli"} <= mods  # fmt: skip
    assert "boneage.registry" not in mods and "boneage.score" not in mods
    # check-regions reaches roi_eval through the cli helper _check_annotations
    assert "boneage.roi_eval" in command_modules("check-regions")


def test_data_dirs_are_declared_where_read():
    st = stages()
    for name in ("ingest", "bundle"):  # the packaged QC network: ingest runs it, bundle copies it
        assert "boneage/qc_model" in st[name]["deps"]
    assert all(not (declared_code_deps(s) & DATA_DIRS) for s in st.values())
    assert expected_code_deps(st["demo"]) == {"boneage/cli.py", "boneage/config.py",
                                              "boneage/distributed.py", "boneage/demo"}  # fmt: skip


def test_bundle_stage_declares_the_bundle_sections():
    from boneage.bundle import BUNDLE_PARAM_SECTIONS

    assert declared_params(stages()["bundle"]) == set(BUNDLE_PARAM_SECTIONS)
