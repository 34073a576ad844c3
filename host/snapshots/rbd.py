"""Snapshots of VMs whose disks live in Ceph RBD: a group of images (or one image), cut at once.

The quiesced cycle (``host.snapshots.cycle``) drives ``RbdTarget`` exactly as it drives the
engine: ping, a bound freeze, ``create`` (the group snapshot), thaw, ``update`` (the record),
or ``delete`` when the quiesce failed. ``rbd group snap create`` opens every member image,
takes every image's exclusive lock (a VM's librbd, QEMU's included, hands its lock over and
its writes wait), snapshots each image and marks the group snapshot complete; a failure on
the way (an image whose lock another client holds with ``lock_acquire``: EROFS at once)
removes what it made (``src/librbd/api/Group.cc``, ``Group<I>::snap_create``). We pass
``RBD_SNAP_CREATE_SKIP_QUIESCE``: librbd's own quiesce notification would reach nobody in a
QEMU guest (its rbd driver never registers a quiesce watch) and the guest is held by our
agent already. A plain ``snapshot create`` without ``--quiesce`` leaves librbd's notification
on, so that a quiesce watcher (``quiesce-host rbd-watch``, ``rbd-nbd --quiesce``) can act.

The record (the agent's report and artifacts, the host's timeline) is kept in the cluster
(``host.snapshots.rbd_records``), so ``snapshot list|show`` read it back from any host.

``revert`` is a group (or image) rollback. librbd's group rollback takes every image's
exclusive lock too, so it *succeeds* under a running VM and rewrites its disks; we refuse
while any member image has a watcher (a client that has it open read-write: QEMU, rbd-nbd,
a mapped krbd device) or an advisory lock, naming each. It refuses an incomplete group
snapshot too (librbd would roll back the images that have one and leave the others).

Raises: SnapshotNotFound / SnapshotExists (exit 15 / 16), ImageInUse (17), RbdError, and
what ``rbd_cluster`` raises.
"""

from __future__ import annotations

import time
from typing import Any

from agent import protocol
from host.engine.errors import DiskBusy, SnapshotExists, SnapshotNotFound
from host.snapshots.rbd_cluster import (
    Connection,
    RbdError,
    RbdSpec,
    errno_of,
    failed,
    parse_spec,
)
from host.snapshots.rbd_records import Records

EROFS = 30
NAME_MAX = 128


class ImageInUse(DiskBusy):
    """An image of the target is open read-write by another client (a running VM)."""

    code = "ImageInUse"


def check_name(name: str) -> None:
    if not 0 < len(name) <= NAME_MAX or not name.isprintable() or any(c in name for c in "/@:"):
        raise RbdError(f"snapshot name {name!r}: 1-{NAME_MAX} printable characters, no / @ :")


class Subject:
    """A group or one image, and what is done to its snapshots (see the two subclasses)."""

    kind = "?"

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.rbd = conn.rbd

    def images(self) -> list[tuple[Any, str]]:
        """(I/O context, image name) of every image cut by a snapshot."""
        raise NotImplementedError

    def snapshots(self) -> list[dict[str, Any]]:
        """[{name, state, created}] oldest first."""
        raise NotImplementedError

    def create(self, name: str, flags: int) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def rollback(self, name: str) -> None:
        raise NotImplementedError

    def image_snaps(self, ioctx: Any, image: str) -> list[dict[str, Any]]:
        """An image's snapshots with their creation times (UTC), by increasing id."""
        with self.rbd.Image(ioctx, image, read_only=True) as im:
            snaps = sorted(im.list_snaps(), key=lambda s: s["id"])
            for s in snaps:
                s["created"] = im.get_snap_timestamp(s["id"]).strftime("%Y-%m-%dT%H:%M:%SZ")
        return list(snaps)


class GroupSubject(Subject):
    kind = "group"

    def __init__(self, conn: Connection, name: str) -> None:
        super().__init__(conn, name)
        self.group = self.rbd.Group(conn.ioctx, name)

    def images(self) -> list[tuple[Any, str]]:
        return [(self.conn.ioctx_of(i["pool"]), i["name"]) for i in self.group.list_images()]

    def snapshots(self) -> list[dict[str, Any]]:
        complete = self.rbd.RBD_GROUP_SNAP_STATE_COMPLETE
        snaps = {
            s["name"]: {"name": s["name"], "state": "complete" if s["state"] == complete else
                        "incomplete", "created": None}
            for s in self.group.list_snaps()
        }  # fmt: skip
        members = self.images()
        order: list[str] = []
        if members:  # the member's snapshot ids give the order, and the time
            for s in self.image_snaps(*members[0]):
                group = s.get("group") or {}
                if group.get("name") == self.name and group.get("snap_name") in snaps:
                    snaps[group["snap_name"]]["created"] = s["created"]
                    order.append(group["snap_name"])
        rest = [n for n in snaps if n not in order]
        return [snaps[n] for n in order + rest]

    def create(self, name: str, flags: int) -> None:
        self.group.create_snap(name, flags)

    def remove(self, name: str) -> None:
        self.group.remove_snap(name)

    def rollback(self, name: str) -> None:
        self.group.rollback_to_snap(name)


