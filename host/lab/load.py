"""The demo's insert load: paced single-row inserts into ``demo_rows`` of the lab's
PostgreSQL and MariaDB, each row with its send and acknowledgement times, and the table it
goes into. The demo judges a snapshot by these rows; the benchmark times the inserts. A lab
is anything with the two servers as ``pg`` and ``maria`` (``Databases``): the local lab's
(host.lab.local), or the VM lab's reached through forwarded ports (host.lab.forwarded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Server(Protocol):
    """What the load and the verdict use of a database server."""

    def connect(self) -> Any: ...
    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]: ...


class Databases(Protocol):
    """A lab's two servers."""

    @property
    def pg(self) -> Server: ...
    @property
    def maria(self) -> Server: ...


class InsertLoad:
    """Paced single-row inserts into ``demo_rows``, each with its send and ack times."""

    def __init__(
        self, name: str, connect: Callable[[], Any], insert: str, rate: float = 200.0
    ) -> None:
        self.name = name
        self.connect = connect
        self.insert = insert
        self.interval = 1.0 / rate
        self.rows: list[tuple[int, float, float]] = []  # (id, sent, acknowledged)
        self.sent: dict[int, float] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"load-{name}", daemon=True)

    def start(self) -> InsertLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _loop(self) -> None:
        try:
            conn = self.connect()
        except Exception as err:  # noqa: BLE001 - shown in the demo's output
            self.error = f"connect: {err}"
            return
        next_at, i = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                i += 1
                sent = time.monotonic()
                self.sent[i] = sent
                conn.cursor().execute(self.insert, (i,))
                self.rows.append((i, sent, time.monotonic()))
                next_at = max(next_at + self.interval, time.monotonic() - 1.0)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        except Exception as err:  # noqa: BLE001 - shown in the demo's output
            self.error = f"insert {i}: {err}"
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def latencies(self, start: float, end: float) -> list[float]:
        """Latencies (ms) of the inserts sent within [start, end)."""
        return [(a - s) * 1000 for _, s, a in self.rows if start <= s < end]


def create_tables(lab: Databases) -> None:
    lab.pg.sql("CREATE TABLE demo_rows (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
    lab.maria.sql("CREATE DATABASE demo")
    lab.maria.sql(
        "CREATE TABLE demo.demo_rows (id bigint PRIMARY KEY, "
        "at timestamp(6) DEFAULT current_timestamp(6)) ENGINE=InnoDB"
    )


def start_loads(lab: Databases, rate: float = 200.0) -> list[InsertLoad]:
    return [
        InsertLoad(
            "PostgreSQL", lab.pg.connect, "INSERT INTO demo_rows (id) VALUES (%s)", rate
        ).start(),
        InsertLoad(
            "MariaDB", lab.maria.connect, "INSERT INTO demo.demo_rows (id) VALUES (%s)", rate
        ).start(),
    ]


def present_ids(lab: Databases) -> dict[str, set[int]]:
    return {
        "PostgreSQL": {int(r[0]) for r in lab.pg.sql("SELECT id FROM demo_rows")},
        "MariaDB": {int(r[0]) for r in lab.maria.sql("SELECT id FROM demo.demo_rows")},
    }
