"""The shipped deployment files: systemd units pass `systemd-analyze verify`, the mosquitto config starts a
broker that demands credentials, the example configs validate, and both sides speak the same wire protocol."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from deploy.localrun import free_port, wait_port
from tests.conftest import PROJECT_ROOT
from tests.deploy.certs import make_ca_and_server

DEPLOY = PROJECT_ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


SERVICES = [u for u in UNITS if u.name != "bladecodec-refine.service"]


def test_units_have_what_the_issue_asks_for():
    assert {u.name for u in UNITS} == {"bladecodec-edge.service", "bladecodec-ground.service",
                                       "bladecodec-refine.service"}
    for unit in SERVICES:
        text = unit.read_text()
        for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"):
            assert line in text, (unit.name, line)
        assert re.search(r"^WatchdogSec=\d+", text, re.M) and re.search(r"^StateDirectory=bladecodec-", text, re.M)
    assert "DeviceAllow=/dev/nvmap rw" in (DEPLOY / "systemd" / "bladecodec-edge.service").read_text()


def test_refinement_unit_stays_behind_live_decoding():
    text = (DEPLOY / "systemd" / "bladecodec-refine.service").read_text()
    for line in ("Nice=15", "CPUWeight=10", "IOSchedulingClass=idle", "Restart=on-failure",
                 "StateDirectory=bladecodec-ground", "python -m ground.refinement_jobs"):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for unit in UNITS:
        # The units name the installed venv; point them at this interpreter so the executable check is real.
        text = unit.read_text().replace("/opt/bladecodec/venv/bin/python", sys.executable)
        (tmp_path / unit.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *[str(tmp_path / u.name) for u in UNITS]],
                       capture_output=True, text=True, timeout=120)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if ln.strip() and "bladecodec" in ln and "Documentation" not in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto is not installed")
def test_shipped_mosquitto_config_starts_and_requires_credentials(tmp_path):
    certs = make_ca_and_server(tmp_path / "certs")
    tls_port, local_port = free_port(), free_port()
    (tmp_path / "passwd").touch()
    text = (DEPLOY / "mosquitto" / "bladecodec.conf").read_text()
    for old, new in (("/etc/mosquitto/certs/ca.crt", certs["cafile"]), ("/etc/mosquitto/certs/broker.crt",
                     certs["certfile"]), ("/etc/mosquitto/certs/broker.key", certs["keyfile"]),
                     ("/etc/mosquitto/bladecodec.passwd", tmp_path / "passwd"),
                     ("/etc/mosquitto/bladecodec.acl", DEPLOY / "mosquitto" / "acl"),
                     ("/var/lib/mosquitto/", f"{tmp_path}/"), ("listener 8883", f"listener {tls_port} 127.0.0.1"),
                     ("listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1")):
        assert old in text
        text = text.replace(old, str(new))
    if os.geteuid() == 0:
        text += "user root\n"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_port(local_port, 10) and wait_port(tls_port, 10), proc.stderr.read1().decode()
        reasons = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv5)
        c.on_connect = lambda cl, u, f, reason, p: reasons.append(reason)
        c.connect("127.0.0.1", local_port)
        c.loop_start()
        deadline = time.monotonic() + 5
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.05)
        c.loop_stop()
        assert reasons and reasons[0].is_failure        # allow_anonymous false
    finally:
        proc.terminate()
        proc.wait(10)


def test_example_configs_validate():
    from edge.config import load as load_edge
    from ground.config import load as load_ground
    assert load_edge(DEPLOY / "edge.example.yaml").mqtt.tls is not None
    assert load_ground(DEPLOY / "ground.example.yaml").mqtt.username == "ground"


def test_edge_and_ground_agree_on_the_wire():
    from edge import wire as e
    from ground import config, wire as g
    meta = {"image_id": "0123456789abcdef" * 2, "sha256": "f" * 64, "size": 5000, "drone": "drone-9",
            "site": "park-3", "name": "IMG_1.JPG", "lambda_index": 77, "t_detect": 1.5, "t_spooled": 2.5,
            "encode_ms": 12.0}
    topic = e.chunk_topic("blades", "park-3", "drone-9", meta["image_id"])
    chunks = e.plan_chunks(topic, meta, b"z" * 5000, 1024)
    for c in chunks:
        info = g.parse_chunk(topic, c.props.UserProperty, len(c.payload), "blades", config.Limits())
        assert (info.index, info.count, info.size, info.sha256) == (c.index, len(chunks), 5000, meta["sha256"])
        assert info.extra["name"] == "IMG_1.JPG" and float(info.extra["t_detect"]) == 1.5
    assert e.ack_topic("blades", "park-3", "drone-9") == g.ack_topic("blades", "park-3", "drone-9")
    assert g.chunk_filter("blades", "ground") == "$share/ground/blades/+/+/img/+"