class ImageSubject(Subject):
    kind = "image"

    def images(self) -> list[tuple[Any, str]]:
        return [(self.conn.ioctx, self.name)]

    def snapshots(self) -> list[dict[str, Any]]:
        user = self.rbd.RBD_SNAP_NAMESPACE_TYPE_USER
        return [
            {"name": s["name"], "state": "complete", "created": s["created"]}
            for s in self.image_snaps(self.conn.ioctx, self.name)
            if s.get("namespace", user) == user
        ]

    def create(self, name: str, flags: int) -> None:
        with self.rbd.Image(self.conn.ioctx, self.name) as im:
            im.create_snap(name, flags)

    def remove(self, name: str) -> None:
        with self.rbd.Image(self.conn.ioctx, self.name) as im:
            im.remove_snap(name)

    def rollback(self, name: str) -> None:
        with self.rbd.Image(self.conn.ioctx, self.name) as im:
            im.rollback_to_snap(name)


def resolve(conn: Connection) -> Subject:
    """The group or image the spec names. Raises RbdError when there is none, or both."""
    spec, api = conn.spec, conn.rbd.RBD()
    try:
        groups = set(api.group_list(conn.ioctx)) if spec.kind != "image" else set()
        images = set(api.list(conn.ioctx)) if spec.kind != "group" else set()
    except conn.rbd.Error as err:
        raise failed(spec, "listing the pool's groups and images", err) from err
    found = [k for k, names in (("group", groups), ("image", images)) if spec.name in names]
    if not found:
        what = spec.kind or "group or image"
        raise RbdError(f"{spec}: no {what} {spec.name!r} in pool {spec.pool!r}")
    if len(found) == 2:
        raise RbdError(
            f"{spec}: both a group and an image are named {spec.name!r}; "
            f"add :type=group or :type=image"
        )
    return GroupSubject(conn, spec.name) if found[0] == "group" else ImageSubject(conn, spec.name)


