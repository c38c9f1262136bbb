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


def run_daemon(argv, prog: str, description: str, load, start, errors=(OSError,)) -> int:
    """`prog --config FILE [--validate-config]` for the edge service and the ground daemon: exit 2 on a bad
    config, 1 when start(cfg) raises one of `errors` (one line each), else what start returns."""
    import argparse
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--validate-config", action="store_true", help="check the config and exit")
    args = parser.parse_args(argv)
    cfg = load_config_or_report(args.config, load)
    if cfg is None:
        return 2
    if args.validate_config:
        print(f"{args.config}: ok")
        return 0
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT)
    try:
        return start(cfg)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def stop_on_signals(stop: threading.Event, log: logging.Logger, what: str):
    """SIGTERM (systemd stop) and SIGINT set `stop`; the main loop finishes its current step first."""
    def handler(signum, frame):
        log.info("signal %d: stopping after the current %s", signum, what)
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
