"""``--point-timeout``: a watchdog thread that stops a point running too long (and opens a long point's run)."""

from __future__ import annotations

import ctypes
import os
import threading
#: Seconds after which a long point's run opens RUNNING (it then shows in the MLflow UI while it trains).
OPEN_AFTER_S = 2.0


class PointTimeout(TimeoutError):
    """A point ran longer than ``--point-timeout``."""


class Watchdog:
    """Fails the point running in this thread once it has run ``timeout`` seconds (and calls ``on_long``, if
    given, once it has run ``long_after`` seconds).

    It raises :class:`PointTimeout` in the point's thread (Python code stops at
    its next line); a point stuck in native code for a further ``grace``
    seconds has its run marked FAILED and its worker process ended (the Ray
    trial then errors, and the launch reports it).
    """

    def __init__(self, timeout: float | None, on_stuck, grace: float = 30.0, on_long=None,
                 long_after: float = OPEN_AFTER_S) -> None:
        self.timeout, self.on_stuck, self.grace = timeout, on_stuck, grace
        self.on_long, self.long_after = on_long, long_after
        self._thread_id = threading.get_ident()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> "Watchdog":
        if self.timeout is not None or self.on_long is not None:
            threading.Thread(target=self._watch, name="robustlab-point-timeout", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done.set()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)  # none pending

    def _watch(self) -> None:
        waited = 0.0
        if self.on_long is not None:
            waited = self.long_after if self.timeout is None else min(self.long_after, self.timeout)
            if self._done.wait(waited):
                return
            try:
                self.on_long()
            except Exception:  # noqa: BLE001 - the point's end writes its run (or reports a store that is gone)
                pass
            if self.timeout is None:
                return
        if self._done.wait(self.timeout - waited):
            return
        with self._lock:
            if self._done.is_set():
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(PointTimeout))
        if not self._done.wait(self.grace):
            self.on_stuck(PointTimeout(f"the point ran longer than --point-timeout {self.timeout:g} s and did not "
                                       f"stop within {self.grace:g} s more (stuck in native code)"))
            os._exit(70)

