"""A deterministic sequence of engine operations and the model state after each one.

``crash_at`` makes the n-th durable system call raise ``Crash`` (the process "dies" there)
and ``abandon`` drops what a dead process held, for the kill-at-every-step tests. The SIGKILL
test runs it in a child process (``python -m tests.helpers.crashplan FOLDER SEED [disk|vm]``),
which prints ``ack N`` once operation N has returned; the parent replays the same plan on a
model to know what the disk must hold after a kill.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

GRAIN = 64 * 1024
SIZE = 96 * GRAIN
STEPS = 40


@dataclass
class State:
    current: bytes
    snapshots: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Op:
    kind: str  # write | zero | create | revert | delete | delete_all
    args: tuple[Any, ...] = ()
    grains_only: bool = False  # a write: after a kill, each sector is old or new


DURABLE = ("pwrite", "write", "rename", "unlink", "fsync", "fdatasync", "ftruncate")


class Crash(BaseException):
    """The process 'dies' here: nothing after this system call happens."""


@contextmanager
def crash_at(step: int) -> Iterator[list[int]]:
    """Make the ``step``-th durable system call (counting from 0) raise Crash instead."""
    count = [0]
    saved = {name: getattr(os, name) for name in DURABLE}

    def wrap(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            if count[0] == step:
                raise Crash(name)
            count[0] += 1
            return fn(*args, **kwargs)

        return call

    for name, fn in saved.items():
        setattr(os, name, wrap(name, fn))
    try:
        yield count
    finally:
        for name, fn in saved.items():
            setattr(os, name, fn)


def abandon(disk: Any) -> None:
    """What the kernel does for a dead process: close its files, drop its lock."""
    disk._close_layers()
    if disk._flock is not None:
        disk._flock.release()
        disk._flock = None


def plan(seed: int, steps: int = STEPS) -> list[tuple[Op, State]]:
    rng = random.Random(seed)
    state = State(bytes(SIZE))
    out: list[tuple[Op, State]] = []
    n = 0
    while len(out) < steps:
        n += 1
        r = rng.random()
        cur = bytearray(state.current)
        snaps = dict(state.snapshots)
        if r < 0.5:
            length = rng.choice(
                [100, 4096, GRAIN, 3 * GRAIN, 16 * GRAIN, rng.randint(1, 9 * GRAIN)]
            )
            off = rng.randrange(0, SIZE - length)
            data = bytes([n % 251 + 1]) * length
            cur[off : off + length] = data
            op = Op("write", (off, data), grains_only=True)
        elif r < 0.55:
            length = rng.randint(1, 4 * GRAIN)
            off = rng.randrange(0, SIZE - length)
            cur[off : off + length] = bytes(length)
            op = Op("zero", (off, length), grains_only=True)
        elif r < 0.72 and len(snaps) < 12:
            op = Op("create", (f"s{n}",))
            snaps[f"s{n}"] = bytes(cur)
        elif r < 0.8 and snaps:
            name = rng.choice(sorted(snaps))
            op = Op("revert", (name,))
            cur = bytearray(snaps[name])
        elif r < 0.95 and snaps:
            name = rng.choice(sorted(snaps))
            op = Op("delete", (name,))
            del snaps[name]
        elif snaps:
            op = Op("delete_all")
            snaps = {}
        else:
            continue
        state = State(bytes(cur), snaps)
        out.append((op, state))
    return out


def apply(disk: Any, op: Op) -> None:
    if op.kind == "write":
        disk.write(*op.args)
    elif op.kind == "zero":
        disk.write_zeroes(*op.args)
    elif op.kind == "create":
        disk.snapshot_create(op.args[0])
    elif op.kind == "revert":
        disk.snapshot_revert(op.args[0])
    elif op.kind == "delete":
        disk.snapshot_delete(op.args[0])
    elif op.kind == "delete_all":
        disk.snapshot_delete_all()


def main(argv: list[str]) -> int:
    from tests.helpers.striped import KINDS  # not at the top: it imports this module

    folder, seed, kind = argv[0], int(argv[1]), argv[2] if len(argv) > 2 else "disk"
    with KINDS[kind][1](folder) as disk:
        for i, (op, _) in enumerate(plan(seed)):
            apply(disk, op)
            sys.stdout.write(f"ack {i}\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
