"""Engine test sizes, and qemu-img / qemu-io as the independent judges of the disk format."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.env import need

MiB = 1024 * 1024
GRAIN = 64 * 1024
# 40 MiB + one grain: two grain tables, the second one partial
SIZE = 40 * MiB + GRAIN

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")


def need_qemu() -> None:
    need(
        QEMU_IMG is not None and QEMU_IO is not None,
        "qemu-img/qemu-io missing (apt install qemu-utils)",
    )


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


def qemu_io(image: Path, *commands: str) -> None:
    args: list[str | Path] = [QEMU_IO or "qemu-io", "-f", "vmdk"]
    for c in commands:
        args += ["-c", c]
    out = run(*args, image)
    assert "error" not in out.stdout.lower() and "failed" not in out.stdout.lower(), out.stdout


def qemu_judge(image: Path, expected: bytes | bytearray, tmp: Path) -> None:
    """qemu-img check + compare against a raw file holding ``expected``."""
    ref = tmp / "judge.raw"
    ref.write_bytes(bytes(expected))
    run(QEMU_IMG or "qemu-img", "check", "-f", "vmdk", image)
    out = run(QEMU_IMG or "qemu-img", "compare", "-f", "vmdk", "-F", "raw", image, ref, check=False)
    assert out.returncode == 0, f"qemu-img compare: {out.stdout}{out.stderr}"
    ref.unlink()


def ext4_image(path: Path, size: int) -> Path:
    """A raw image of ``size`` bytes holding an ext4 filesystem with a file in it (made with
    ``mkfs.ext4 -d``, nothing mounted)."""
    content = path.with_name(path.name + ".d")
    content.mkdir()
    (content / "hello.txt").write_text("a file that must come through\n")
    with open(path, "wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-d", content, path)
    return path
