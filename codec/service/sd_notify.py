"""systemd's notify protocol over a plain unix datagram socket (no python-systemd dependency).

Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op.
"""
from __future__ import annotations

import os
import socket
import time

WATCHDOG_PERIOD_S = 1.0   # systemd needs a ping within WatchdogSec; more often only fills its queue
_last_ping = 0.0


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # Never block the service on a receiver that is not reading.
            sock.send(message.encode(), socket.MSG_DONTWAIT)
        return True
    except OSError:
        return False  # a missing socket must never stop the service


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def watchdog() -> bool:
    """Called every loop turn; sends at most one ping per WATCHDOG_PERIOD_S."""
    global _last_ping
    now = time.monotonic()
    if now - _last_ping < WATCHDOG_PERIOD_S:
        return False
    _last_ping = now
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
