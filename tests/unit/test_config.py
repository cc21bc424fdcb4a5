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
    ({"memory_mb": 64}, "memory_mb must be a whole number of at least 128, not 64"),
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


def test_traffic_options_parse_from_text_and_toml(tmp_path):
    config = RunConfig.from_mapping({"frame_sizes": "60, 1514", "trials": "5", "trial_seconds": "2.5",
                                     "mpps_min": "0.05"})
    assert (config.frame_sizes, config.trials, config.trial_seconds, config.mpps_min) == ((60, 1514), 5, 2.5, 0.05)
    path = tmp_path / "h.toml"
    path.write_text('[run]\nframe_sizes = [60, 128]\nprofile = "tcg-ci"\n')
    assert RunConfig.from_toml(path).frame_sizes == (60, 128)


@pytest.mark.parametrize("changes,needle", [
    ({"frame_sizes": "59"}, "frame_sizes must be a whole number of at least 60"),
    ({"frame_sizes": "60,9001"}, "frame sizes of 60..9000"),
    ({"trial_seconds": "0"}, "trial_seconds must be a positive number"),
    ({"mpps_min": "fast"}, "mpps_min must be a positive number"),
])
def test_bad_traffic_options(changes, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_mapping(changes)


def test_unknown_toml_table_is_refused(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text('[runn]\nqueues = 2\n')
    with pytest.raises(ConfigError, match="unknown table"):
        RunConfig.from_toml(path)
