"""params.yaml loading: defaults, validation, unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from boneage.config import ConfigError, load_params
from tests.conftest import REPO_ROOT


def test_repo_params_load():
    p = load_params(REPO_ROOT / "params.yaml")
    assert p.ingest.store_long_side == 1024
    assert p.validate_.max_rejected_fraction == 0.01
    assert p.ingest.split.train + p.ingest.split.val + p.ingest.split.test == pytest.approx(1)


def test_missing_file_gives_defaults(tmp_path: Path):
    assert load_params(tmp_path / "none.yaml").ingest.workers == 0


def test_unknown_key_is_an_error(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("ingest:\n  store_long_sid: 512\n")
    with pytest.raises(ConfigError, match="ingest.store_long_sid"):
        load_params(f)


def test_bad_value_is_an_error(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("ingest:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_params(f)


def test_overrides(tmp_path: Path):
    p = load_params(tmp_path / "none.yaml", {"ingest": {"workers": 3}})
    assert p.ingest.workers == 3 and p.ingest.store_long_side == 1024


# ----------------------------------------------------------------- params.yaml: the defaults


def test_every_default_comes_from_params_yaml():
    import yaml as _yaml

    from boneage import config

    raw = _yaml.safe_load(config.DEFAULTS_FILE.read_text())
    assert config.missing_keys(raw) == []  # params.yaml states every key
    assert config.defaults() == config.load_params(config.DEFAULTS_FILE)
    # class defaults are params.yaml's (a class used by several sections: its first one)
    assert config.TrainConfig().epochs == raw["localizer"]["train"]["epochs"]
    assert config.AttendConfig().hand.tau == raw["attend"]["hand"]["tau"]
    assert config.AggregatorConfig().img_size == raw["aggregator"]["img_size"]


def test_a_missing_key_in_the_defaults_is_an_error():
    import copy

    import yaml as _yaml

    from boneage import config

    raw = _yaml.safe_load(config.DEFAULTS_FILE.read_text())
    broken = copy.deepcopy(raw)
    del broken["score"]["qc"]
    with pytest.raises(config.ConfigError, match="score.qc is missing"):
        config._set_defaults(config.Params, broken, "", set())
    config._set_defaults(config.Params, raw, "", set())  # as imported


def test_a_profile_is_read_over_params_yaml(tmp_path):
    from boneage import config

    f = tmp_path / "profile.yaml"
    f.write_text("aggregator:\n  img_size: 96\n  train:\n    epochs: 2\n")
    p = config.load_params(f)
    d = config.defaults()
    assert p.aggregator.img_size == 96 and p.aggregator.train.epochs == 2
    assert p.aggregator.train.lr == d.aggregator.train.lr  # the rest from params.yaml
    assert p.attend == d.attend


def test_complete_sections_must_be_stated_in_full(tmp_path):
    from boneage import config

    f = tmp_path / "bundle_params.yaml"
    f.write_text("ingest:\n  workers: 1\n")
    with pytest.raises(config.ConfigError, match=r"does not state .*ingest\.store_long_side"):
        config.load_params(f, complete=("ingest",))
    assert config.load_params(f).ingest.workers == 1  # without `complete`: over params.yaml


def test_a_bundle_made_before_a_key_existed_loads_with_the_feature_off(tmp_path):
    """Keys added later (ADDED_LATER) take the value that reproduces how an older model
    was made — not today's params.yaml value — and only those are exempt."""
    import yaml

    from boneage import config

    full = config.defaults().model_dump(mode="json", by_alias=True)
    full["aggregator"]["tta_shift"] = 0.25  # a value params.yaml might hold one day
    for k in config.ADDED_LATER:
        node = full
        *parents, leaf = k.split(".")
        for part in parents:
            node = node[part]
        del node[leaf]
    f = tmp_path / "old_bundle_params.yaml"
    f.write_text(yaml.safe_dump(full))
    p = config.load_params(f, complete=("localizer", "aggregator"))
    assert p.aggregator.tta_shift == 0.0 and p.aggregator.train.low_res_size is None
    assert p.localizer.train.low_res_epochs == 0
    del full["aggregator"]["img_size"]
    f.write_text(yaml.safe_dump(full))
    with pytest.raises(config.ConfigError, match=r"aggregator\.img_size"):
        config.load_params(f, complete=("aggregator",))


def test_trace_records_the_keys_a_process_reads(tmp_path):
    import json
    import subprocess
    import sys

    trace = tmp_path / "trace.jsonl"
    code = (
        "from boneage.config import load_params, DEFAULTS_FILE\n"
        "p = load_params(DEFAULTS_FILE)\n"
        "p.aggregator.train.epochs; p.validate_.min_image_side; p.evaluate.model_dump()\n"
        "q = p.model_copy(update={'ingest': p.ingest.model_copy(update={'workers': 1})})\n"
        "q.ingest.workers\n"
        "b = load_params(DEFAULTS_FILE, trace=False); b.score.qc\n"
    )
    env = {**__import__("os").environ, "BONEAGE_TRACE_PARAMS": str(trace)}
    subprocess.run([sys.executable, "-c", code, "ARG"], check=True, env=env)
    rec = json.loads(trace.read_text())
    assert rec["argv"] == ["ARG"]
    assert rec["reads"] == ["aggregator.train.epochs", "evaluate.age_bands_years",
                            "evaluate.interval", "ingest.workers",
                            "validate.min_image_side"]  # fmt: skip
