"""The ground daemon against hand-made traffic on a real broker: reassembly with duplicates and interleaving,
exactly-once archiving, rejects with logged reasons, path-escaping ids, expiry of incomplete transfers."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from PIL import Image

from codec import api, container
from codec.imageio import Photo, read_photo
from deploy.localrun import Broker
from edge import wire as edge_wire
from ground.catalog import Catalog
from ground.config import GroundConfig
from ground.daemon import GroundDaemon
from tests.conftest import synthetic_image
from tests.deploy.harness import wait_until

SITE, DRONE = "site-1", "drone-1"


@pytest.fixture()
def station(tmp_path, tiny_model, caplog):
    caplog.set_level(logging.INFO)
    broker = Broker(tmp_path / "broker").start()
    cfg = GroundConfig.model_validate({
        "model": str(tiny_model.path), "state_dir": str(tmp_path / "state"), "archive": str(tmp_path / "archive"),
        "partial_expiry_s": 1.0, "limits": {"max_pixels": 1_000_000},
        "mqtt": {"port": broker.port, "connect_wait_s": 10}})
    daemon = GroundDaemon(cfg)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    assert daemon.link.connected.wait(10)
    pub = Publisher(broker.port)
    yield {"daemon": daemon, "pub": pub, "tmp": tmp_path, "model": tiny_model, "log": caplog}
    pub.close()
    daemon.stop.set()
    runner.join(20)
    broker.stop()


class Publisher:
    """A bare MQTT client standing in for a drone (and for a misbehaving one)."""

    def __init__(self, port):
        self.acks = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-drone", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe("blades/+/+/ack", qos=1)
        time.sleep(0.2)

    def chunks(self, data: bytes, image_id: str, max_packet=600, sha=None, site=SITE, drone=DRONE, name="x.png"):
        meta = {"image_id": image_id, "sha256": sha or hashlib.sha256(data).hexdigest(), "size": len(data),
                "drone": drone, "site": site, "name": name, "lambda_index": 128, "t_detect": time.time(),
                "t_spooled": time.time(), "encode_ms": 1.0}
        topic = edge_wire.chunk_topic("blades", site, drone, image_id)
        return [(topic, c) for c in edge_wire.plan_chunks(topic, meta, data, max_packet)]

    def send(self, items):
        for topic, c in items:
            self.c.publish(topic, c.payload, qos=1, properties=c.props).wait_for_publish(5)

    def ack_for(self, image_id):
        return [a for a in self.acks if a.get("image_id") == image_id]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _photo_bytes(model, seed, exif=b""):
    return api.compress(model, Photo(synthetic_image(256, 256, seed), exif), 128).data


def _gps_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0132] = "2026:05:04 10:11:12"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (53.0, 30.0, 0.0), 3: "E", 4: (8.0, 15.0, 0.0)})
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=exif)
    return read_photo_bytes(buf.getvalue())


def read_photo_bytes(jpeg: bytes) -> bytes:
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(jpeg)
        f.flush()
        return read_photo(f.name).exif


def test_duplicated_late_and_interleaved_chunks_archive_each_photo_once(station):
    pub, daemon, model = station["pub"], station["daemon"], station["model"]
    a_id, b_id = "a" * 32, "b" * 32
    a = pub.chunks(_photo_bytes(model, 1, _gps_exif()), a_id, name="a.jpg")
    b = pub.chunks(_photo_bytes(model, 2), b_id)
    assert len(a) >= 3 and len(b) >= 3
    pub.send([a[0], b[0], a[0], b[1], a[1]] + b[2:] + a[2:] + [b[1], a[1]])
    assert wait_until(lambda: pub.ack_for(a_id) and pub.ack_for(b_id), 20), station["log"].text
    pub.send(a)                    # a late resend of the whole photo, after its ack
    assert wait_until(lambda: any(x["status"] == "duplicate" for x in pub.ack_for(a_id)), 20)
    rows = Catalog(daemon.cfg.catalog).rows()
    assert sorted(r["image_id"] for r in rows) == [a_id, b_id]
    assert all(x["status"] in ("archived", "duplicate") for x in pub.acks)
    row = next(r for r in rows if r["image_id"] == a_id)
    sidecar = json.loads(open(row["sidecar_path"]).read())
    assert sidecar["exif"]["gps"]["latitude"] == pytest.approx(53.5)
    assert sidecar["drone"] == DRONE and sidecar["lambda_index"] == 128 and sidecar["bpp"] > 0
    assert "/2026-05-04/" in row["recon_path"] or row["capture_time"] is None
    archived = open(row["bitstream_path"], "rb").read()
    assert hashlib.sha256(archived).hexdigest() == row["sha256"]
    assert read_photo(row["recon_path"]).pixels.shape == (256, 256, 3)
    assert wait_until(lambda: not list((station["tmp"] / "state" / "partial").iterdir()), 10)


def test_rejects_are_logged_acked_and_never_archived(station):
    pub, daemon, model, log = station["pub"], station["daemon"], station["model"], station["log"]
    good = _photo_bytes(model, 3)
    cases = {
        "1" * 32: (pub.chunks(good, "1" * 32, sha="0" * 64), "sha256 mismatch"),
        "2" * 32: (pub.chunks(b"not a bitstream at all" * 10, "2" * 32), "container:"),
        "3" * 32: (pub.chunks(_huge_header(model), "3" * 32, max_packet=100000), "beyond the limits"),
    }
    for items, _ in cases.values():
        pub.send(items)
    for image_id, (_, reason) in cases.items():
        assert wait_until(lambda: pub.ack_for(image_id), 20), log.text
        ack = pub.ack_for(image_id)[0]
        assert ack["status"] == "rejected" and reason in ack["reason"]
        assert reason in log.text
    assert Catalog(daemon.cfg.catalog).rows() == []
    assert not [p for p in (station["tmp"] / "archive").rglob("*") if p.is_file()]
    pub.send(pub.chunks(good, "4" * 32))   # the daemon is still fine
    assert wait_until(lambda: len(Catalog(daemon.cfg.catalog).rows()) == 1, 20), log.text


def _huge_header(model) -> bytes:
    """A well-formed container whose header declares 4000x4000 pixels (more than the 1e6 limit)."""
    w = h = 4000
    tx, ty = container.tile_grid(w, h, 1024, model.cfg.alignment)
    header = container.Header(model.cfg.levels, 0, model.model_id, w, h, 1024, tx, ty)
    return container.write(container.Container(header, [b""] * (tx * ty), {}))


def test_path_escaping_and_spoofed_ids_are_refused(station):
    pub, daemon, model, log, tmp = station["pub"], station["daemon"], station["model"], station["log"], station["tmp"]
    data = _photo_bytes(model, 4)
    sha = hashlib.sha256(data).hexdigest()
    bad = [("blades/../drone-1/img/" + "5" * 32, {"site": ".."}),
           ("blades/site-1/.hidden/img/" + "6" * 32, {"drone": ".hidden"}),
           ("blades/site-1/drone-1/img/..", {"image_id": ".."}),
           ("blades/site-1/drone-1/img/" + "7" * 32, {"drone": "drone-2"})]   # property disagrees with topic
    for topic, override in bad:
        item = pub.chunks(data, "8" * 32, max_packet=100000)[0][1]
        props = dict(item.props.UserProperty)
        image_id = topic.rsplit("/", 1)[1]
        props.update({"image_id": image_id, "drone": topic.split("/")[2], "site": topic.split("/")[1], **override})
        item.props.UserProperty = list(props.items())
        pub.c.publish(topic, item.payload, qos=1, properties=item.props).wait_for_publish(5)
    assert wait_until(lambda: log.text.count("rejected a chunk") >= len(bad), 10), log.text
    assert "'..' is not a safe id" in log.text and "'.hidden' is not a safe id" in log.text
    assert "is not 8-64 lower-case hex digits" in log.text and "does not match the topic" in log.text
    assert Catalog(daemon.cfg.catalog).rows() == [] and sha
    written = {p.relative_to(tmp).parts[0] for p in tmp.rglob("*") if p.is_file()}
    assert written <= {"broker", "state"}          # nothing escaped; nothing archived
    assert not list((tmp / "state" / "partial").iterdir())


def test_incomplete_transfer_expires_with_a_log_line(station):
    pub, log, tmp = station["pub"], station["log"], station["tmp"]
    items = pub.chunks(_photo_bytes(station["model"], 5), "9" * 32)
    pub.send(items[:1])
    assert wait_until(lambda: "expired incomplete transfer" in log.text, 15), log.text
    assert f"1 of {len(items)} chunks" in log.text
    assert wait_until(lambda: not list((tmp / "state" / "partial").iterdir()), 5)


def test_chunks_of_one_photo_split_two_ways_do_not_mix(station):
    """The edge re-splits a photo when the broker's packet limit changes between sends."""
    pub, daemon, log = station["pub"], station["daemon"], station["log"]
    data, image_id = _photo_bytes(station["model"], 6), "c" * 32
    narrow, wide = pub.chunks(data, image_id, max_packet=600), pub.chunks(data, image_id, max_packet=1500)
    assert len(narrow) > len(wide) >= 2
    pub.send(narrow[:1] + wide)
    assert wait_until(lambda: pub.ack_for(image_id), 20), log.text
    assert [a["status"] for a in pub.ack_for(image_id)] == ["archived"]
    assert [r["image_id"] for r in Catalog(daemon.cfg.catalog).rows()] == [image_id]
    assert wait_until(lambda: "expired incomplete transfer" in log.text, 15), log.text   # the narrow split's


