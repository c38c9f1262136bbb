"""The main job: one command runs broker, ground and edge over a folder and prints the per-photo table."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import PROJECT_ROOT as ROOT
from tests.deploy.harness import make_photos


def test_local_pipeline_prints_every_photo_and_stops_cleanly(tmp_path, tiny_model):
    photos = make_photos(tmp_path / "photos", 4, h=64, w=96)
    r = subprocess.run([sys.executable, "-m", "deploy.local_pipeline", "--photos", str(tmp_path / "photos"),
                        "--model", str(tiny_model.path), "--keep", str(tmp_path / "run"), "--timeout", "120"],
                       capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in photos:
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(p.name))
        size, nbytes, bpp, psnr, latency = line.split()[1:6]
        assert size == "96x64" and int(nbytes) > 0 and float(bpp) > 0 and float(psnr) > 0 and float(latency) > 0
    assert re.search(r"4 photos in [\d.]+ s: [\d.]+ photos/min; mean latency \d+ ms = encode", r.stdout)
    assert r.stdout.rstrip().endswith("stopped cleanly")
    assert not list((tmp_path / "run" / "spool").glob("*.nlic"))


def test_local_pipeline_refuses_a_missing_folder_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "deploy.local_pipeline", "--photos", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "no such folder" in r.stderr
