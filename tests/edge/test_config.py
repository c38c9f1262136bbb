"""Config mistakes end in one line naming the file, the key and its line; the examples in deploy/ are valid."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edge.config import ConfigError, EdgeConfig, load
from tests.conftest import PROJECT_ROOT as ROOT, config_error


@pytest.mark.parametrize("text, expected", [
    ("drone: d1\nmqtt:\n  prot: 1883\n", "mqtt.prot (line 3): unknown key"),
    ("mqtt:\n  port: abc\n", "mqtt.port (line 2): Input should be a valid integer"),
    ("mqtt:\n  port: 70000\n", "mqtt.port (line 2): Input should be less than or equal to 65535"),
    ("rate:\n  mode: sometimes\n", "rate.mode (line 2): Input should be 'fixed' or 'budget'"),
    ("spool_quota:\n  when_full: panic\n", "spool_quota.when_full (line 2)"),
    ("drone: ../escape\n", "drone (line 1): Value error, must be 1-64 letters"),
    ('drone: "d1\\n"\n', "drone (line 1): Value error, must be 1-64 letters"),   # a trailing newline
    ("intake_retry_s: 0\n", "intake_retry_s (line 1): Input should be greater than 0"),
    ("drone: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("backend:\n  engine: /nonexistent/engines\n", "backend.engine (line 2): Value error, /nonexistent/engines does not exist"),
    ("backend:\n  providers: gpu\n", "backend.providers (line 2): Input should be 'auto', 'cuda' or 'cpu'"),
])
def test_bad_configs_give_one_line_naming_the_key(tmp_path, text, expected):
    assert expected in config_error(load, tmp_path / "edge.yaml", text)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "absent.yaml")


def test_empty_file_gives_loopback_defaults(tmp_path):
    (tmp_path / "edge.yaml").write_text("")
    cfg = load(tmp_path / "edge.yaml")
    assert cfg == EdgeConfig() and cfg.mqtt.host == "127.0.0.1" and cfg.mqtt.client_id == "edge-drone-01"


def test_the_command_prints_one_error_line_and_exits_2(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("transfer:\n  ack_timeout_s: -1\n")
    r = subprocess.run([sys.executable, "-m", "edge", "--config", str(path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "transfer.ack_timeout_s" in r.stderr


def test_example_config_validates():
    r = subprocess.run([sys.executable, "-m", "edge", "--config", "deploy/edge.example.yaml", "--validate-config"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr


def test_encode_subcommand_dispatches_or_says_it_is_missing():
    r = subprocess.run([sys.executable, "-m", "edge", "encode", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    if (ROOT / "edge" / "encode_cli.py").exists():
        assert r.returncode == 0 and "usage" in r.stdout.lower()
    else:
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "encode_cli.py is missing" in r.stderr
