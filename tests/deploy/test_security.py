"""Per-drone credentials, TLS and the ACL from deploy/mosquitto/acl, on a real mosquitto."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from deploy.localrun import Broker
from tests.conftest import PROJECT_ROOT
from tests.deploy.certs import make_ca_and_server
from tests.deploy.harness import Pipeline, make_photos, wait_until

ACL = PROJECT_ROOT / "deploy" / "mosquitto" / "acl"
USERS = {"ground": "ground-secret", "drone-a": "a-secret", "drone-b": "b-secret"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    d = tmp_path_factory.mktemp("secured")
    certs = make_ca_and_server(d / "certs")
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    for user, pw in USERS.items():
        (d / f"{user}.pass").write_text(pw + "\n")
    broker = Broker(d / "broker", tls=certs, password_file=passwd, acl_file=ACL).start()
    yield {"broker": broker, "certs": certs, "dir": d}
    broker.stop()


class Probe:
    """A plain paho v5 client recording what happens to it."""

    def __init__(self, secured, user, password, tls=True):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        if tls:
            self.c.tls_set(ca_certs=str(secured["certs"]["cafile"]), cert_reqs=ssl.CERT_REQUIRED)
        self.reason, self.messages, self.granted = None, [], []
        self.connected = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append(m.topic)
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.granted.extend(codes)
        self.port = secured["broker"].port

    def _on_connect(self, client, userdata, flags, reason, props):
        self.reason = reason
        self.connected.set()

    def connect(self):
        self.c.connect(
            "127.0.0.1", self.port, 30)
        self.c.loop_start()
        self.connected.wait(10)
        return self

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_wrong_password_and_unknown_user_are_refused(secured):
    for user, pw in (("drone-a", "wrong"), ("drone-z", "whatever")):
        p = Probe(secured, user, pw).connect()
        try:
            assert p.reason is not None and p.reason.is_failure, p.reason
            assert "not authori" in str(p.reason).lower() or "bad user" in str(p.reason).lower()
        finally:
            p.close()
    good = Probe(secured, "drone-a", USERS["drone-a"]).connect()
    assert good.reason is not None and not good.reason.is_failure
    good.close()


def test_plain_tcp_to_the_tls_listener_gets_nowhere(secured):
    p = Probe(secured, "drone-a", USERS["drone-a"], tls=False)
    p.c.connect_async("127.0.0.1", p.port, 30)
    p.c.loop_start()
    try:
        assert not p.connected.wait(3) or p.reason.is_failure
    finally:
        p.c.loop_stop()


def test_a_drone_cannot_publish_as_another_drone_or_read_its_acks(secured):
    ground = Probe(secured, "ground", USERS["ground"]).connect()
    drone = Probe(secured, "drone-a", USERS["drone-a"]).connect()
    try:
        ground.c.subscribe("blades/+/+/img/+", qos=1)
        drone.c.subscribe([("blades/s1/drone-b/ack", 1), ("blades/s1/drone-a/ack", 1)])
        assert wait_until(lambda: len(ground.granted) == 1 and len(drone.granted) == 2, 5)
        # Forbidden first, allowed second on the same connection: in-order delivery means the forbidden one
        # would have arrived before the allowed one.
        drone.c.publish("blades/s1/drone-b/img/" + "b" * 32, b"spoofed", qos=1).wait_for_publish(5)
        drone.c.publish("blades/s1/drone-a/img/" + "a" * 32, b"genuine", qos=1).wait_for_publish(5)
        assert wait_until(lambda: ground.messages, 5)
        time.sleep(0.3)
        assert ground.messages == ["blades/s1/drone-a/img/" + "a" * 32]
        ground.c.publish("blades/s1/drone-b/ack", b"{}", qos=1).wait_for_publish(5)
        ground.c.publish("blades/s1/drone-a/ack", b"{}", qos=1).wait_for_publish(5)
        assert wait_until(lambda: drone.messages, 5)
        time.sleep(0.3)
        assert drone.messages == ["blades/s1/drone-a/ack"]
    finally:
        ground.close()
        drone.close()


def _notify_socket(path: Path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.2)
    return s


def _received(sock, want: set, timeout: float) -> set:
    got, deadline = set(), time.monotonic() + timeout
    while time.monotonic() < deadline and not want <= got:
        try:
            got |= set(sock.recv(4096).decode().splitlines())
        except socket.timeout:
            pass
    return got


def test_pipeline_over_tls_with_credentials_and_sd_notify(secured, tmp_path, tiny_model):
    d, port, ca = secured["dir"], secured["broker"].port, secured["certs"]["cafile"]
    tls = {"tls": {"ca_file": ca}, "port": port}
    pipe = Pipeline(tmp_path, tiny_model.path,
                    edge={"drone": "drone-a", "mqtt": {**tls, "username": "drone-a",
                                                       "password_file": d / "drone-a.pass"}},
                    ground={"mqtt": {**tls, "username": "ground", "password_file": d / "ground.pass"}})
    pipe.broker = secured["broker"]   # the module's secured broker, not the harness's plain one
    sockets = {name: _notify_socket(tmp_path / f"{name}.notify") for name in ("edge", "ground")}
    try:
        pipe.start_ground(env={"NOTIFY_SOCKET": str(tmp_path / "ground.notify")})
        pipe.start_edge(env={"NOTIFY_SOCKET": str(tmp_path / "edge.notify")})
        for name, sock in sockets.items():
            got = _received(sock, {"READY=1", "WATCHDOG=1"}, 60)
            assert {"READY=1", "WATCHDOG=1"} <= got, (name, got, pipe.logs())
        pipe.drop(make_photos(tmp_path / "src", 3))
        assert pipe.wait_archived(3, 60) == 3, pipe.logs()
        codes = {"edge": pipe.edge.stop(), "ground": pipe.grounds["ground-1"].stop()}
        assert codes == {"edge": 0, "ground": 0}
        assert "STOPPING=1" in _received(sockets["edge"], {"STOPPING=1"}, 5)
    finally:
        for g in pipe.grounds.values():
            g.kill()
        if pipe.edge:
            pipe.edge.kill()
        for s in sockets.values():
            s.close()
    assert {r["drone"] for r in pipe.rows()} == {"drone-a"}
