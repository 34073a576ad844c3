"""Start and drive a real quiesce-agent daemon in a subprocess (shared by e2e tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from agent import protocol
from host.lab.local import console_script
from tests.helpers.env import REPO


class AgentProcess:
    """A daemon with its own config, state dir and socket under ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any], log_path: Path | None = None) -> None:
        self.workdir = workdir
        self.socket = config.get("listen", {}).get("unix") or str(workdir / "agent.sock")
        self.state_dir = str(workdir / "state")
        cfg = {"listen": {"unix": self.socket}, "state_dir": self.state_dir, **config}
        self.config_path = workdir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = log_path or workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> AgentProcess:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [console_script("quiesce-agent"), "--config", str(self.config_path), "serve"],
            stdout=self._log,
            stderr=self._log,
            env=env,
            cwd=str(REPO),
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if "return" in self.call("ping", timeout=2):
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError(f"agent did not come up:\n{self.log()}")

    def call(
        self, execute: str, arguments: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """The whole reply, ``{"return": ...}`` or ``{"error": ...}``, as a test checks it."""
        with protocol.Client(protocol.Endpoint("unix", path=self.socket)) as c:
            try:
                return protocol.success(c.call(execute, arguments, timeout=timeout))
            except protocol.Refused as err:
                return protocol.failure(err.error_class, err.desc, err.data)

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes on a fresh connection and return everything read until it closes
        or ``timeout`` passes."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(self.socket)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused and closed before reading all of it; its reply is queued
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if out.count(b"\n") >= data.count(b"\n") and not data.endswith(b"\n\n"):
                    break
        except TimeoutError:
            pass
        s.close()
        return out

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, wait: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
