"""The systemd notify protocol, as sd_notify(3) documents it: datagrams of `KEY=value` lines on the unix socket
named by $NOTIFY_SOCKET (a leading `@` means Linux's abstract namespace).

    READY=1      after the engine is loaded and Redis answered (Type=notify)
    WATCHDOG=1   every WatchdogSec/2 while the loops make progress (WatchdogSec=, $WATCHDOG_USEC)
    STATUS=...   the one-line summary, shown by `systemctl status`
    STOPPING=1   when a warm stop begins

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # ping twice per watchdog period, as sd_watchdog_enabled(3) advises
        self.watchdog_every_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:  # systemd gone or socket not ours: the worker goes on
            log.debug("sd_notify %s failed: %s", lines[0] if lines else "", exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