def test_an_empty_chunk_is_refused(station):
    pub, log = station["pub"], station["log"]
    topic, item = pub.chunks(_photo_bytes(station["model"], 7), "d" * 32)[0]
    pub.c.publish(topic, b"", qos=1, properties=item.props).wait_for_publish(5)
    assert wait_until(lambda: "empty chunk" in log.text, 10), log.text
    assert not list((station["tmp"] / "state" / "partial").iterdir())


def test_a_photo_of_another_model_is_held_for_a_station_that_has_that_model(station, context_model):
    """A deployment mismatch (the drone flies a newer model) is no fault of the photo: no reject, the chunks
    stay, and a station running that model (here a second daemon of the group) archives it."""
    pub, daemon, log, tmp = station["pub"], station["daemon"], station["log"], station["tmp"]
    image_id = "e" * 32
    items = pub.chunks(_photo_bytes(context_model, 8), image_id)
    pub.send(items)
    assert wait_until(lambda: "holding photo " + image_id in log.text, 20), log.text
    pub.send(items)                            # the drone's resend changes nothing
    (key,) = daemon.held
    daemon.handle(key, "site-1", "drone-1", image_id)   # nor a job its chunks queued before it was held
    time.sleep(1.5)
    assert pub.ack_for(image_id) == [] and log.text.count("holding photo") == 1
    assert Catalog(daemon.cfg.catalog).rows() == [] and list((tmp / "state" / "partial").iterdir())
    upgraded = GroundDaemon(daemon.cfg.model_copy(update={"model": context_model.path}))
    runner = threading.Thread(target=upgraded.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: pub.ack_for(image_id), 30), log.text
    finally:
        upgraded.stop.set()
        runner.join(20)
    assert [a["status"] for a in pub.ack_for(image_id)] == ["archived"]
    assert [r["model_id"] for r in Catalog(daemon.cfg.catalog).rows()] == [context_model.model_id.hex()]


def test_chunks_holding_more_than_the_declared_size_are_refused_before_they_are_read(station):
    pub, log = station["pub"], station["log"]
    data, image_id = _photo_bytes(station["model"], 9), "f" * 32
    items = pub.chunks(data + data, image_id, sha=hashlib.sha256(data).hexdigest())
    for _, chunk in items:   # every chunk claims the photo is half as large as what they carry together
        props = dict(chunk.props.UserProperty)
        props["size"] = str(len(data))
        chunk.props.UserProperty = list(props.items())
    pub.send(items)
    assert wait_until(lambda: pub.ack_for(image_id), 20), log.text
    ack = pub.ack_for(image_id)[0]
    assert ack["status"] == "rejected" and f"chunks hold {2 * len(data)} bytes" in ack["reason"]
