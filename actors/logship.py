"""Every actor's log records, shipped to the dashboard actor for its live log view.

A logging handler keeps INFO-and-above records in a bounded buffer; a daemon thread
sends what has gathered every half second as one fire-and-forget call
(``dashboard.logs.remote(batch)``). When the dashboard is not running, the newest
records wait in the buffer (its size is the bound) and older ones are dropped: logging
never blocks, never fails and never grows without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from astr_ray.logbook import session_of

__all__ = ["DASHBOARD", "ship_logs"]

DASHBOARD = "dashboard"
_installed: dict[str, Any] = {}


class LogShipper(logging.Handler):
    def __init__(self, component: str, namespace: str, keep: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.component = component
        self.namespace = namespace
        self._buffer: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._handle: Any = None
        self._looked_up = 0.0
        self._sending = threading.local()
        threading.Thread(target=self._run, name="astr-log-shipper", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False) or record.name.startswith("ray"):
            return  # Ray's own chatter, or something logged while we ship
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        item = {
            "time": record.created,
            "level": record.levelname,
            "actor": self.component,
            "logger": record.name,
            "message": message[:4000],
            "session": session_of(message),
        }
        with self._lock:
            self._buffer.append(item)

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                batch = list(self._buffer)
                self._buffer.clear()
            if batch and not self._send(batch):
                with self._lock:  # keep them for the next try (the deque drops the oldest)
                    self._buffer.extendleft(reversed(batch))

    def _send(self, batch: list[dict[str, Any]]) -> bool:
        import ray

        self._sending.active = True
        try:
            if self._handle is None:
                if time.monotonic() - self._looked_up < 5:
                    return False
                self._looked_up = time.monotonic()
                self._handle = ray.get_actor(DASHBOARD, namespace=self.namespace)
            self._handle.logs.remote(batch)
            return True
        except Exception:
            self._handle = None  # not running (yet), or restarting: look again later
            return False
        finally:
            self._sending.active = False


def ship_logs(component: str, namespace: str) -> None:
    """Send this process's log records to the dashboard (once per process)."""
    if component in _installed:
        return
    handler = LogShipper(component, namespace)
    logging.getLogger().addHandler(handler)
    _installed[component] = handler
