"""The ground's MQTT v5 connection: persistent session, shared subscription, chunk intake, acks out.

on_message runs in paho's network thread. It checks the chunk and writes it to the shared chunk store
before returning, and paho sends the PUBACK only after on_message returns, so a PUBACKed chunk is on disk.
The heavy work (decode, archive) is handed to the main loop through a queue.
"""
from __future__ import annotations

import json
import logging
import queue
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import wire

log = logging.getLogger("ground.mqtt")


class Link:
    def __init__(self, cfg, root: str, on_chunk):
        self.cfg, self.root, self.on_chunk = cfg, root, on_chunk
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=mqtt.MQTTv5)
        if self.cfg.username:
            pw = open(self.cfg.password_file, encoding="utf-8").read().strip() if self.cfg.password_file else None
            c.username_pw_set(self.cfg.username, pw)
        if self.cfg.tls:
            t = self.cfg.tls
            c.tls_set(ca_certs=str(t.ca_file), certfile=t.cert_file and str(t.cert_file),
                      keyfile=t.key_file and str(t.key_file), cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(1, 10)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        return c

    def start(self):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self):
        self.connected.clear()   # a deliberate disconnect is not worth a warning
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            self.refused = str(reason)
            log.error("broker refused the connection: %s", reason)
            return
        self.refused = None
        client.subscribe(wire.chunk_filter(self.root, self.cfg.share_group), qos=1)
        log.info("connected to %s:%d (session present: %s), subscribed as group %s", self.cfg.host,
                 self.cfg.port, flags.session_present, self.cfg.share_group)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        if self.connected.is_set():
            log.warning("disconnected from the broker: %s; reconnecting", reason)
        self.connected.clear()

    def _on_message(self, client, userdata, msg):
        user = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        try:
            self.on_chunk(msg.topic, user or [], msg.payload)
        except Exception:  # a bad message must never kill the network thread (it would stop all intake)
            log.exception("failed to take a chunk on %s", msg.topic)

    def ack(self, site: str, drone: str, body: dict) -> None:
        self.client.publish(wire.ack_topic(self.root, site, drone), json.dumps(body), qos=1)
