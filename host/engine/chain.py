"""A chain of layers (base, deltas..., top) read as one disk, and the merges between layers.

``Chain`` keeps, for every grain, the index of the newest layer that holds it (a bytearray,
one byte per grain, 0 = the base), built once from the in-memory grain tables and updated
on every allocation, so a read never walks the chain grain by grain. Writes go to the top
layer with copy-on-write per grain.

Merges (``merge_up``, ``flatten``) only ever overwrite a grain of the destination that a
layer above it also holds, so the view through the top of the chain is the same at every
instant of the merge: an interrupted merge can simply be run again.

Raises DiskError (CorruptFile, NoSpace) from the layer files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from host.engine.errors import space_error
from host.engine.flat import FlatBase
from host.engine.sparse import GRAIN, GRAIN_SECTORS, SECTOR, ZERO_GRAIN, SparseExtent

Layer = FlatBase | SparseExtent  # the base, or a delta
Progress = Callable[[int, int], Any]  # (bytes done, bytes total)
RUN = 64  # grains per copy run (4 MiB)


def allocated(layer: SparseExtent) -> list[int]:
    """The grains this delta holds (data or zeroed)."""
    return [g for g, s in enumerate(layer.gt) if s]


class Chain:
    """``layers[0]`` is the flat base, ``layers[-1]`` the top that takes the writes."""

    def __init__(self, layers: list[Layer]) -> None:
        if not isinstance(layers[0], FlatBase):
            raise TypeError("a chain starts at the flat base")
        self.layers = layers
        self.top: Layer = layers[-1]  # an attribute, not a property: read on every write
        self.base: FlatBase = layers[0]
        self.size = self.base.size
        self.num_grains = self.size // GRAIN
        self.owner = bytearray(self.num_grains)
        for i, layer in enumerate(layers[1:], 1):
            assert isinstance(layer, SparseExtent)
            owner = self.owner
            for g in allocated(layer):
                owner[g] = i

    def push(self, layer: SparseExtent) -> None:
        """A new empty delta on top (a snapshot was taken): the map stays as it is."""
        self.layers.append(layer)
        self.top = layer

    # -- reading --------------------------------------------------------------------------

    def _runs(self, first: int, last: int) -> Iterator[tuple[int, int, int]]:
        """(owner, first grain, grains) runs over grains first..last that one read serves."""
        owner, layers = self.owner, self.layers
        g = first
        while g <= last:
            o = owner[g]
            n = 1
            if o == 0:
                while g + n <= last and owner[g + n] == 0:
                    n += 1
            else:
                gt = layers[o].gt  # type: ignore[union-attr]
                s = gt[g]
                if s == 1:
                    while g + n <= last and owner[g + n] == o and gt[g + n] == 1:
                        n += 1
                else:
                    while (
                        g + n <= last and owner[g + n] == o and gt[g + n] == s + n * GRAIN_SECTORS
                    ):
                        n += 1
            yield o, g, n
            g += n

    def runs_over(self, grains: list[int]) -> Iterator[tuple[int, int]]:
        """(first grain, count) runs of consecutive grains from sorted ``grains``."""
        i = 0
        while i < len(grains):
            g = grains[i]
            n = 1
            while n < RUN and i + n < len(grains) and grains[i + n] == g + n:
                n += 1
            yield g, n
            i += n

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        pieces: list[bytes] = []
        end = offset + length
        for o, g, n in self._runs(offset // GRAIN, (end - 1) // GRAIN):
            start = max(offset, g * GRAIN)
            stop = min(end, (g + n) * GRAIN)
            if o == 0:
                pieces.append(self.base.read(start, stop - start))
                continue
            layer = self.layers[o]
            s = layer.gt[g]  # type: ignore[union-attr]
            if s == 1:
                pieces.append(
                    ZERO_GRAIN[: stop - start] if stop - start <= GRAIN else bytes(stop - start)
                )
            else:
                pieces.append(
                    layer.read_at(  # type: ignore[union-attr]
                        s, start - g * GRAIN, stop - start
                    )
                )
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    # -- writing --------------------------------------------------------------------------

    def overwrite(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """The fast path: ``data`` lies inside one grain the top already holds. False if not.

        Inlined down to the ``pwrite`` (it runs once per small write, where a Python call
        costs as much as the system call)."""
        top = self.top
        if top.kind != "sparse":
            return False
        g, goff = divmod(offset, GRAIN)
        s = top.gt[g]  # type: ignore[union-attr]
        if s <= 1 or goff + len(data) > GRAIN:
            return False
        pos = s * SECTOR + goff
        try:
            if os.pwrite(top.fd, data, pos) == len(data):
                return True
        except OSError as err:
            raise space_error(err, top.path, "writing a grain") from err
        top.overwrite(g, goff, data)  # type: ignore[union-attr]  # a short write: finish it
        return True

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        top = self.top
        if isinstance(top, FlatBase):
            top.write(offset, data)
            return
        t = len(self.layers) - 1
        mv = memoryview(data)
        new: list[tuple[int, bytes | bytearray | memoryview]] = []
        pos, end = offset, offset + len(mv)
        while pos < end:
            g, goff = divmod(pos, GRAIN)
            n = min(GRAIN - goff, end - pos)
            piece = mv[pos - offset : pos - offset + n]
            if top.gt[g] > 1:
                top.overwrite(g, goff, piece)
            elif n == GRAIN:
                new.append((g, piece))
            else:
                below = ZERO_GRAIN if top.gt[g] == 1 else self.read(g * GRAIN, GRAIN)
                grain = bytearray(below)
                grain[goff : goff + n] = piece
                new.append((g, grain))
            pos += n
        for i in range(0, len(new), RUN * 8):
            batch = new[i : i + RUN * 8]
            top.append_grains(batch, durable=False)
            for g, _ in batch:
                self.owner[g] = t

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero a range; the base punches holes, a delta skips grains that already read 0."""
        top = self.top
        if isinstance(top, FlatBase):
            if not top.punch(offset, length):
                self._write_zero_bytes(offset, length)
            return
        pos, end = offset, offset + length
        while pos < end:
            g, goff = divmod(pos, GRAIN)
            n = min(GRAIN - goff, end - pos)
            if n == GRAIN and top.gt[g] <= 1 and self.read(pos, GRAIN) == ZERO_GRAIN:
                pass  # already zero below: nothing to store
            else:
                self.write(pos, ZERO_GRAIN[:n])
            pos += n

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        pos, end = offset, offset + length
        while pos < end:
            n = min(RUN * GRAIN, end - pos)
            self.write(pos, bytes(n))
            pos += n


