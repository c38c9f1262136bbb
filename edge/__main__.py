"""python -m edge --config edge.yaml        the drone service
   python -m edge encode ...                one-off encoding (edge/encode_cli.py)
"""
from __future__ import annotations

import argparse
import logging
import sys


def _encode(argv) -> int:
    try:
        from .encode_cli import main as encode_main
    except ModuleNotFoundError as e:
        if e.name != "edge.encode_cli":
            raise
        print("error: `python -m edge encode` is not available in this build (edge/encode_cli.py is missing)",
              file=sys.stderr)
        return 2
    return encode_main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "encode":
        return _encode(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m edge", description="drone edge service")
    parser.add_argument("--config", required=True, help="edge.yaml")
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
    from .service import EdgeService, install_signal_handlers
    try:
        service = EdgeService(cfg)
    except (CodecError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    install_signal_handlers(service)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
