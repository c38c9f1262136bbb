"""Start-up and shutdown shared by the long-running commands (edge service, ground daemon, refinement jobs)."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from .config_file import ConfigError

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def load_config_or_report(path, load):
    """The validated config, or None after one line on stderr (callers exit with status 2)."""
    try:
        return load(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def stop_on_signals(stop: threading.Event, log: logging.Logger, what: str):
    """SIGTERM (systemd stop) and SIGINT set `stop`; the main loop finishes its current step first."""
    def handler(signum, frame):
        log.info("signal %d: stopping after the current %s", signum, what)
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
