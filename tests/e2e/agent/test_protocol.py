"""The daemon over its socket: every command, hostile input, peers and concurrency."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import protocol
from tests.helpers.freeze import frozen_now

pytestmark = pytest.mark.root


def slow_script(folder: Path, seconds: float) -> None:
    folder.mkdir(mode=0o755, exist_ok=True)
    s = folder / "50-slow"
    s.write_text(f'#!/bin/sh\n[ "$1" = freeze ] && sleep {seconds}\nexit 0\n')
    s.chmod(0o755)


def test_every_command_answers(ext4, start_agent) -> None:
    agent = start_agent({"filesystems": {"mounts": [ext4.path]}})
    assert agent.call("ping")["return"]["pong"] is True
    writers = agent.call("writers")["return"]
    assert [w["name"] for w in writers] == ["filesystems:listed"]
    assert agent.call("status")["return"]["state"] == "idle"
    assert agent.call("thaw")["error"]["class"] == "StateError"
    assert agent.call("abort")["error"]["class"] == "StateError"
    assert "return" in agent.call("freeze", {"label": "a", "writers": ["filesystems"]})
    assert agent.call("freeze", {"label": "b"})["error"]["class"] == "StateError"
    assert agent.call("abort")["return"]["outcome"] == "aborted"
    bad = agent.call("freeze", {"label": "c", "writers": ["oracle"]})
    assert bad["error"]["class"] == "BadRequest" and "filesystems" in bad["error"]["desc"]
    assert agent.call("freeze", {"labl": "typo"})["error"]["class"] == "BadRequest"
    assert agent.call("freeze", {"timeout": -1})["error"]["class"] == "BadRequest"


def test_the_socket_is_private(ext4, start_agent) -> None:
    agent = start_agent({})
    assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o600


def test_malformed_lines_get_errors_on_the_same_connection(start_agent) -> None:
    agent = start_agent({})
    out = agent.raw(b'nonsense\n{"execute":"nope","id":4}\n[1]\n{"execute":"ping","id":9}\n')
    replies = [json.loads(line) for line in out.splitlines()]
    assert [r.get("error", {}).get("class") for r in replies] == [
        "BadRequest",
        "CommandNotFound",
        "BadRequest",
        None,
    ]
    assert replies[1]["id"] == 4 and replies[3]["id"] == 9
    assert agent.call("ping")["return"]["pong"]


def test_a_huge_line_is_refused_and_the_daemon_lives_on(start_agent) -> None:
    agent = start_agent({})
    out = agent.raw(b'{"execute":"ping","pad":"' + b"x" * (protocol.MAX_LINE * 4) + b'"}\n')
    assert json.loads(out.splitlines()[0])["error"]["class"] == "LineTooLong"
    assert agent.call("ping")["return"]["pong"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=2000))
def test_random_bytes_never_kill_the_daemon(start_agent_once, data: bytes) -> None:
    agent = start_agent_once
    try:
        agent.raw(data + b"\n", timeout=0.3)
    except OSError:
        pass
    assert agent.call("ping")["return"]["pong"]


@pytest.fixture(scope="module")
def start_agent_once(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.helpers.agentproc import AgentProcess

    workdir = Path("/tmp") / f"qa-fuzz-{os.getpid()}"
    workdir.mkdir(exist_ok=True)
    agent = AgentProcess(workdir, {}).start()
    yield agent
    agent.stop()
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_an_unauthorized_peer_is_refused(start_agent) -> None:
    agent = start_agent({})
    os.chmod(agent.socket, 0o666)  # let the kernel through so SO_PEERCRED decides
    os.chmod(os.path.dirname(agent.socket), 0o755)
    os.chmod(os.path.dirname(os.path.dirname(agent.socket)), 0o755)
    code = (
        "import os,socket,sys; os.setgid(65534); os.setuid(65534); s=socket.socket(socket.AF_UNIX);"
        "s.connect(sys.argv[1]); print(s.recv(4096).decode())"
    )  # refused before any request
    out = subprocess.run(
        [sys.executable, "-c", code, agent.socket], capture_output=True, text=True, timeout=10
    )
    assert out.stdout, out.stderr
    reply = json.loads(out.stdout)
    assert reply["error"]["class"] == "Unauthorized"
    assert "uid 65534" in reply["error"]["desc"]
    assert agent.call("status")["return"]["state"] == "idle"


def test_status_answers_while_a_freeze_is_in_progress(ext4, start_agent, short_tmp) -> None:
    slow_script(short_tmp / "scripts", 1.5)
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": None},
        }
    )
    result = {}
    t = threading.Thread(target=lambda: result.update(agent.call("freeze", {"label": "slow"})))
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    status = agent.call("status")["return"]
    assert time.monotonic() - start < 0.5
    assert status["state"] == "freezing" and status["label"] == "slow"
    assert agent.call("ping")["return"]["pong"]
    t.join()
    assert result["return"]["outcome"] == "frozen"
    assert agent.call("thaw")["return"]["outcome"] == "thawed"


def test_a_client_that_disconnects_mid_freeze_does_not_disturb_it(
    ext4, start_agent, short_tmp
) -> None:
    slow_script(short_tmp / "scripts", 1.0)
    agent = start_agent(
        {
            "filesystems": {"mounts": [ext4.path]},
            "scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": None},
        }
    )
    s = socket.socket(socket.AF_UNIX)
    s.connect(agent.socket)
    s.sendall(protocol.request("freeze", {"label": "gone"}))
    time.sleep(0.2)
    s.close()
    deadline = time.monotonic() + 10
    while agent.call("status")["return"]["state"] != "frozen" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.call("status")["return"]["state"] == "frozen"
    assert frozen_now(ext4.path)
    assert agent.call("thaw")["return"]["outcome"] == "thawed"  # another client can thaw


def test_many_clients_at_once(start_agent) -> None:
    agent = start_agent({})
    errors: list[str] = []

    def hammer() -> None:
        for _ in range(20):
            r = agent.call("status")
            if "return" not in r:
                errors.append(str(r))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_virtio_serial_port_serves_the_same_protocol(start_agent, short_tmp) -> None:
    # a pty stands in for /dev/virtio-ports/NAME: a character device, read and written in place
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    path = os.ttyname(slave)
    start_agent({"listen": {"unix": str(short_tmp / "a.sock"), "virtio_serial": path}})
    try:
        os.write(master, protocol.request("ping", id=1) + b"garbage\n")
        buf = b""
        deadline = time.monotonic() + 5
        while buf.count(b"\n") < 2 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                buf += os.read(master, 4096)
        replies = [json.loads(x) for x in buf.splitlines()]
        assert replies[0]["return"]["pong"] is True and replies[0]["id"] == 1
        assert replies[1]["error"]["class"] == "BadRequest"
    finally:
        os.close(master)
        os.close(slave)


def test_vsock_listens_where_the_kernel_has_it(short_tmp) -> None:
    from tests.helpers.agentproc import AgentProcess

    agent = AgentProcess(
        short_tmp, {"listen": {"unix": str(short_tmp / "v.sock"), "vsock": {"port": 47_123}}}
    )
    try:
        agent.start()
    except RuntimeError:
        # no vsock transport on this machine (it needs a hypervisor): the daemon must say so
        agent.stop()
        assert "cannot listen" in agent.log() and "vsock port 47123" in agent.log()
        return
    try:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((1, 47_123))  # VMADDR_CID_LOCAL, needs the vsock_loopback transport
        except OSError:
            pytest.skip("the daemon listens on vsock, but this kernel has no vsock loopback")
        s.sendall(protocol.request("ping", id=1))
        assert json.loads(s.recv(4096))["return"]["pong"] is True
    finally:
        agent.stop()


def test_a_missing_virtio_serial_port_is_said_once_and_served_when_it_appears(
    start_agent, short_tmp
) -> None:
    import tty

    link = short_tmp / "org.quiesce.0"  # as udev would name it, not there yet
    agent = start_agent({"listen": {"unix": str(short_tmp / "a.sock"), "virtio_serial": str(link)}})
    time.sleep(2.5)  # the daemon retries every second meanwhile
    assert agent.log().count("cannot open it") == 1, agent.log()
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    try:
        link.symlink_to(os.ttyname(slave))
        os.write(master, protocol.request("ping", id=4))
        out = b""
        deadline = time.monotonic() + 5
        while b"\n" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                out += os.read(master, 4096)
        assert json.loads(out)["id"] == 4
        assert "opened" in agent.log()
    finally:
        os.close(master)
        os.close(slave)
