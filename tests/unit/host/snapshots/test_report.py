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
    assert table[0].split() == [
        "writer",
        "state",
        "prepare",
        "lock",
        "release",
        "finish",
        "blocked",
        "share",
        "error",
    ]
    assert table[1].split() == ["mysql:main", "thawed", "30.0", "8.0", "5.0", "-", "-"]
    assert writers_table({"report": {}}) == ["(no writer report)"]
    arts = artifacts_lines(record())
    assert arts[0] == "mysql:main: backup_stage lock; binlog binlog.000002:1234 GTID 0-1-7"
    assert arts[1].startswith("postgres:main: backup 0/2 .. 0/3 (WAL A .. B)")


def test_the_freeze_budget_leaves_room_before_the_ceiling() -> None:
    assert freeze_budget(60) == 50  # a 10 s reserve at most
    assert freeze_budget(8) == 6  # a quarter of the ceiling
    assert freeze_budget(2) == 1  # at least 1 s
    assert freeze_budget(1) == 0.5  # and never nothing to freeze in


def timed_record() -> dict[str, Any]:
    """A record from an agent that says when each step started (``at_ms``, its clock) and how
    long clients were blocked; the freeze request took 1 ms each way."""
    rec = record()
    agent = rec["report"]["agent"]
    agent["timings"] = {
        "prepare_ms": 40.0,
        "freeze_ms": 18.0,
        "held_ms": 40.0,
        "blocked_ms": 45.0,
        "finish_ms": 20.0,
        "thaw_at_ms": 73.0,
    }
    my, fs = agent["writers"]
    my.update(at_ms={"prepare": 0.0, "freeze": 40.0, "thaw": 80.0}, blocked_share_ms=13.0)
    fs.update(at_ms={"prepare": 0.0, "freeze": 48.0, "thaw": 73.0}, blocked_share_ms=30.0)
    agent["writers"].append(
        {
            "name": "postgres:main",
            "state": "thawed",
            "prepare_ms": 35.0,
            "freeze_ms": 0.0,
            "thaw_ms": 0.0,
            "finish_ms": 20.0,
            "at_ms": {"prepare": 0.0, "freeze": 58.0, "thaw": 85.0, "finish": 85.0},
            "blocked_share_ms": 0.0,
            "error": None,
        }
    )
    rec["report"]["host"].update(agent_blocked_ms=45.0, cut_to_thaw_ms=1.0)
    return rec


def test_the_timeline_places_the_agents_steps_from_its_own_clock() -> None:
    lines = timeline(timed_record())
    by_text = {line[12:]: (line[0], float(line[1:10])) for line in lines}
    # the freeze reply came 60 ms after it was sent, the agent held after 58: 1 ms each way
    assert by_text["first lock: clients may wait from here"] == ("~", 41.0)
    assert by_text["mysql:main: lock done (8.0 ms)"] == ("~", 49.0)
    assert by_text["last lock released: clients run again (blocked 45.0 ms)"] == ("~", 86.0)
    assert by_text["postgres:main: finish done (20.0 ms)"] == ("~", 106.0)
    assert by_text["thaw arrived at the agent"] == ("~", 74.0)
    assert (
        by_text["snapshot switched (10.0 ms, client I/O paused 11.5 ms): the cut is recorded"][1]
        == 71.0
    )
    assert by_text["thaw sent (1.0 ms after the cut)"] == (" ", 72.0)
    times = [float(line[1:10]) for line in lines]
    assert times == sorted(times)


def test_the_summary_leads_with_how_long_clients_were_blocked_and_by_whom() -> None:
    head = summary(timed_record())
    assert head[1] == (
        "clients blocked (first lock -> last lock released, agent clock): 45.0 ms  "
        "[mysql:main 13.0, filesystems:listed 30.0, host: switch and round trips 2.0 ms]"
    )
    assert any("blocked" in line for line in full(timed_record()))
