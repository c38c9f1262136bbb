"""The command line as users run it: real files, real subprocesses, exit codes and one-line errors."""
import json
import subprocess
import sys

import pytest
from PIL import ExifTags, Image

from tests.conftest import PROJECT_ROOT, synthetic_image

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" '
       b'drone-dji:GimbalPitchDegree="-12.30" drone-dji:GimbalYawDegree="+97.10"/></rdf:RDF></x:xmpmeta>')


def run(*args, model=None):
    cmd = [sys.executable, "-m", "codec", *map(str, args)]
    if model is not None:
        cmd += ["--model", str(model)]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def one_line_error(result):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def drone_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "DJI_0001.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "DJI"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (55.0, 41.0, 12.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (12.0, 5.0, 30.25)
    Image.fromarray(synthetic_image(120, 200)).save(path, exif=exif, xmp=XMP, quality=98)
    return path


@pytest.mark.parametrize("ext", ["png", "tif", "jpg"])
def test_compress_decompress_keeps_gps_and_gimbal(tmp_path, drone_jpeg, tiny_model, ext):
    bits = tmp_path / "a.nlic"
    r = run("compress", drone_jpeg, "-o", bits, "--lambda", "500", "--tile", "128", model=tiny_model.path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f"a.{ext}"
    r = run("decompress", bits, "-o", out, "--threads", "2", model=tiny_model.path)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.size == (200, 120)
        gps = im.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert gps[ExifTags.GPS.GPSLatitude] == (55.0, 41.0, 12.5)
        assert gps[ExifTags.GPS.GPSLongitude] == (12.0, 5.0, 30.25)
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
        xmp = xmp.encode() if isinstance(xmp, str) else xmp
        assert b'GimbalPitchDegree="-12.30"' in xmp


def test_info_prints_the_header(tmp_path, drone_jpeg, tiny_model):
    bits = tmp_path / "a.nlic"
    assert run("compress", drone_jpeg, "-o", bits, "--lambda", "64", "--tile", "128",
               model=tiny_model.path).returncode == 0
    r = run("info", bits)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["width"], info["height"], info["levels"]) == (200, 120, tiny_model.cfg.levels)
    assert info["model_id"] == tiny_model.model_id.hex()
    assert info["bytes"] == bits.stat().st_size
    assert info["metadata"]["xmp"] == len(XMP)


def test_byte_budget_is_met(tmp_path, default_model):
    src = tmp_path / "p.png"
    Image.fromarray(synthetic_image(256, 384, seed=11)).save(src)
    bits = tmp_path / "b.nlic"
    lo = run("compress", src, "-o", bits, "--lambda", "64")
    hi = run("compress", src, "-o", bits, "--lambda", "8192")
    assert lo.returncode == 0 and hi.returncode == 0
    small = int(lo.stdout.split(": ")[1].split()[0])
    large = int(hi.stdout.split(": ")[1].split()[0])
    budget = (small + large) // 2
    r = run("compress", src, "-o", bits, "--bytes", str(budget))
    assert r.returncode == 0, r.stderr
    size = bits.stat().st_size
    assert 0.97 * budget <= size <= budget
    r = run("compress", src, "-o", bits, "--bpp", f"{8 * budget / (256 * 384):.6f}")
    assert r.returncode == 0, r.stderr
    assert 0.97 * budget <= bits.stat().st_size <= budget + 1


@pytest.mark.parametrize("args, fragment", [
    (["compress", "missing.png", "-o", "x.nlic", "--lambda", "100"], "no such file"),
    (["compress", "{src}", "-o", "x.nlic", "--lambda", "5"], "outside"),
    (["compress", "{src}", "-o", "x.nlic", "--bytes", "10"], "budget"),
    (["compress", "{src}", "-o", "x.nlic", "--lambda", "100", "--threads", "0"], "thread"),
    (["decompress", "{src}", "-o", "y.png"], "magic"),
    (["decompress", "{bad}", "-o", "y.png"], "truncated"),
    (["decompress", "{bits}", "-o", "y.gif"], "not supported"),
    (["compress", "{src}", "-o", "x.nlic", "--lambda", "100", "--model", "{src}"], "not a valid model"),
    (["info", "{src}"], "magic"),
    (["compress", "{src}", "-o", "/nonexistent/dir/x.nlic", "--lambda", "100"], "cannot write"),
    (["compress", "{src}", "-o", "x.nlic", "--bpp", "inf"], "positive number"),
    (["export-model", "--weights", "missing.pt", "-o", "m.npz"], "no such file"),
    (["export-model", "--weights", "{src}.pt", "-o", "m.npz"], "not a training checkpoint"),
])
def test_errors_are_one_line(tmp_path, args, fragment):
    src = tmp_path / "p.png"
    Image.fromarray(synthetic_image(40, 40)).save(src)
    bits = tmp_path / "ok.nlic"
    assert run("compress", src, "-o", bits, "--lambda", "100").returncode == 0
    (tmp_path / "bad.nlic").write_bytes(bits.read_bytes()[:-7])
    (tmp_path / "p.png.pt").write_bytes(src.read_bytes())   # a photo named like a checkpoint
    names = {"src": src, "bits": bits, "bad": tmp_path / "bad.nlic"}
    args = [a.format(**names) if "{" in a else a for a in args]
    r = subprocess.run([sys.executable, "-m", "codec", *args], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert fragment in one_line_error(r)


def test_unreadable_image_is_one_line(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    assert "not an image" in one_line_error(run("compress", junk, "-o", tmp_path / "x", "--lambda", "100"))
