"""The agent on a real virtio-serial port: host connections come and go, none is lost, an
idle port costs no CPU, and a misconfigured port is reported (issue 11, items 1, 2, 5)."""

from __future__ import annotations

import socket
import time

from agent import protocol
from tests.helpers.guest import Guest

CONNECTIONS = 200


def test_back_to_back_host_connections_lose_no_request(guest: Guest) -> None:
    lost = []
    for i in range(CONNECTIONS):
        try:
            with protocol.Client(guest.vm.agent_endpoint, 5.0) as c:
                assert c.ping()["pong"] is True
        except protocol.NoReply as err:
            lost.append(f"{i}: {err}")
    assert lost == [], f"{len(lost)} of {CONNECTIONS} connections got no reply: {lost[:3]}"


def _agent_cpu_seconds(guest: Guest) -> float:
    """The agent's user + system CPU time so far, from /proc/PID/stat (clock ticks)."""
    out = guest.sh(f"cut -d' ' -f14,15 /proc/{guest.agent_pid()}/stat; getconf CLK_TCK")
    ticks, hz = out.split("\n")[:2]
    return sum(int(t) for t in ticks.split()) / int(hz)


def test_a_host_that_hangs_up_with_a_reply_pending_leaves_the_agent_idle(guest: Guest) -> None:
    path = guest.vm.agent_socket
    for _ in range(3):  # ask, and leave before the reply
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.sendall(protocol.request("status", None, "gone-1"))
        s.close()
    time.sleep(1.0)
    before = _agent_cpu_seconds(guest)
    time.sleep(5.0)
    used = _agent_cpu_seconds(guest) - before
    # the defect spun a whole vCPU (about 5 s of CPU here); an idle agent uses next to none
    assert used < 1.0, f"the agent used {used:.2f} s of CPU in 5 s with no host connected"
    with protocol.Client(guest.vm.agent_endpoint, 5.0) as c:  # and it still answers
        assert c.ping()["pong"] is True


def test_check_names_a_virtio_serial_port_that_does_not_exist(guest: Guest) -> None:
    conf = "/tmp/bad-port.yaml"
    guest.sh(f"printf 'listen:\\n  virtio_serial: /dev/virtio-ports/no.such.port\\n' > {conf}")
    rc, out = guest.vm.guest_run(
        ["/opt/quiesce-agent/bin/quiesce-agent", "--config", conf, "check"], timeout=120
    )
    assert rc != 0 and "listen.virtio_serial" in out, out