def _contiguous(gt: Any, grains: list[int]) -> Iterator[tuple[int, int, int]]:
    """(first grain, its sector, count) runs where grains and their sectors both follow on."""
    i = 0
    while i < len(grains):
        g, s = grains[i], gt[grains[i]]
        n = 1
        while (
            n < RUN
            and i + n < len(grains)
            and grains[i + n] == g + n
            and gt[g + n] == (s + n * GRAIN_SECTORS if s != 1 else 1)
        ):
            n += 1
        yield g, s, n
        i += n


def merge_up(src: SparseExtent, dst: Layer, progress: Progress | None = None) -> None:
    """Copy every grain ``src`` holds into ``dst`` (its parent), overwriting, then sync."""
    grains = allocated(src)
    total, done = len(grains) * GRAIN, 0
    pending: list[tuple[int, bytes | bytearray | memoryview]] = []
    for g, s, n in _contiguous(src.gt, grains):
        data = bytes(n * GRAIN) if s == 1 else src.read_at(s, 0, n * GRAIN)
        if isinstance(dst, FlatBase):
            dst.write(g * GRAIN, data)
        else:
            mv = memoryview(data)
            for k in range(n):
                piece = mv[k * GRAIN : (k + 1) * GRAIN]
                if dst.gt[g + k] > 1:
                    dst.overwrite(g + k, 0, piece)
                else:
                    pending.append((g + k, piece))
            if len(pending) >= RUN:
                dst.append_grains(pending)
                pending = []
        done += n * GRAIN
        if progress:
            progress(done, total)
    if pending:
        assert isinstance(dst, SparseExtent)
        dst.append_grains(pending)
    dst.sync()
    if progress:
        progress(total, total)


def flatten(chain: Chain, progress: Progress | None = None) -> None:
    """Write every grain the deltas of ``chain`` hold into its base, in one pass, then sync."""
    base = chain.base
    grains = [g for g, o in enumerate(chain.owner) if o]
    total, done = len(grains) * GRAIN, 0
    for g, n in chain.runs_over(grains):
        base.write(g * GRAIN, chain.read(g * GRAIN, n * GRAIN))
        done += n * GRAIN
        if progress:
            progress(done, total)
    base.sync()
    if progress:
        progress(total, total)
