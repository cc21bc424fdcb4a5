from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import RunConfig, Timeouts
from harness.errors import ConfigError
from harness.options import config_from


def test_defaults_are_the_tcg_friendly_debian_run():
    config = RunConfig()
    assert (config.guest, config.accel, config.vhost, config.queues) == ("linux", "auto", "auto", 1)


@pytest.mark.parametrize("changes,needle", [
    ({"queues": 0}, "queues must be a whole number of at least 1, not 0"),
    ({"queues": True}, "queues must be a whole number"),
    ({"vcpus": -1}, "vcpus must be a whole number"),
    ({"accel": "hvf"}, "accel must be one of auto, kvm, tcg"),
    ({"vhost": "yes"}, "vhost must be one of auto, on, off"),
    ({"memory_mb": 64}, "memory_mb must be at least 128"),
    ({"testbed": ""}, "testbed must be a non-empty name"),
])
def test_bad_values_name_the_key(changes, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig(**changes)


def test_toml_sets_values_and_explicit_options_win(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text('[run]\nqueues = 2\nvcpus = 4\n[run.timeouts]\nlogin = 5\n')
    config = RunConfig.from_toml(path, {"queues": 3})
    assert (config.queues, config.vcpus, config.timeouts.login) == (3, 4, 5.0)
    assert config.timeouts.trial == Timeouts().trial


@pytest.mark.parametrize("text,needle", [
    ('[run]\nqueus = 2\n', "unknown key 'queus'"),
    ('[run]\nqueues = "two"\n', "queues must be a whole number, not 'two'"),
    ('[run]\nkeep_vm = 1\n', "keep_vm must be true or false"),
    ('[run.timeouts]\nboot = 5\n', "unknown timeout phase 'boot'"),
    ('[run.timeouts]\nlogin = -1\n', "timeouts.login must be a positive number"),
    ('[run\n', "is not valid TOML"),
])
def test_toml_errors_name_the_key(tmp_path, text, needle):
    path = tmp_path / "h.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_toml(path)


def test_missing_config_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        RunConfig.from_toml(tmp_path / "absent.toml")


def test_options_keep_an_explicit_zero_so_it_is_refused():
    with pytest.raises(ConfigError, match="not 0"):
        config_from({"queues": 0})
    assert config_from({"queues": None, "run_dir": Path("x")}).run_dir == Path("x")
