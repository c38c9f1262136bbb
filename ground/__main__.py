"""python -m ground --config ground.yaml: the ground station daemon."""
from __future__ import annotations

import sys


def start(cfg) -> int:
    from .daemon import GroundDaemon, install_signal_handlers
    daemon = GroundDaemon(cfg)
    install_signal_handlers(daemon)
    return daemon.run()


def main(argv=None) -> int:
    from codec.errors import CodecError
    from codec.service.process import run_daemon
    from .config import load
    return run_daemon(argv, "python -m ground", "ground station daemon", load, start, (CodecError, OSError))


if __name__ == "__main__":
    sys.exit(main())
