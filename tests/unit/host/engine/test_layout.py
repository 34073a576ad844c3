"""Where everything sits in a new sparse delta, from the format in
docs/internals/disk-format.md: with n = ceil(capacity / 65536) grain tables of 4 sectors and
d = ceil(4n / 512) directory sectors, rgd = 21, rgt = 21 + d, gd = rgt + 4n, gt = gd + d,
overHead = roundup(gt + 4n, 128). All in 512-byte sectors."""

from __future__ import annotations

import pytest

from host.engine.sparse import GRAIN, MAX_CAPACITY, SECTOR, Layout

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "tables", "rgd", "rgt", "gd", "gt", "overhead"),
    [
        # one grain: one table, one directory sector; the metadata fits in the first grain
        (GRAIN, 1, 21, 22, 26, 27, 128),
        # the engine tests' disk: a second table, partly used
        (40 * MiB + GRAIN, 2, 21, 22, 30, 31, 128),
        # what qemu-img create -f vmdk writes for 1 GiB
        (1024 * MiB, 32, 21, 22, 150, 151, 384),
        # 129 tables: each directory (4n = 516 bytes) takes two sectors
        (129 * 512 * GRAIN, 129, 21, 23, 539, 541, 1152),
        # the largest disk: 65536 tables, 512 directory sectors
        (MAX_CAPACITY, 65536, 21, 533, 262677, 263189, 525440),
    ],
    ids=["64KiB", "40MiB+64KiB", "1GiB", "129-tables", "largest"],
)
def test_layout_of_a_new_delta(
    size: int, tables: int, rgd: int, rgt: int, gd: int, gt: int, overhead: int
) -> None:
    capacity = size // SECTOR
    assert Layout.of(capacity) == Layout(capacity, tables, rgd, rgt, gd, gt, overhead)


def test_the_tables_end_inside_the_metadata_and_grains_start_grain_aligned() -> None:
    for size in (GRAIN, 40 * MiB + GRAIN, 1024 * MiB, MAX_CAPACITY):
        lay = Layout.of(size // SECTOR)
        assert lay.gt + 4 * lay.num_gts <= lay.overhead
        assert lay.overhead % 128 == 0


def test_the_largest_disk_is_just_under_2_tib() -> None:
    assert MAX_CAPACITY == 2 * 1024**4 - GRAIN  # u32 sector offsets in the grain tables
