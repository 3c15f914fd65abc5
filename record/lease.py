"""One writer per sweep: the ``robustlab.lease`` heartbeat tag on the sweep's parent run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from mlflow.tracking import MlflowClient

from record import schema


class LeaseHeld(RuntimeError):
    """Another launch holds a sweep's lease; the message says who and since when."""


def parse_lease(text: str, skew_s: float) -> dict:
    """A ``robustlab.lease`` tag's value: ``{"holder": "host:pid:id", "since": t, "renewed": t}``, or
    ``{"malformed": why}`` when it is not one or was renewed more than ``skew_s`` in the future."""
    try:
        held = json.loads(text)
    except ValueError:
        return {"malformed": f"is not JSON ({text[:80]!r})"}
    holder = held.get("holder") if isinstance(held, dict) else None
    parts = holder.split(":") if isinstance(holder, str) else []
    times = [held.get(k) if isinstance(held, dict) else None for k in ("since", "renewed")]
    if (len(parts) != 3 or not parts[1].isdigit()
            or not all(type(t) in (int, float) and math.isfinite(t) for t in times)):
        return {"malformed": f"is not a lease ({text[:80]!r})"}
    if held["renewed"] > time.time() + skew_s:
        return {"malformed": f"says it was renewed {held['renewed'] - time.time():.0f} s in the future"}
    return held


class Lease:
    """One writer per sweep: a heartbeat tag on the parent run (``robustlab.lease``), renewed while a launch runs.

    A lease is fresh while its last renewal is younger than ``ttl_s``; a launch
    refuses a sweep whose lease another holder keeps fresh, unless forced (a
    holder on this host whose process is gone holds nothing). A tag that is not
    a lease (anyone with access to the store can set tags), or one renewed more
    than ``ttl_s`` in the future (beyond any clock skew between machines), holds
    nothing either: it is taken over, and said so.
    """

    def __init__(self, client: MlflowClient, sweep_id: str, ttl_s: float = 60.0, renew_s: float = 15.0) -> None:
        self.client, self.sweep_id, self.ttl_s, self.renew_s = client, sweep_id, ttl_s, renew_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def value(self, now: float | None = None) -> str:
        return json.dumps({"holder": self.holder, "since": self.since, "renewed": now or time.time()})

    def current(self) -> dict | None:
        """The recorded lease (holder, since, renewed), ``{"malformed": why}`` for a tag that is none, or None."""
        text = self.client.get_run(self.sweep_id).data.tags.get(schema.TAG_LEASE)
        return parse_lease(text, self.ttl_s) if text else None

    def acquire(self, force: bool = False, settle_s: float = 1.0) -> str | None:
        """Take the lease, or raise :class:`LeaseHeld` naming the holder; a write-then-read settles a race.

        Returns a note for the user when the tag found was no lease (malformed, or renewed in the future): it is
        taken over, ``force`` or not."""
        held, note = self.current(), None
        if held and "malformed" in held:
            note = (f"sweep {self.sweep_id}: its {schema.TAG_LEASE} tag {held['malformed']}, so no launch holds it; "
                    "taken over")
        elif held and not force and held["holder"] != self.holder and self._alive(held):
            raise LeaseHeld(self._describe(held))
        self.client.set_tag(self.sweep_id, schema.TAG_LEASE, self.value())
        time.sleep(settle_s)
        held = self.current()
        if held and "malformed" not in held and held["holder"] != self.holder:
            raise LeaseHeld(self._describe(held))
        return note

    def _alive(self, held: dict) -> bool:
        """Fresh (renewed within ``ttl_s``) and not provably dead: a holder on this host whose process is gone."""
        if time.time() - held["renewed"] >= self.ttl_s:
            return False
        host, pid, _ = held["holder"].split(":")
        if host != socket.gethostname():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: alive
            pass
        return True

    def _describe(self, held: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(held["since"]))
        host, pid, _ = held["holder"].split(":")
        return (f"another launch is running sweep {self.sweep_id} (host {host}, pid {pid}) since {since}; "
                f"its last heartbeat was {time.time() - held['renewed']:.0f} s ago (a lease expires after "
                f"{self.ttl_s:.0f} s)")

    def keep(self, tracking_uri: str, store_there: Callable[[], bool] = lambda: True) -> None:
        """Renew the lease every ``renew_s`` in a daemon thread (its own client) until :meth:`release`, while
        ``store_there()`` (a SQLite file deleted meanwhile is not written to: that would create an empty one)."""
        client = MlflowClient(tracking_uri)

        def renew() -> None:
            while not self._stop.wait(self.renew_s):
                if not store_there():
                    return
                try:
                    client.set_tag(self.sweep_id, schema.TAG_LEASE, self.value())
                except Exception:  # noqa: BLE001 - a store that stopped answering is the launch's to report
                    pass

        self._thread = threading.Thread(target=renew, name="robustlab-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and remove the lease (a later ``--resume`` may start at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            if (self.current() or {}).get("holder") == self.holder:
                self.client.delete_tag(self.sweep_id, schema.TAG_LEASE)
