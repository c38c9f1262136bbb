"""Archival refinement jobs on a real archive and SQLite catalog: originals matched, reconstruction as the
fallback, standard bitstreams written beside the archived ones, and a crashed job resumed."""
import hashlib
import json
import threading

from PIL import Image

from codec import api
from codec.imageio import Photo
from ground.archive import Archive
from ground.catalog import Catalog
from ground.refinement_jobs import JobQueue, RefinementSettings, run
from tests.conftest import synthetic_image


def archive_photos(tmp_path, model, n=3, ids=None, capture_time=None):
    archive, catalog = Archive(tmp_path / "archive"), Catalog(tmp_path / "catalog.sqlite")
    originals = []
    for i in range(n):
        pixels = synthetic_image(64, 80, seed=20 + i)
        enc = api.compress(model, Photo(pixels), 120, tile_px=128)
        recon = api.decompress(model, enc.data)
        image_id = ids[i] if ids else f"img{i:03d}"
        folder = archive.folder("site1", "drone1", "2026-11-22")
        row = {"drone": "drone1", "image_id": image_id, "site": "site1", "sha256": "0" * 64, "bytes": len(enc.data),
               "width": 80, "height": 64, "lambda_index": 120, "lambda": 0.0, "bpp": 0.0,
               "model_id": model.model_id.hex(), "capture_time": capture_time, "name": f"DJI_{i:04d}.JPG",
               "ground_id": "g", "t_archived": 0.0}
        row.update(archive.write(folder, image_id, enc.data, recon, {"image_id": image_id}))
        assert catalog.add(row)
        originals.append(pixels)
    catalog.close()
    return tmp_path / "catalog.sqlite", originals


def test_refines_from_originals_and_reconstructions(tmp_path, tiny_model):
    catalog, originals = archive_photos(tmp_path, tiny_model)
    synced = tmp_path / "card"
    synced.mkdir()
    Image.fromarray(originals[0]).save(synced / "img000.png")        # matched by image id
    Image.fromarray(originals[1]).save(synced / "DJI_0001.png")      # matched by the original file name
    settings = RefinementSettings(originals=synced, steps=6, time_budget_s=60)
    run(catalog, tiny_model, settings, threading.Event(), once=True)
    rows = {r["image_id"]: r for r in JobQueue(catalog).rows()}
    assert [rows[k]["state"] for k in sorted(rows)] == ["done"] * 3
    assert [rows[k]["source"] for k in sorted(rows)] == ["original", "original", "reconstruction"]
    for image_id, r in rows.items():
        data = open(r["refined_path"], "rb").read()
        assert len(data) == r["bytes_after"]
        assert api.decompress(tiny_model, data).pixels.shape == (64, 80, 3)
        assert r["loss_after"] <= r["loss_before"]
        sidecar = json.loads(open(r["refined_path"].replace(".refined.nlic", ".json")).read())
        assert sidecar["refinement"]["source"] == r["source"]
        assert sidecar["image_id"] == image_id


def test_an_original_is_found_by_its_content_and_another_flights_namesake_is_not_used(tmp_path, tiny_model):
    """The edge names a photo by its file's SHA-256; cameras reuse DJI_0001 on every card."""
    synced = tmp_path / "card"
    synced.mkdir()
    Image.fromarray(synthetic_image(64, 80, seed=20)).save(synced / "renamed_by_the_operator.png")
    content_id = hashlib.sha256((synced / "renamed_by_the_operator.png").read_bytes()).hexdigest()[:32]
    catalog, _ = archive_photos(tmp_path, tiny_model, n=2, ids=[content_id, "b" * 32],
                                capture_time="2026-05-04T10:11:12")
    other_flight = Image.Exif()
    other_flight[0x0132] = "2026:06:01 09:00:00"
    Image.fromarray(synthetic_image(64, 80, seed=99)).save(synced / "DJI_0001.jpg", exif=other_flight)
    run(catalog, tiny_model, RefinementSettings(originals=synced, steps=2, time_budget_s=60), threading.Event(),
        once=True)
    rows = {r["image_id"]: r for r in JobQueue(catalog).rows()}
    assert rows[content_id]["source"] == "original"
    assert rows[content_id]["source_path"].endswith("renamed_by_the_operator.png")
    assert rows["b" * 32]["source"] == "reconstruction"      # same name, taken on another day: not this photo


def test_a_job_left_running_by_a_dead_process_is_resumed(tmp_path, tiny_model):
    catalog, _ = archive_photos(tmp_path, tiny_model, n=2)
    queue = JobQueue(catalog)
    queue.sync()
    job = queue.claim()                     # this process "dies" holding the job
    assert job is not None
    assert {r["state"] for r in queue.rows()} == {"running", "pending"}
    run(catalog, tiny_model, RefinementSettings(steps=4, time_budget_s=60), threading.Event(), once=True)
    rows = {r["image_id"]: r for r in JobQueue(catalog).rows()}
    assert all(r["state"] == "done" for r in rows.values())
    assert rows[job["image_id"]]["attempts"] == 2
    assert sum(r["attempts"] for r in rows.values()) == 3   # the other photo was refined once


def test_model_mismatch_fails_the_job_with_a_reason(tmp_path, tiny_model, default_model):
    catalog, _ = archive_photos(tmp_path, tiny_model, n=1)
    run(catalog, default_model, RefinementSettings(steps=2), threading.Event(), once=True)
    (row,) = JobQueue(catalog).rows()
    assert row["state"] == "failed" and "archived with model" in row["error"]


def _ground_yaml(tmp_path, model, catalog, steps, budget):
    import yaml
    path = tmp_path / "ground.yaml"
    path.write_text(yaml.safe_dump({"model": str(model.path), "state_dir": str(tmp_path / "state"),
                                    "archive": str(tmp_path / "archive"), "catalog": str(catalog),
                                    "refinement": {"steps": steps, "time_budget_s": budget}}))
    return path


def test_killed_refinement_process_resumes_where_it_stopped(tmp_path, tiny_model):
    import subprocess
    import sys
    import time
    from tests.conftest import PROJECT_ROOT

    catalog, _ = archive_photos(tmp_path, tiny_model, n=2)
    slow = _ground_yaml(tmp_path, tiny_model, catalog, steps=10 ** 6, budget=120)
    cmd = [sys.executable, "-m", "ground.refinement_jobs", "--config", str(slow), "--once"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(r["state"] == "running" for r in JobQueue(catalog).rows()):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.kill()
    proc.wait(timeout=30)
    killed = [r for r in JobQueue(catalog).rows() if r["state"] == "running"]
    assert len(killed) == 1
    fast = _ground_yaml(tmp_path, tiny_model, catalog, steps=4, budget=60)
    r = subprocess.run([*cmd[:4], str(fast), "--once"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {row["image_id"]: row for row in JobQueue(catalog).rows()}
    assert all(row["state"] == "done" for row in rows.values())
    assert rows[killed[0]["image_id"]]["attempts"] == 2
    assert "resuming refinement jobs" in r.stderr
