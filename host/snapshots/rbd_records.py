"""Where an ``rbd:`` snapshot's record lives: one RADOS object per group or image, in its pool.

The record is what ``snapshot show`` prints: name, time, description, consistency, the agent's
report and the artifacts (PostgreSQL's ``backup_label``, MariaDB's binlog position), the host's
timeline. It has to be readable from any host that can reach the cluster, so it is kept in the
cluster, next to the images, as one omap entry per snapshot on the object
``quiesce-host.snapshots.<kind>.<name>`` of the target's pool and namespace (and
``quiesce-host.watch.<kind>.<name>`` for what ``rbd-watch`` recorded):

- a group has no metadata of its own in this librbd (python3-rbd 16.2's ``Group`` has no
  ``metadata_*``), and image metadata would have to be copied onto every member or pinned to
  one that may leave the group;
- an omap entry is written atomically, one per snapshot, so the cycle's ``update`` after the
  thaw replaces one record without reading or rewriting the others;
- the caps every RBD client has (``profile rbd``) read and write objects of the pool, so the
  host that reads a record needs no more than the one that wrote it.

The RBD snapshots are the truth: a record whose snapshot is gone (deleted by another tool)
is ignored and removed by ``delete``; a snapshot with no record (taken by another tool) lists
as ``unknown``. Renaming the group or image orphans its records. They do not roll back with
the images (a rollback keeps every record).

Raises RbdError naming the object and the step.
"""

from __future__ import annotations

import json
from typing import Any

from host.snapshots.rbd_cluster import Connection, RbdError

OBJECT_PREFIX = "quiesce-host."
ROLES = ("snapshots", "watch")  # what quiesce-host snapshot create wrote; what rbd-watch did
MAX_RECORDS = 4096  # far above RBD's own limits per image


def object_name(kind: str, name: str, role: str = "snapshots") -> str:
    return f"{OBJECT_PREFIX}{role}.{kind}.{name}"


class Records:
    """The records of one group's or image's snapshots: those ``snapshot create`` keeps
    (``snapshots``), or the quiesces ``rbd-watch`` did for snapshots others took (``watch``:
    an object of its own, so that neither writer ever replaces the other's entry)."""

    def __init__(self, conn: Connection, kind: str, name: str, role: str = "snapshots") -> None:
        assert role in ROLES
        self.conn = conn
        self.oid = object_name(kind, name, role)

    def _fail(self, step: str, err: BaseException) -> RbdError:
        return RbdError(f"{self.conn.spec}: {step} of the record object {self.oid!r}: {err}")

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record by snapshot name ({} when none was ever written)."""
        rados = self.conn.rados
        try:
            with rados.ReadOpCtx() as op:
                entries, _ = self.conn.ioctx.get_omap_vals(op, "", "", MAX_RECORDS)
                self.conn.ioctx.operate_read_op(op, self.oid)
                raw = dict(entries)
        except rados.ObjectNotFound:
            return {}
        except rados.Error as err:
            raise self._fail("reading", err) from err
        return {key: self._decode(key, value) for key, value in raw.items()}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.all().get(name)

    def _decode(self, key: str, value: bytes) -> dict[str, Any]:
        try:
            record = json.loads(value)
        except ValueError as err:
            raise RbdError(
                f"{self.conn.spec}: the record of snapshot {key!r} in {self.oid!r} is not "
                f"JSON ({err}); remove it with: rados -p POOL rmomapkey {self.oid} {key}"
            ) from err
        if not isinstance(record, dict):
            raise RbdError(f"{self.conn.spec}: the record of snapshot {key!r} is not an object")
        return record

    def put(self, name: str, record: dict[str, Any]) -> None:
        """Write (or replace) one snapshot's record, atomically."""
        rados = self.conn.rados
        value = json.dumps(record, sort_keys=True).encode()
        try:
            with rados.WriteOpCtx() as op:
                self.conn.ioctx.set_omap(op, (name,), (value,))
                self.conn.ioctx.operate_write_op(op, self.oid)
        except rados.Error as err:
            raise self._fail(f"writing snapshot {name!r}", err) from err

    def update(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge ``fields`` into the record (made if missing); the record as written."""
        record = dict(self.get(name) or {"name": name})
        record.update(fields)
        self.put(name, record)
        return record

    def remove(self, *names: str) -> None:
        """Drop the records of ``names`` (missing ones are fine)."""
        if not names:
            return
        rados = self.conn.rados
        try:
            with rados.WriteOpCtx() as op:
                self.conn.ioctx.remove_omap_keys(op, tuple(names))
                self.conn.ioctx.operate_write_op(op, self.oid)
        except rados.ObjectNotFound:
            return
        except rados.Error as err:
            raise self._fail(f"removing {', '.join(names)}", err) from err


__all__ = ["OBJECT_PREFIX", "Records", "object_name"]
