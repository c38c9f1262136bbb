"""The edge's MQTT v5 connection: persistent session, CONNACK packet limit, ack subscription.

paho runs the network in its own thread; callbacks only record state and queue acks, so all decisions
(what to send, what to delete) are made by the service's main loop.
"""
from __future__ import annotations

import json
import logging
import queue

from codec.service.mqtt import LinkBase

from . import wire

log = logging.getLogger("edge.mqtt")


class Link(LinkBase):
    DISCONNECT_NOTE = "will reconnect and resend unacked photos"

    def __init__(self, cfg, ack_topic: str):
        self.ack_topic = ack_topic
        self.acks: queue.Queue = queue.Queue()
        self.generation = 0           # bumps on every (re)connect: everything unacked is due again
        self.max_packet = cfg.max_packet_bytes
        super().__init__(cfg, log)
        self.client.max_inflight_messages_set(20)

    def _on_connect(self, client, userdata, flags, reason, properties):
        if not self._accepted(reason):
            return
        advertised = getattr(properties, "MaximumPacketSize", None) if properties else None
        # The broker's limit wins; our own cap applies when it advertises none (or a larger one).
        self.max_packet = min(advertised or self.cfg.max_packet_bytes, self.cfg.max_packet_bytes)
        client.subscribe(self.ack_topic, qos=1)
        self.generation += 1
        log.info("connected to %s:%d (session present: %s, packet limit %d bytes%s)", self.cfg.host,
                 self.cfg.port, flags.session_present, self.max_packet,
                 ", from CONNACK" if advertised else ", configured cap")
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        try:
            ack = json.loads(msg.payload)
            if not isinstance(ack, dict) or not isinstance(ack.get("image_id"), str):
                raise ValueError("no image_id")
        except ValueError as e:
            log.warning("ignoring malformed ack on %s: %s", msg.topic, e)
            return
        self.acks.put(ack)

    def publish(self, topic: str, chunk: wire.Chunk) -> None:
        size = wire.packet_size(topic, chunk.props, len(chunk.payload))
        if size > self.max_packet:  # last guard: an oversize publish is dropped or loops at the broker
            raise wire.OversizeMessage(f"{size}-byte packet above the broker limit {self.max_packet}")
        self.client.publish(topic, chunk.payload, qos=1, properties=chunk.props)
