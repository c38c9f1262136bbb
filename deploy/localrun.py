"""Run the pipeline's processes on this machine: a mosquitto broker on a free loopback port, and the edge
and ground services as child processes. Used by `python -m deploy.local_pipeline` and by the tests.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def write_yaml(path: Path, data: dict) -> Path:
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v
    path.write_text(yaml.safe_dump(plain(data), sort_keys=False))
    return path


class Broker:
    """mosquitto from the Debian package, with persistence, on 127.0.0.1:<port>."""

    def __init__(self, workdir: Path, port: int | None = None, max_packet_size: int | None = None,
                 tls: dict | None = None, password_file: Path | None = None, acl_file: Path | None = None):
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.max_packet_size, self.tls = max_packet_size, tls
        self.password_file, self.acl_file = password_file, acl_file
        self.proc: subprocess.Popen | None = None
        self.conf = self._write_config()

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "per_listener_settings false",
                 "persistence true", f"persistence_location {self.dir}/", "autosave_interval 5",
                 f"log_dest file {self.dir}/mosquitto.log", "log_type error", "log_type warning",
                 "log_type notice", "log_type information", "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")   # otherwise mosquitto drops to a user that cannot read our temp dir
        if self.max_packet_size:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.tls:
            lines += [f"cafile {self.tls['cafile']}", f"certfile {self.tls['certfile']}",
                      f"keyfile {self.tls['keyfile']}"]
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "mosquitto.stderr", "ab"))
        if not wait_port(self.port, timeout):
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on port {self.port}; see {self.dir}/mosquitto.log")
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


class Service:
    """`python -m edge|ground --config FILE` as a child process with its log in a file."""

    def __init__(self, module: str, config: Path, log: Path, env: dict | None = None):
        self.module, self.config, self.log_path = module, Path(config), Path(log)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float, start: int = 0) -> bool:
        """Wait until `text` appears in the log after offset `start` (bounded by time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[start:]:
                return True
            if not self.running():
                return False
            time.sleep(0.05)
        return False


def drop_photo(src: Path, inbox: Path, name: str | None = None) -> Path:
    """Copy a photo into an inbox the way a camera should: the file first, then its .done marker."""
    dst = inbox / (name or src.name)
    shutil.copyfile(src, dst)
    (inbox / (dst.name + ".done")).touch()
    return dst
