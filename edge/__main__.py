"""python -m edge --config edge.yaml        the drone service
   python -m edge encode ...                one-off encoding (edge/encode_cli.py)
"""
from __future__ import annotations

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


def start(cfg) -> int:
    from .service import EdgeService, install_signal_handlers
    service = EdgeService(cfg)
    install_signal_handlers(service)
    return service.run()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "encode":
        return _encode(argv[1:])
    from codec.errors import CodecError
    from codec.service.process import run_daemon
    from .config import load
    return run_daemon(argv, "python -m edge", "drone edge service", load, start, (CodecError, RuntimeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
