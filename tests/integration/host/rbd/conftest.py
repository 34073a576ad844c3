"""The throw-away Ceph cluster and what the rbd: tests build on it (tests/helpers/ceph.py).

One cluster serves the whole session (mon + mgr + one memstore OSD on 127.0.0.1, ready in
2-5 s); each test makes its own images and group with names of its own and removes them
after, so that the OSD's memory does not grow with the suite. Without Ceph on the machine
these tests skip, and fail under QUIESCE_REQUIRE_SERVERS=1 (CI: scripts/setup installs it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agentproc import AgentProcess
from tests.helpers.ceph import Cluster, missing
from tests.helpers.env import need

MiB = 1 << 20


@pytest.fixture(scope="session")
def ceph() -> Iterator[Cluster]:
    why = missing()
    need(why is None, f"the throw-away Ceph cluster cannot run here: {why}")
    cluster = Cluster().start()
    yield cluster
    cluster.stop()


class Vm:
    """A group of images in the cluster's pool, as a VM on Ceph has them."""

    def __init__(self, cluster: Cluster, admin: Any, images: int, size: int) -> None:
        import rbd

        self.rbd = rbd
        self.cluster = cluster
        self.ioctx = admin.open_ioctx(cluster.pool)
        tag = uuid.uuid4().hex[:6]
        self.group = f"vm-{tag}"
        self.images = [f"{self.group}-disk{i}" for i in range(images)]
        api = rbd.RBD()
        for name in self.images:
            api.create(self.ioctx, name, size)
        api.group_create(self.ioctx, self.group)
        group = rbd.Group(self.ioctx, self.group)
        for name in self.images:
            group.add_image(self.ioctx, name)

    def spec(self, name: str | None = None) -> str:
        """``rbd:POOL/NAME:conf=...`` of the group (or of one image)."""
        return f"rbd:{self.cluster.pool}/{name or self.group}:conf={self.cluster.conf}"

    def group_snaps(self) -> list[str]:
        return [s["name"] for s in self.rbd.Group(self.ioctx, self.group).list_snaps()]

    def image_snaps(self, image: str) -> list[str]:
        with self.rbd.Image(self.ioctx, image, read_only=True) as im:
            return [s["name"] for s in im.list_snaps()]

    def remove(self) -> None:
        api = self.rbd.RBD()
        api.group_remove(self.ioctx, self.group)  # removes its snapshots too
        for name in self.images:
            with self.rbd.Image(self.ioctx, name) as im:
                for s in list(im.list_snaps()):
                    if s.get("namespace", 0) == self.rbd.RBD_SNAP_NAMESPACE_TYPE_USER:
                        im.remove_snap(s["name"])
            api.remove(self.ioctx, name)
        self.ioctx.close()


@pytest.fixture
def make_vm(ceph: Cluster) -> Iterator[Callable[..., Vm]]:
    """Factory: ``make_vm(images=3, size=64 MiB)``; removed (snapshots and all) afterwards."""
    admin = ceph.client()
    made: list[Vm] = []

    def factory(images: int = 3, size: int = 64 * MiB) -> Vm:
        vm = Vm(ceph, admin, images, size)
        made.append(vm)
        return vm

    yield factory
    for vm in made:
        vm.remove()
    admin.shutdown()


@pytest.fixture
def agent_factory(short_tmp: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: ``agent_factory({...config...})`` starts a real agent; stopped afterwards."""
    started: list[AgentProcess] = []

    def factory(config: dict[str, Any], name: str = "a") -> AgentProcess:
        workdir = short_tmp / name
        workdir.mkdir(exist_ok=True)
        agent = AgentProcess(workdir, config)
        started.append(agent)
        return agent.start()

    yield factory
    for agent in started:
        agent.stop()
