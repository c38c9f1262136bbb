"""The broker connection settings and client set-up that the edge and the ground share.

Both connect with MQTT v5, a persistent session (clean_start=False plus a session expiry, so the broker keeps
subscriptions and queued QoS 1 messages while a client is away), optional username/password and TLS.
"""
from __future__ import annotations

import re
import ssl
import threading
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLS(Strict):
    ca_file: Path = Field(description="CA certificate that signed the broker's certificate")
    cert_file: Optional[Path] = Field(None, description="client certificate, when the broker asks for one")
    key_file: Optional[Path] = Field(None, description="client key for cert_file")


class BrokerSettings(Strict):
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 for TLS)")
    client_id: Optional[str] = Field(None, description="MQTT client id")
    username: Optional[str] = Field(None, description="broker user")
    password_file: Optional[Path] = Field(None, description="file holding the broker password (one line)")
    tls: Optional[TLS] = Field(None, description="TLS to the broker; off when absent")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    session_expiry_s: int = Field(7 * 86400, ge=0, description="persistent session lifetime at the broker")
    connect_wait_s: float = Field(30, ge=0, description="how long start-up waits for the broker before READY")


ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(value: str) -> str:
    """Drone, site and station ids become topic levels and folder names: keep them plain."""
    if not ID_RE.fullmatch(value):   # match() would let a trailing newline through
        raise ValueError("must be 1-64 letters, digits, '_', '.', '-' starting with a letter or digit")
    return value


def check_topic_level(value: str) -> str:
    if not value or any(c in value for c in "+#/") or value.startswith("$"):
        raise ValueError("must be one topic level without '+', '#', '/' or a leading '$'")
    return value


def read_password(path) -> str:
    return open(path, encoding="utf-8").read().strip()


def make_client(cfg: BrokerSettings):
    """A paho MQTT v5 client with the configured credentials and TLS; callbacks are the caller's."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5)
    if cfg.username:
        c.username_pw_set(cfg.username, read_password(cfg.password_file) if cfg.password_file else None)
    if cfg.tls:
        t = cfg.tls
        c.tls_set(ca_certs=str(t.ca_file), certfile=t.cert_file and str(t.cert_file),
                  keyfile=t.key_file and str(t.key_file), cert_reqs=ssl.CERT_REQUIRED)
    c.reconnect_delay_set(1, 10)
    return c


def start_persistent(client, cfg: BrokerSettings):
    """Connect in the background with a persistent session, and start paho's network thread."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = cfg.session_expiry_s
    client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=props)
    client.loop_start()


class LinkBase:
    """What the edge and ground links share: a paho client with our callbacks, a persistent start, a quiet
    deliberate stop, and connection state for the main loop. Subclasses implement _on_connect (calling
    _accepted first) and _on_message, and set DISCONNECT_NOTE (what the warning on a lost connection adds)."""
    DISCONNECT_NOTE = "reconnecting"

    def __init__(self, cfg, log):
        self.cfg, self.log = cfg, log
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client = self._make_client()

    def _make_client(self):
        c = make_client(self.cfg)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        return c

    def start(self):
        start_persistent(self.client, self.cfg)

    def stop(self):
        self.connected.clear()   # a deliberate disconnect is not worth a warning
        self.client.disconnect()
        self.client.loop_stop()

    def _accepted(self, reason) -> bool:
        """False (and the refusal recorded and logged) when the broker refused the connection."""
        if reason.is_failure:
            self.refused = str(reason)
            self.log.error("broker refused the connection: %s", reason)
            return False
        self.refused = None
        return True

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        if self.connected.is_set():
            self.log.warning("disconnected from the broker: %s; %s", reason, self.DISCONNECT_NOTE)
        self.connected.clear()

    def _on_connect(self, client, userdata, flags, reason, properties):
        raise NotImplementedError

    def _on_message(self, client, userdata, msg):
        raise NotImplementedError
