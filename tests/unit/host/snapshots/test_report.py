"""How a quiesced snapshot's record reads: the timeline, the held window, the writers."""

from __future__ import annotations

from typing import Any

from host.snapshots.cycle import freeze_budget
from host.snapshots.report import artifacts_lines, full, summary, timeline, writers_table


def record(confirmed: bool = True) -> dict[str, Any]:
    """A record as the cycle leaves it: the agent's report and the host's measured events."""
    events = [
        ("ping", 0.0),
        ("freeze_sent", 2.0),
        ("frozen", 62.0),
        ("switch_start", 63.0),
        ("switch_end", 73.0),
        ("thaw_sent", 74.0),
        ("thawed", 104.0),
    ]
    return {
        "name": "nightly",
        "created": "2026-12-02T10:00:00Z",
        "layer": "disk.vmdk",
        "consistency": "application" if confirmed else "crash",
        "report": {
            "agent": {
                "timings": {"prepare_ms": 40.0, "freeze_ms": 18.0, "held_ms": 70.0},
                "writers": [
                    {
                        "name": "mysql:main",
                        "state": "thawed",
                        "prepare_ms": 30.0,
                        "freeze_ms": 8.0,
                        "thaw_ms": 5.0,
                        "error": None,
                    },
                    {
                        "name": "filesystems:listed",
                        "state": "thawed",
                        "prepare_ms": 40.0,
                        "freeze_ms": 10.0,
                        "thaw_ms": 20.0,
                        "error": None,
                    },
                ],
            },
            "host": {
                "endpoint": "unix:/run/a.sock",
                "confirmed": confirmed,
                "window_ms": 102.0,
                "split": {
                    "prepare_ms": 40.0,
                    "lock_ms": 18.0,
                    "switch_ms": 10.0,
                    "release_ms": 30.0,
                },
                "agent_held_ms": 70.0,
                "switch": {"paused_ms": 11.5},
                "events": [{"event": e, "t_ms": t} for e, t in events],
                "fallback": None if confirmed else "the thaw was not confirmed",
                "warnings": [] if confirmed else ["snapshot 'nightly' is NOT quiesced"],
            },
        },
        "artifacts": {
            "postgres:main": {
                "backup_label": "START WAL LOCATION: 0/2000028",
                "start_lsn": "0/2",
                "stop_lsn": "0/3",
                "wal_file_start": "A",
                "wal_file_stop": "B",
            },
            "mysql:main": {
                "lock": "backup_stage",
                "binlog_file": "binlog.000002",
                "binlog_position": 1234,
                "gtid": "0-1-7",
            },
        },
    }


def test_the_timeline_runs_from_the_freeze_and_marks_what_it_placed_from_durations() -> None:
    lines = timeline(record())
    texts = [line[12:] for line in lines]  # "~  12345.6  text": mark, time, text
    assert texts[0].startswith("ping") and lines[0].strip().startswith("-2.0")
    assert texts.index("freeze sent") < texts.index("all writers hold: freeze reply")
    locks = [line for line in lines if "locked" in line]
    assert [line[0] for line in locks] == ["~", "~"]  # placed, not measured
    assert "mysql:main: locked (8.0 ms)" in locks[0] and locks[0][1:10].strip() == "48.0"
    assert any("client I/O paused 11.5 ms" in line for line in lines)
    assert lines[-1].endswith("thaw reply: confirmed")
    times = [float(line[1:10]) for line in lines]
    assert times == sorted(times)


def test_an_unconfirmed_quiesce_says_so_and_releases_are_not_placed() -> None:
    lines = timeline(record(confirmed=False))
    assert lines[-1].endswith("thaw reply: NOT confirmed")
    assert not any("released" in line for line in lines)
    head = summary(record(confirmed=False))
    assert head[0] == "consistency: crash  (the quiesce was NOT confirmed)"
    assert "fallback: the thaw was not confirmed" in head
    assert "WARNING: snapshot 'nightly' is NOT quiesced" in full(record(confirmed=False))


def test_the_summary_gives_the_held_window_and_its_split() -> None:
    head = summary(record())
    assert head[1] == (
        "held window (freeze sent -> thaw reply): 102.0 ms  "
        "[prepare 40.0, lock 18.0, switch 10.0, release 30.0 ms]"
    )
    assert head[2].endswith("70.0 ms")


def test_writers_and_artifacts_read_as_a_sysadmin_needs_them() -> None:
    table = writers_table(record())
    assert table[0].split() == ["writer", "state", "prepare", "lock", "release", "error"]
    assert table[1].split() == ["mysql:main", "thawed", "30.0", "8.0", "5.0"]
    assert writers_table({"report": {}}) == ["(no writer report)"]
    arts = artifacts_lines(record())
    assert arts[0] == "mysql:main: backup_stage lock; binlog binlog.000002:1234 GTID 0-1-7"
    assert arts[1].startswith("postgres:main: backup 0/2 .. 0/3 (WAL A .. B)")


def test_the_freeze_budget_leaves_room_before_the_ceiling() -> None:
    assert freeze_budget(60) == 50  # a 10 s reserve at most
    assert freeze_budget(8) == 6  # a quarter of the ceiling
    assert freeze_budget(2) == 1  # at least 1 s
    assert freeze_budget(1) == 0.5  # and never nothing to freeze in
