"""The protocol's one client against fake agents: every wait bounded, every failure named."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.protocol import (
    Client,
    Garbage,
    NoReply,
    Refused,
    Unreachable,
)


class FakeAgent:
    """A unix socket that answers each request line with ``respond(request) -> bytes``."""

    def __init__(self, path: Path, respond: Callable[[dict], bytes | None]) -> None:
        self.path = path
        self.respond = respond
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while chunk := conn.recv(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    out = self.respond(json.loads(line))
                    if out is None:
                        conn.close()  # the agent dies
                        return
                    conn.sendall(out)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def fake(short_tmp: Path) -> Iterator[Callable[..., FakeAgent]]:
    made: list[FakeAgent] = []

    def factory(respond: Callable[[dict], bytes | None]) -> FakeAgent:
        agent = FakeAgent(short_tmp / f"fake{len(made)}.sock", respond)
        made.append(agent)
        return agent

    yield factory
    for agent in made:
        agent.close()


def reply(req: dict, ret: object) -> bytes:
    return json.dumps({"return": ret, "id": req.get("id")}).encode() + b"\n"


def test_no_agent_is_a_clear_error(short_tmp: Path) -> None:
    with pytest.raises(Unreachable, match="cannot connect.*is quiesce-agent running"):
        Client(f"unix:{short_tmp}/nothing.sock").connect()


def test_stale_replies_with_other_ids_are_skipped(fake) -> None:
    def respond(req: dict) -> bytes:
        stale = json.dumps({"return": {"old": True}, "id": "someone-else-7"}).encode() + b"\n"
        return stale + reply(req, {"pong": True})

    agent = fake(respond)
    with Client(f"unix:{agent.path}") as c:
        assert c.ping() == {"pong": True}
        assert c.ping() == {"pong": True}


def test_garbage_is_named(fake) -> None:
    agent = fake(lambda req: b"SSH-2.0-OpenSSH_9.2\n")
    with (
        Client(f"unix:{agent.path}") as c,
        pytest.raises(Garbage, match="not this protocol.*SSH-2.0.*quiesce-agent"),
    ):
        c.ping()


def test_an_agent_that_never_answers_is_given_up_on_in_bounded_time(fake) -> None:
    agent = fake(lambda req: b"")  # reads, never answers
    t0 = time.monotonic()
    with Client(f"unix:{agent.path}") as c, pytest.raises(NoReply, match="within 0.5 s"):
        c.call("ping", timeout=0.5)
    assert time.monotonic() - t0 < 1.5


def test_the_freeze_wait_is_the_budget_plus_a_margin(fake) -> None:
    agent = fake(lambda req: b"")
    t0 = time.monotonic()
    with Client(f"unix:{agent.path}") as c, pytest.raises(NoReply):
        c.freeze("x", budget=1.0)
    assert 2.9 < time.monotonic() - t0 < 4.0  # 1 s budget + 2 s margin


def test_an_agent_dying_mid_call_is_a_lost_connection(fake) -> None:
    agent = fake(lambda req: None)
    with Client(f"unix:{agent.path}") as c, pytest.raises(Unreachable, match="lost"):
        c.freeze("x", budget=5)


def test_error_replies_carry_class_and_report(fake) -> None:
    def respond(req: dict) -> bytes:
        err = {
            "class": "WriterFailed",
            "desc": "scripts:3: cannot lock",
            "data": {"report": {"outcome": "failed", "writers": []}},
        }
        return json.dumps({"error": err, "id": req["id"]}).encode() + b"\n"

    agent = fake(respond)
    with Client(f"unix:{agent.path}") as c, pytest.raises(Refused) as info:
        c.freeze("x", budget=5)
    assert info.value.error_class == "WriterFailed"
    assert info.value.report == {"outcome": "failed", "writers": []}


def test_a_vsock_endpoint_with_nobody_there_is_bounded() -> None:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except (AttributeError, OSError):
        pytest.skip("no AF_VSOCK on this machine")
    t0 = time.monotonic()
    with pytest.raises(Unreachable, match="vsock:1:57123"):
        Client("vsock:1:57123", connect_timeout=1.0).connect()
    assert time.monotonic() - t0 < 2.0
