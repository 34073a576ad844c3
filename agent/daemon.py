"""The daemon's life-cycle: recover, start the guard, listen, serve, and on stop thaw first.

Shutdown order: stop accepting, thaw everything held (freezeFail semantics), stop the
guard, exit. Signal handlers only set an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from agent import marker, systemd
from agent.config import Config
from agent.guard import GuardClient
from agent.logbuffer import HoldingHandler
from agent.server import (
    Dispatcher,
    PeerPolicy,
    SerialChannel,
    serve_stream,
    unix_listener,
    vsock_listener,
)
from agent.session import Session
from agent.writers import factory
from common.errors import QuiesceError

logger = logging.getLogger(__name__)


class Daemon:
    """One running agent: its session, guard, marker and listeners."""

    def __init__(self, config: Config, log: HoldingHandler) -> None:
        self.config = config
        self.log = log
        self.guard = GuardClient()
        self.marker = marker.Marker(config.state_dir)
        self.session = Session(
            factory(config), self, config.freeze.ceiling_seconds, config.freeze.timeout_seconds
        )
        self.stop = asyncio.Event()
        log.mirror, log.flushed = self.guard.log, self.guard.logged

    # Session hooks --------------------------------------------------------------------------
    def hold(self, path: str, held: bool) -> None:
        self.guard.hold(path, held)  # the guard first: it must know before the ioctl
        try:
            self.marker.update(path, held)
        except OSError as err:
            logger.error("cannot update the marker %s: %s", self.marker.path, err)

    def arm(self, deadline: float) -> None:
        self.guard.arm(deadline)

    def disarm(self) -> None:
        self.guard.disarm()

    def ensure_guard(self) -> None:
        self.guard.ensure()
        if not self.guard.alive():
            raise QuiesceError("the dead-man guard could not be started; refusing to freeze")

    def frozen_logging(self, frozen: bool) -> None:
        self.log.hold(frozen)

    # Life-cycle -----------------------------------------------------------------------------
    async def run(self) -> int:
        os.makedirs(self.config.state_dir, mode=0o755, exist_ok=True)
        for note in marker.recover(self.config.state_dir):
            logger.warning("%s", note)
        self.guard.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            servers, channels = await self._listen()
        except OSError as err:
            self.guard.stop()
            raise QuiesceError(
                f"cannot listen: {err}; check listen.* in {self.config.source}"
            ) from err
        systemd.notify("READY=1")
        logger.info(
            "quiesce-agent %d ready (ceiling %g s, budget %g s)",
            os.getpid(),
            self.config.freeze.ceiling_seconds,
            self.config.freeze.timeout_seconds,
        )
        watchdog = asyncio.create_task(self._watchdog())
        await self.stop.wait()
        systemd.notify("STOPPING=1")
        logger.info("stopping")
        for server in servers:
            server.close()
        for channel in channels:
            await channel.stop()
        await self.session.shutdown()
        watchdog.cancel()
        self.guard.stop()
        if self.config.listen.unix:
            with contextlib.suppress(OSError):
                os.unlink(self.config.listen.unix)
        return 0

    async def _listen(self) -> tuple[list[asyncio.Server], list[SerialChannel]]:
        dispatch = Dispatcher(self.session)
        listen = self.config.listen
        policy = PeerPolicy(listen.group)

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await serve_stream(r, w, dispatch, policy, dispatch.hangup)

        servers, channels = [], []
        if listen.unix:
            sock = unix_listener(listen.unix, listen.group)
            servers.append(await asyncio.start_unix_server(on_client, sock=sock))
            logger.info("listening on unix:%s", listen.unix)
        if listen.vsock_port is not None:
            sock = vsock_listener(listen.vsock_port)
            servers.append(await asyncio.start_server(on_client, sock=sock))
            logger.info("listening on vsock port %d", listen.vsock_port)
        if listen.virtio_serial:
            channel = SerialChannel(listen.virtio_serial, dispatch, on_hangup=dispatch.hangup)
            channel.opened = self._port_opened
            channel.start()
            channels.append(channel)
            logger.info("serving the virtio-serial port %s", listen.virtio_serial)
        return servers, channels

    def _port_opened(self, fd: int) -> None:
        """The guard holds the virtio-serial port too, to tell the host if the daemon dies
        mid-freeze (agent/guard.py); it is restarted with it while nothing is held."""
        if self.session.state.value != "idle":
            logger.warning(
                "virtio-serial port opened during a freeze: the guard does not hold it, and "
                "cannot tell the host if this daemon dies"
            )
            return
        self.guard.attach_port(fd)

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def run(config: Config, log: HoldingHandler) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    sys.dont_write_bytecode = True  # nothing may write a .pyc while a filesystem is frozen
    return asyncio.run(Daemon(config, log).run())


__all__ = ["Daemon", "run", "socket"]
