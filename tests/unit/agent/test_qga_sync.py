"""``guest-sync-delimited`` as the one client does it: a 0xFF first, then every line up to
the reply carrying our random id, read by the protocol's one line framing; stale lines of an
earlier client (with or without a delimiter, or a sync reply with another id) are skipped."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from agent import protocol


def fake_qga(path: Path, stale: bytes) -> threading.Thread:
    """A qemu-ga stand-in: sends ``stale`` first, then answers the sync and one command."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.sendall(stale)
            buf = b""
            while b"\n" not in buf:
                buf += conn.recv(4096)
            assert buf.startswith(b"\xff")  # the flush byte came first
            req = json.loads(buf[1:].split(b"\n")[0])
            assert req["execute"] == "guest-sync-delimited"
            nonce = req["arguments"]["id"]
            conn.sendall(b'\xff{"return": ' + str(nonce + 1).encode() + b"}\n")  # not ours
            conn.sendall(b'\xff{"return": ' + str(nonce).encode() + b"}\n")
            line = b""
            while b"\n" not in line:
                line += conn.recv(4096)
            rid = json.loads(line)["id"]
            conn.sendall(json.dumps({"return": "thawed", "id": rid}).encode() + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_sync_skips_stale_lines_and_another_clients_sync_reply(tmp_path: Path) -> None:
    path = tmp_path / "qga.sock"
    stale = b'{"return": {}}\n\xff{"return": 12}\nhalf a line without an end'
    t = fake_qga(path, stale)
    with protocol.Client(f"unix:{path}", 2.0) as c:
        c.sync_delimited(timeout=5.0)
        assert c.call("guest-fsfreeze-status", timeout=5.0) == "thawed"
    t.join(5)
