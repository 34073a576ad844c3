"""Finding the virtio-serial port a config names, with or without udev's links."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.server import port_path


def sysfs(tmp_path: Path, ports: dict[str, str]) -> Path:
    root = tmp_path / "virtio-ports"
    for dev, name in ports.items():
        (root / dev).mkdir(parents=True)
        (root / dev / "name").write_text(name + "\n")
    return root


def test_the_configured_path_is_used_when_it_exists(tmp_path: Path) -> None:
    dev = tmp_path / "vport1p1"
    dev.touch()
    assert port_path(str(dev), sysfs(tmp_path, {})) == str(dev)


def test_without_udev_the_port_is_found_by_its_name(tmp_path: Path) -> None:
    ports = sysfs(tmp_path, {"vport1p1": "org.qemu.guest_agent.0", "vport1p2": "org.quiesce.0"})
    assert port_path("/dev/virtio-ports/org.quiesce.0", ports) == "/dev/vport1p2"


def test_a_port_of_no_such_name_is_not_found(tmp_path: Path) -> None:
    ports = sysfs(tmp_path, {"vport1p1": "org.qemu.guest_agent.0"})
    with pytest.raises(FileNotFoundError, match="org.quiesce.0"):
        port_path("/dev/virtio-ports/org.quiesce.0", ports)
