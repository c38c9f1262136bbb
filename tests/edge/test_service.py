"""The edge service's main loop as the real process runs it (no broker: nothing is acked): a full disk, a
failing encoder, a photo larger than the spool, and camera names reused across cards. Nothing may be lost."""
from __future__ import annotations

import json
import shutil
import subprocess

import onnx
import pytest

from codec import api
from codec.imageio import read_photo
from codec.onnx_export import export_stamped
from deploy.localrun import Service, free_port, write_yaml
from tests.deploy.harness import make_photos, wait_until


def _edge(tmp_path, model_path, **over):
    base = {"model": model_path, "inbox": tmp_path / "inbox", "spool": tmp_path / "spool",
            "processed": tmp_path / "sent", "backend_order": ["torch"], "poll_interval_s": 0.05,
            "intake_retry_s": 0.3, "rate": {"mode": "fixed", "lambda_index": 128},
            "mqtt": {"port": free_port(), "connect_wait_s": 0}}   # nobody listens there
    cfg = write_yaml(tmp_path / "edge.yaml", {**base, **over})
    (tmp_path / "inbox").mkdir(exist_ok=True)
    edge = Service("edge", cfg, tmp_path / "edge.log").start()
    assert edge.wait_log("edge ready", 60), edge.log()
    return edge


def _drop(inbox, path, name=None):
    target = inbox / (name or path.name)
    target.write_bytes(path.read_bytes())
    (inbox / (target.name + ".done")).touch()
    return target


def _spooled_names(spool):
    return sorted(json.loads(p.read_text())["name"] for p in spool.glob("*.json"))


@pytest.fixture()
def small_disk(tmp_path):
    """A real 64 KiB tmpfs, so that ENOSPC comes from the kernel. Needs root (CI runs as root here)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN) to fill a real disk")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder):
    """Write until the kernel says the disk is full; returns the filler to delete later."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_keeps_the_photo_in_the_inbox_until_there_is_room(tmp_path, tiny_model, small_disk):
    spool = small_disk / "spool"
    edge = _edge(tmp_path, tiny_model.path, spool=spool)
    inbox = tmp_path / "inbox"
    try:
        filler = _fill(small_disk)
        photo = _drop(inbox, make_photos(tmp_path / "src", 1)[0])
        assert edge.wait_log("No space left on device", 30), edge.log()
        assert edge.wait_log("the photo stays in the inbox", 5)
        assert edge.running() and photo.exists() and (inbox / "p0000.png.done").exists()
        assert [p.name for p in spool.iterdir()] == []          # no torn entry, no temporary file
        assert wait_until(lambda: edge.log().count("No space left") >= 2, 10), edge.log()   # it tries again
        filler.unlink()
        assert wait_until(lambda: "spooled p0000.png" in edge.log(), 30), edge.log()
    finally:
        assert edge.stop() == 0
    assert _spooled_names(spool) == ["p0000.png"]
    assert (tmp_path / "sent" / "p0000.png").exists() and not photo.exists()


def _static_shape_graphs(model, folder, h, w):
    """The model's analysis graphs, with the image input fixed to one size: a real graph ONNX Runtime refuses
    other sizes with (as a TensorRT engine outside its optimisation profile would)."""
    image, _ = export_stamped(model, folder)
    graph = onnx.load(str(image))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, h, w)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    onnx.save(graph, str(image))
    return image


def test_an_encoder_failure_leaves_the_photo_waiting_and_the_service_running(tmp_path, tiny_model):
    image = _static_shape_graphs(tiny_model, tmp_path / "graphs", 64, 64)   # the 64x64 warm-up passes
    edge = _edge(tmp_path, tiny_model.path, backend_order=["onnxruntime"],
                 backend={"onnx": image, "providers": "cpu"})
    inbox = tmp_path / "inbox"
    try:
        photo = _drop(inbox, make_photos(tmp_path / "src", 1, h=96, w=128)[0])
        assert edge.wait_log("the encoder failed on p0000.png: BackendError", 30), edge.log()
        start = edge.log().index("the encoder failed")
        assert edge.wait_log("the encoder failed on p0000.png", 10, start + 1), edge.log()   # retried
        assert edge.running()
    finally:
        assert edge.stop() == 0
    assert "ONNX Runtime failed on an input of shape (1, 3, 96, 128)" in edge.log()
    assert photo.exists() and not (inbox / "rejected").exists()           # the photo is not to blame
    assert list((tmp_path / "spool").glob("*.nlic")) == []


def test_a_photo_larger_than_the_whole_spool_is_set_aside_and_drops_nothing(tmp_path, tiny_model):
    small, big = make_photos(tmp_path / "small", 2), make_photos(tmp_path / "big", 1, h=256, w=256, prefix="b")
    sizes = [len(api.compress(tiny_model, read_photo(p), 128).data) for p in small + big]
    assert sizes[2] > sizes[0] + sizes[1], sizes
    quota = {"max_bytes": sizes[0] + sizes[1], "max_files": 10, "when_full": "drop_oldest"}
    edge = _edge(tmp_path, tiny_model.path, spool_quota=quota)
    inbox = tmp_path / "inbox"
    try:
        for p in small:
            _drop(inbox, p)
            assert wait_until(lambda: f"spooled {p.name}" in edge.log(), 30), edge.log()
        _drop(inbox, big[0])
        assert edge.wait_log("more than the whole spool", 30), edge.log()
    finally:
        assert edge.stop() == 0
    assert _spooled_names(tmp_path / "spool") == ["p0000.png", "p0001.png"]     # nothing dropped for it
    assert (inbox / "rejected" / "b0000.png").read_bytes() == big[0].read_bytes()
    assert "SPOOL FULL" not in edge.log()


def test_camera_names_reused_on_a_new_card_keep_both_originals(tmp_path, tiny_model):
    first, second = make_photos(tmp_path / "card1", 1, prefix="x"), make_photos(tmp_path / "card2", 2, prefix="x")
    edge = _edge(tmp_path, tiny_model.path)
    inbox, sent = tmp_path / "inbox", tmp_path / "sent"
    try:
        _drop(inbox, first[0], "DJI_0001.png")
        assert wait_until(lambda: edge.log().count("spooled DJI_0001.png") == 1, 30), edge.log()
        _drop(inbox, second[1], "DJI_0001.png")     # another photo under the same name
        assert wait_until(lambda: edge.log().count("spooled DJI_0001.png") == 2, 30), edge.log()
    finally:
        assert edge.stop() == 0
    kept = sorted(p.read_bytes() for p in sent.iterdir())
    assert kept == sorted([first[0].read_bytes(), second[1].read_bytes()])
    assert (sent / "DJI_0001.png").read_bytes() == first[0].read_bytes()
