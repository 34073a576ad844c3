"""The VM lab's bad input and faults, each a clear error that names the step and shows the
guest's console, and nothing left running: a guest that is not up within its bound, a kernel
panic, a port already in use, a Ctrl-C of the demo in the middle of a boot."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from host.lab.databases import LabError
from host.lab.image import GuestImage
from host.lab.vmlab import VMLab
from tests.helpers.env import REPO
from tests.vm.lab.helpers import assert_gone, processes_of


def test_a_guest_not_up_within_its_bound_is_named_with_its_console(
    guest_image: GuestImage,
) -> None:
    lab = VMLab(guest_image, say=print, boot_timeout=4.0)
    try:
        lab.build()
        with pytest.raises(LabError) as caught:
            lab.start()
        message = str(caught.value)
        assert message.startswith("boot 1: the guest was not up within 4 s of QEMU's start")
        assert "still waiting for" in message
        assert "the console (" in message and "] " in message.split("the console (")[1]
    finally:
        lab.close()
    assert_gone(lab.root)


def test_a_kernel_panic_is_reported_as_one(guest_image: GuestImage) -> None:
    # init=/bin/false: the kernel's init exits at once, and the kernel panics
    lab = VMLab(guest_image, say=print, kernel_args="init=/bin/false")
    try:
        lab.build()
        with pytest.raises(LabError) as caught:
            lab.start()
        message = str(caught.value)
        assert message.startswith("boot 1: the guest's kernel panicked (Kernel panic - not syncing")
        assert "Attempted to kill init" in message
        assert "the console (" in message
    finally:
        lab.close()
    assert_gone(lab.root)


def test_a_forwarded_port_in_use_is_named_before_anything_starts(
    guest_image: GuestImage,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        lab = VMLab(guest_image, say=print, pg_port=port)
        try:
            lab.build()
            with pytest.raises(LabError) as caught:
                lab.start()
            assert str(caught.value).startswith(
                f"boot 1: port 127.0.0.1:{port} (the forward to the guest's PostgreSQL) "
                "cannot be used: Address already in use"
            )
            assert lab.vm is None and lab.server is None and processes_of(lab.root) == []
        finally:
            lab.close()
    assert_gone(lab.root)


def test_ctrl_c_of_the_vm_demo_mid_boot_leaves_nothing(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    demo = [str(REPO / ".venv" / "bin" / "quiesce-host"), "demo", "--vm"]
    proc = subprocess.Popen(
        demo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until QEMU runs the guest's kernel
            lines.append(line)
            if "boot 1: serving the VM's disks" in line:
                break
        labs = list(tmp_path.glob("qvmlab-*"))
        assert len(labs) == 1, "".join(lines)
        until = time.monotonic() + 60
        while not list(labs[0].glob("run/boot-1/console.log")) and time.monotonic() < until:
            time.sleep(0.2)
        time.sleep(2.0)  # the kernel is booting
        assert any("qemu-system" in p for p in processes_of(labs[0])), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "interrupted: cleaning up" in out and f"removed {labs[0]}" in out
    assert_gone(labs[0])
