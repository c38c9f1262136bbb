"""Ground config mistakes end in one line naming the file, the key and its line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ground.config import GroundConfig, load
from tests.conftest import PROJECT_ROOT as ROOT, config_error


@pytest.mark.parametrize("text, expected", [
    ("limits:\n  max_pixel: 5\n", "limits.max_pixel (line 2): unknown key"),
    ("limits:\n  max_bytes: 0\n", "limits.max_bytes (line 2): Input should be greater than or equal to 1"),
    ("reconstruction: jpg\n", "reconstruction (line 1): Input should be 'png' or 'tif'"),
    ("mqtt:\n  tls:\n    cafile: x\n", "mqtt.tls.ca_file (line 3): Field required"),
    ("topic_root: 'a/b'\n", "topic_root (line 1): Value error"),
])
def test_bad_configs_give_one_line_naming_the_key(tmp_path, text, expected):
    assert expected in config_error(load, tmp_path / "ground.yaml", text)


def test_defaults_work_on_loopback(tmp_path):
    (tmp_path / "g.yaml").write_text("ground_id: g7\n")
    cfg = load(tmp_path / "g.yaml")
    assert cfg.mqtt.host == "127.0.0.1" and cfg.mqtt.client_id == "g7"
    assert cfg.catalog == GroundConfig().state_dir / "catalog.sqlite"


def test_the_command_prints_one_error_line(tmp_path):
    (tmp_path / "g.yaml").write_text("partial_expiry_s: soon\n")
    r = subprocess.run([sys.executable, "-m", "ground", "--config", str(tmp_path / "g.yaml")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "partial_expiry_s (line 1)" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "ground", "--config", "deploy/ground.example.yaml",
                         "--validate-config"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