class RbdStore:
    """An open ``rbd:`` target: its connection, what it names, and the records of its snapshots.

    Raises what ``Connection`` and ``resolve`` raise.
    """

    def __init__(self, spec: RbdSpec | str) -> None:
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.conn = Connection(self.spec)
        try:
            self.subject = resolve(self.conn)
        except BaseException:
            self.conn.close()
            raise
        self.records = Records(self.conn, self.subject.kind, self.subject.name)
        self.watched = Records(self.conn, self.subject.kind, self.subject.name, role="watch")
        self.rbd = self.conn.rbd

    def _call(self, step: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.rbd.Error as err:
            raise failed(self.spec, step, err) from err

    def image_names(self) -> list[str]:
        return [name for _, name in self._call("listing the images", self.subject.images)]

    # -- reading --------------------------------------------------------------------------
    def snapshot_list(self) -> list[dict[str, Any]]:
        """Every RBD snapshot of the target, oldest first, each with its record's fields
        (``consistency`` ``unknown`` and ``recorded`` False when it has none). A snapshot
        another tool took while ``rbd-watch`` held the guest gets that quiesce's report."""
        snaps = self._call("listing the snapshots", self.subject.snapshots)
        records, watched = self.records.all(), self.watched.all()
        listed = []
        for snap in snaps:
            record = records.get(snap["name"])
            entry = {"consistency": "unknown", "description": "", **(record or {})}
            quiesce = watched.get(snap["name"])
            if quiesce is not None and not (entry.get("report") or {}).get("agent"):
                entry.update(quiesce, quiesced_by="rbd-watch")
            entry.update(name=snap["name"], state=snap["state"])
            entry["recorded"] = record is not None or quiesce is not None
            entry["created"] = entry.get("created") or snap["created"]
            listed.append(entry)
        return listed

    def snapshot(self, name: str) -> dict[str, Any]:
        """One snapshot's whole record. Raises SnapshotNotFound."""
        for snap in self.snapshot_list():
            if snap["name"] == name:
                return snap
        raise SnapshotNotFound(f"{self.spec}: no snapshot {name!r}")

    # -- writing --------------------------------------------------------------------------
    def snapshot_create(
        self,
        name: str,
        description: str = "",
        consistency: str = "crash",
        *,
        report: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        skip_quiesce: bool = True,
    ) -> dict[str, Any]:
        """Cut every image now and record it. ``skip_quiesce`` leaves out librbd's quiesce
        notification. Raises SnapshotExists, RbdError (EROFS: an image is locked by a client
        that does not hand its lock over)."""
        check_name(name)
        flags = self.rbd.RBD_SNAP_CREATE_SKIP_QUIESCE if skip_quiesce else 0
        images = self.image_names()
        t0 = time.monotonic()
        try:
            self.subject.create(name, flags)
        except (self.rbd.ImageExists, self.rbd.ObjectExists) as err:
            raise SnapshotExists(f"{self.spec}: snapshot {name!r} exists already") from err
        except self.rbd.Error as err:
            raise self._create_failed(name, err) from err
        cut_ms = round((time.monotonic() - t0) * 1000, 3)
        record = {
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "description": description,
            "consistency": consistency,
            "report": report or {},
            "artifacts": artifacts or {},
            "target": str(self.spec),
            "kind": self.subject.kind,
            "images": images,
            "cut_ms": cut_ms,
        }
        try:
            self.records.put(name, record)
        except RbdError:
            self._remove_quietly(name)
            raise
        return record

    def _create_failed(self, name: str, err: BaseException) -> RbdError:
        if errno_of(err) == EROFS:
            return RbdError(
                f"{self.spec}: snapshot {name!r} failed: an image is locked by a client that "
                f"does not hand its exclusive lock over (rbd lock ls / rbd status IMAGE): {err}"
            )
        return failed(self.spec, f"snapshot {name!r}", err)

    def _remove_quietly(self, name: str) -> None:
        try:
            self.subject.remove(name)
        except self.rbd.Error:
            pass

    def snapshot_update(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self.records.update(
            name, {k: v for k, v in fields.items() if k in protocol.RECORD_FIELDS}
        )

    def snapshot_delete(self, name: str) -> None:
        """Remove the snapshot from every image, then its record. Raises SnapshotNotFound."""
        try:
            self.subject.remove(name)
        except (self.rbd.ImageNotFound, self.rbd.ObjectNotFound) as err:
            if self.records.get(name) is None and self.watched.get(name) is None:
                raise SnapshotNotFound(f"{self.spec}: no snapshot {name!r}") from err
        except self.rbd.Error as err:
            raise failed(self.spec, f"deleting snapshot {name!r}", err) from err
        self.records.remove(name)
        self.watched.remove(name)

    def snapshot_revert(self, name: str) -> None:
        """Roll every image back to ``name``. Raises ImageInUse, SnapshotNotFound, RbdError."""
        snap = self.snapshot(name)
        if snap["state"] != "complete":
            raise RbdError(
                f"{self.spec}: snapshot {name!r} is incomplete (its creation was interrupted): "
                "not every image has it; delete it instead"
            )
        busy = self.users()
        if busy:
            raise ImageInUse(
                f"{self.spec}: refusing to roll back while images are open: {'; '.join(busy)}. "
                "RBD would rewrite the disks under the running VM: stop it (and unmap any "
                "rbd-nbd/krbd device) first"
            )
        self._call(f"rolling back to {name!r}", self.subject.rollback, name)

    def users(self) -> list[str]:
        """Who has an image of the target open read-write (watchers) or locked, besides us."""
        own = self.conn.instance_id()
        found = []
        for ioctx, image in self._call("listing the images", self.subject.images):
            try:
                with self.rbd.Image(ioctx, image, read_only=True) as im:
                    watchers = [w for w in im.watchers_list() if w["id"] != own]
                    lockers = im.list_lockers() or {}
            except self.rbd.Error as err:
                raise failed(self.spec, f"reading the watchers of {image!r}", err) from err
            found += [f"{image}: open by client.{w['id']} at {w['addr']}" for w in watchers]
            found += [
                f"{image}: locked by {client} ({cookie}) at {addr}"
                for client, cookie, addr in lockers.get("lockers", [])
            ]
        return found

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RbdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RbdTarget:
    """The quiesced cycle's target for an ``rbd:`` group or image (``cycle.Target``)."""

    kind = "rbd"

    def __init__(self, store: RbdStore) -> None:
        self.store = store

    def create(
        self,
        name: str,
        description: str,
        consistency: str,
        report: dict[str, Any],
        artifacts: dict[str, Any],
        timeout: float,
    ) -> dict[str, Any]:
        """The group snapshot (inside the frozen window), then its first record. The bound
        is the connection's operation timeout; the agent's ceiling covers the rest."""
        t0 = time.monotonic()
        snap = self.store.snapshot_create(
            name, description, consistency, report=report, artifacts=artifacts
        )
        total = round((time.monotonic() - t0) * 1000, 3)
        return {"snapshot": snap, "switch_ms": total, "cut_ms": snap["cut_ms"],
                "images": len(snap["images"])}  # fmt: skip

    def update(self, name: str, fields: dict[str, Any]) -> None:
        self.store.snapshot_update(name, fields)

    def delete(self, name: str) -> str | None:
        """Take the snapshot back; the reason when the cluster refuses."""
        try:
            self.store.snapshot_delete(name)
        except RbdError as err:
            return str(err)
        return None

    def close(self) -> None:
        self.store.close()


def open_rbd(spec: str) -> RbdTarget:
    """The cycle's target for ``rbd:POOL/GROUP`` or ``rbd:POOL/IMAGE``, connected and resolved
    before any freeze. Raises CephUnavailable, ClusterUnreachable, RbdError."""
    return RbdTarget(RbdStore(spec))


__all__ = ["ImageInUse", "RbdStore", "RbdTarget", "check_name", "open_rbd"]
