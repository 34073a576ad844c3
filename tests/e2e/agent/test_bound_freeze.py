"""A freeze bound to its connection (DESIGN.md, freeze cycle step 7), over the unix socket:
the connection closing before the thaw undoes it at once; an unbound freeze outlives its
connection; a thaw on the same connection keeps it; ``skip`` leaves a writer out."""

from __future__ import annotations

import socket

import pytest

from agent import protocol
from tests.helpers.freeze import frozen_now
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.root


def test_closing_the_connection_of_a_bound_freeze_aborts_it_at_once(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    with protocol.Client(protocol.Endpoint("unix", path=agent.socket)) as c:
        report = c.freeze("bound", 10)  # the client binds by default
        assert report["bound"] is True and frozen_now(ext4.path)
    assert wait_until(lambda: agent.call("status")["return"]["state"] == "idle", 5)
    assert not frozen_now(ext4.path)
    last = agent.call("status")["return"]["last_report"]
    assert last["outcome"] == "aborted: the host went away"
    assert any("went away before the thaw" in n for n in last["notes"])


def test_a_thaw_on_the_same_connection_keeps_a_bound_freeze_consistent(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    with protocol.Client(protocol.Endpoint("unix", path=agent.socket)) as c:
        c.freeze("bound", 10)
        report = c.thaw(10)
    assert report["outcome"] == "thawed" and report["consistency"] == "filesystem"


def test_an_unbound_freeze_outlives_its_connection(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    with protocol.Client(protocol.Endpoint("unix", path=agent.socket)) as c:
        c.freeze("bridge", 10, bound=False)
    assert agent.call("status")["return"]["state"] == "frozen" and frozen_now(ext4.path)
    assert agent.call("thaw")["return"]["outcome"] == "thawed"


def test_a_client_killed_mid_request_of_a_bound_freeze_leaves_nothing(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    s = socket.socket(socket.AF_UNIX)
    s.connect(agent.socket)
    s.sendall(protocol.request("freeze", {"label": "gone", "bound": True}, "x1"))
    s.close()  # gone before the reply: the freeze rolls back or is undone right after
    assert wait_until(lambda: agent.call("status")["return"]["state"] == "idle", 10)
    assert not frozen_now(ext4.path)


def test_skip_leaves_the_filesystems_to_the_tool(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    report = agent.call("freeze", {"label": "b", "skip": ["filesystems"]})["return"]
    assert report["writers"] == [] and not frozen_now(ext4.path)
    assert agent.call("thaw")["return"]["outcome"] == "thawed"
    bad = agent.call("freeze", {"label": "c", "skip": "filesystems"})
    assert bad["error"]["class"] == "BadRequest"
