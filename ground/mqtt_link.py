"""The ground's MQTT v5 connection: persistent session, shared subscription, chunk intake, acks out.

on_message runs in paho's network thread. It checks the chunk and writes it to the shared chunk store
before returning, and paho sends the PUBACK only after on_message returns, so a PUBACKed chunk is on disk.
The heavy work (decode, archive) is handed to the main loop through a queue.
"""
from __future__ import annotations

import json
import logging

from codec.service.mqtt import LinkBase

from . import wire

log = logging.getLogger("ground.mqtt")


class Link(LinkBase):
    def __init__(self, cfg, root: str, on_chunk):
        self.root, self.on_chunk = root, on_chunk
        super().__init__(cfg, log)

    def _on_connect(self, client, userdata, flags, reason, properties):
        if not self._accepted(reason):
            return
        client.subscribe(wire.chunk_filter(self.root, self.cfg.share_group), qos=1)
        log.info("connected to %s:%d (session present: %s), subscribed as group %s", self.cfg.host,
                 self.cfg.port, flags.session_present, self.cfg.share_group)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        user = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        try:
            self.on_chunk(msg.topic, user or [], msg.payload)
        except Exception:  # a bad message must never kill the network thread (it would stop all intake)
            log.exception("failed to take a chunk on %s", msg.topic)

    def ack(self, site: str, drone: str, body: dict) -> None:
        self.client.publish(wire.ack_topic(self.root, site, drone), json.dumps(body), qos=1)
