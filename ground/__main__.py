"""python -m ground --config ground.yaml: the ground station daemon."""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground", description="ground station daemon")
    parser.add_argument("--config", required=True, help="ground.yaml")
    parser.add_argument("--validate-config", action="store_true", help="check the config and exit")
    args = parser.parse_args(argv)

    from codec.service.process import LOG_FORMAT, load_config_or_report
    from .config import load
    cfg = load_config_or_report(args.config, load)
    if cfg is None:
        return 2
    if args.validate_config:
        print(f"{args.config}: ok")
        return 0
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT)
    from codec.errors import CodecError
    from .daemon import GroundDaemon, install_signal_handlers
    try:
        daemon = GroundDaemon(cfg)
    except (CodecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    install_signal_handlers(daemon)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
