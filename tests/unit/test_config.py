"""Settings precedence (flag > env > file > default) and validation."""

from __future__ import annotations

import pytest

from tokenpulse.config import Settings, load_settings
from tokenpulse.errors import ConfigError


def test_defaults():
    s = load_settings({}, env={})
    assert (s.grpc_port, s.http_port, s.admin_host) == (4317, 4318, "127.0.0.1")
    assert s.max_request_bytes == 16 * 1024 * 1024 and s.data_dir == "./tokenpulse-data"
    assert s == Settings()


def test_precedence_flag_over_env_over_file(tmp_path):
    cfg = tmp_path / "tp.yaml"
    cfg.write_text("grpc_port: 1111\nhttp_port: 2222\nadmin_port: 3333\ndatabase: from_file\n")
    env = {"TOKENPULSE_HTTP_PORT": "5555", "TOKENPULSE_ADMIN_PORT": "6666"}
    s = load_settings({"admin_port": "7777", "grpc_port": None}, env=env, config_file=str(cfg))
    assert (s.grpc_port, s.http_port, s.admin_port, s.database) == (1111, 5555, 7777, "from_file")


def test_config_file_from_env_and_sizes(tmp_path):
    cfg = tmp_path / "tp.yaml"
    cfg.write_text("max-request-bytes: 4MiB\nbatch_max_bytes: '2 MB'\n")
    s = load_settings({}, env={"TOKENPULSE_CONFIG": str(cfg), "TOKENPULSE_CLICKHOUSE_URL": "http://h:8123"})
    assert s.max_request_bytes == 4 * 1024 * 1024 and s.batch_max_bytes == 2_000_000
    assert s.clickhouse_url == "http://h:8123"


@pytest.mark.parametrize("flags, message", [
    ({"grpc_port": "abc"}, "grpc_port from flag --grpc-port: 'abc' is not a valid int"),
    ({"http_port": "70000"}, "not a port"),
    ({"retention_days": "0"}, "below the minimum 1"),
    ({"max_request_bytes": "lots"}, "not a valid int"),
    ({"log_level": "loud"}, "not one of debug, info, warning, error"),
    ({"batch_max_age_s": "-1"}, "below the minimum"),
])
def test_invalid_values_name_setting_and_source(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(flags, env={})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({}, env={}, config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpc_port: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings({}, env={}, config_file=str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings({}, env={}, config_file=str(lst))
    env_bad = {"TOKENPULSE_ACK_TIMEOUT_S": "soon"}
    with pytest.raises(ConfigError, match="environment variable TOKENPULSE_ACK_TIMEOUT_S"):
        load_settings({}, env=env_bad)


def test_the_memory_budget_caps_bodies_in_flight_and_the_write_queue():
    from tokenpulse.config import MiB

    default = load_settings({}, env={})
    inflight, queue = default.memory_limits  # 2 GiB: about the 64 MiB in-flight default; the queue shrinks
    assert 60 * MiB < inflight <= 64 * MiB and 60_000 < queue < 500_000  # 8 clients' 40k spans fit
    small = load_settings({"memory_budget": "1536MiB"}, env={})
    assert small.memory_limits[0] < 64 * MiB and small.memory_limits[1] < default.memory_limits[1]
    # the bounded memories keep their default sizes at 2 GiB and shrink below it
    assert default.memory_scale == 1.0 and 0.3 < small.memory_scale < 0.7
    # an explicit smaller setting still wins
    assert load_settings({"queue_max_spans": 1000}, env={}).memory_limits[1] == 1000
    with pytest.raises(ConfigError, match="below the minimum"):
        load_settings({"memory_budget": "1GiB"}, env={})
