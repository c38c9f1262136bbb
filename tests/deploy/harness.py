"""A whole pipeline in a temp folder for tests: real mosquitto, real edge and ground processes, real SQLite."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from PIL import Image

from deploy.localrun import Broker, Service, drop_photo, write_yaml
from tests.conftest import synthetic_image


def make_photos(folder: Path, n: int, h: int = 48, w: int = 64, prefix: str = "p") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:04d}.png"
        Image.fromarray(synthetic_image(h, w, seed=i)).save(p)
        paths.append(p)
    return paths


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class Pipeline:
    def __init__(self, root: Path, model_path: Path, broker: dict | None = None, edge: dict | None = None,
                 ground: dict | None = None):
        self.root = root
        self.broker = Broker(root / "broker", **(broker or {}))
        self.state, self.archive = root / "ground-state", root / "archive"
        self.inbox, self.spool = root / "inbox", root / "spool"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.model_path = model_path
        self.edge_cfg = write_yaml(root / "edge.yaml", _merge({
            "model": model_path, "inbox": self.inbox, "spool": self.spool, "processed": root / "sent",
            "backend_order": ["torch"],
            "poll_interval_s": 0.05, "rate": {"lambda_index": 128},
            "transfer": {"ack_timeout_s": 4, "max_inflight_photos": 8},
            "mqtt": {"port": self.broker.port, "connect_wait_s": 5}}, edge or {}))
        self.ground_overrides = ground or {}
        self.grounds: dict[str, Service] = {}
        self.edge: Service | None = None

    def start_ground(self, name: str = "ground-1", env: dict | None = None) -> Service:
        cfg = write_yaml(self.root / f"{name}.yaml", _merge({
            "ground_id": name, "model": self.model_path, "state_dir": self.state, "archive": self.archive,
            "partial_expiry_s": 120, "mqtt": {"port": self.broker.port, "connect_wait_s": 5}},
            self.ground_overrides))
        self.grounds[name] = Service("ground", cfg, self.root / f"{name}.log", env).start()
        return self.grounds[name]

    def start_edge(self, env: dict | None = None) -> Service:
        self.edge = Service("edge", self.edge_cfg, self.root / "edge.log", env).start()
        return self.edge

    def drop(self, photos) -> None:
        for p in photos:
            drop_photo(p, self.inbox)

    def rows(self) -> list[dict]:
        db = self.state / "catalog.sqlite"
        if not db.exists():
            return []
        con = sqlite3.connect(str(db), timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM images")]
        except sqlite3.OperationalError:
            return []   # the table is not created yet
        finally:
            con.close()

    def wait_archived(self, n: int, timeout: float) -> int:
        wait_until(lambda: len(self.rows()) >= n, timeout, 0.2)
        return len(self.rows())

    def spool_entries(self) -> list[Path]:
        return sorted(self.spool.glob("*.nlic")) if self.spool.exists() else []

    def stop(self):
        codes = {}
        if self.edge:
            codes["edge"] = self.edge.stop()
        for name, g in self.grounds.items():
            codes[name] = g.stop()
        self.broker.stop()
        return codes

    def logs(self) -> str:
        parts = [f"--- {n} ---\n{g.log()[-4000:]}" for n, g in self.grounds.items()]
        if self.edge:
            parts.append(f"--- edge ---\n{self.edge.log()[-4000:]}")
        return "\n".join(parts)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
