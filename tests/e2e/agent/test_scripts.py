"""backupScripts.d through the daemon: order, arguments, freezeFail, timeouts, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def make_scripts(
    folder: Path, trace: Path, names: list[str], fail: str = "", hang: str = ""
) -> None:
    folder.mkdir(mode=0o755, exist_ok=True)
    for name in names:
        body = f'echo "{name} $1" >> {trace}\n'
        if name == fail:
            body += '[ "$1" = freeze ] && { echo "cannot lock" >&2; exit 2; }\n'
        if name == hang:
            body += '[ "$1" = freeze ] && sleep 60\n'
        p = folder / name
        p.write_text(f"#!/bin/sh\n{body}exit 0\n")
        p.chmod(0o755)


def run_cycle(agent) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    return agent.call("freeze", {"label": "x"}), agent.call("thaw")


def test_scripts_freeze_in_byte_order_and_thaw_in_reverse(start_agent, short_tmp) -> None:
    trace = short_tmp / "trace"
    folder = short_tmp / "scripts"
    make_scripts(folder, trace, ["b", "A", "10-db", "a"])
    (folder / "a~").write_text("#!/bin/sh\necho backup >> " + str(trace) + "\n")
    os.chmod(folder / "a~", 0o755)
    agent = start_agent({"scripts": {"dir": str(folder), "legacy_dir": None}})
    frozen, thawed = run_cycle(agent)
    assert trace.read_text().split("\n")[:-1] == [
        "10-db freeze",
        "A freeze",
        "a freeze",
        "b freeze",
        "b thaw",
        "a thaw",
        "A thaw",
        "10-db thaw",
    ]
    assert thawed["return"]["consistency"] == "application"
    assert any("a~: editor backup" in n for n in frozen["return"]["notes"])


def test_a_failing_script_gives_freezefail_to_those_that_froze_only(start_agent, short_tmp) -> None:
    trace = short_tmp / "trace"
    make_scripts(short_tmp / "scripts", trace, ["1", "2", "3", "4"], fail="3")
    agent = start_agent({"scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": None}})
    reply = agent.call("freeze", {"label": "x"})
    assert reply["error"]["class"] == "WriterFailed"
    assert "scripts:3" in reply["error"]["desc"] and "cannot lock" in reply["error"]["desc"]
    assert trace.read_text().split("\n")[:-1] == [
        "1 freeze",
        "2 freeze",
        "3 freeze",
        "2 freezeFail",
        "1 freezeFail",
    ]
    runs = {w["name"]: w for w in reply["error"]["data"]["report"]["writers"]}
    assert runs["scripts:3"]["artifacts"]["runs"][0]["stderr"] == "cannot lock\n"
    assert runs["scripts:4"]["state"] == "not frozen"


def test_a_hung_script_times_out_and_the_rest_get_freezefail(start_agent, short_tmp) -> None:
    trace = short_tmp / "trace"
    make_scripts(short_tmp / "scripts", trace, ["1", "2"], hang="2")
    agent = start_agent(
        {"scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": None, "timeout_seconds": 1}}
    )
    reply = agent.call("freeze", {"label": "x"})
    assert reply["error"]["class"] == "WriterTimeout"
    assert trace.read_text().split("\n")[:-1] == ["1 freeze", "2 freeze", "1 freezeFail"]
    assert agent.call("status")["return"]["state"] == "idle"


def test_legacy_pre_freeze_runs_first_and_post_thaw_last(start_agent, short_tmp) -> None:
    trace = short_tmp / "trace"
    make_scripts(short_tmp / "scripts", trace, ["50-app"])
    legacy = short_tmp / "sbin"
    legacy.mkdir(mode=0o755)
    for name in ("pre-freeze-script", "post-thaw-script"):
        (legacy / name).write_text(f'#!/bin/sh\necho "{name} $1" >> {trace}\n')
        (legacy / name).chmod(0o755)
    agent = start_agent({"scripts": {"dir": str(short_tmp / "scripts"), "legacy_dir": str(legacy)}})
    run_cycle(agent)
    assert trace.read_text().split("\n")[:-1] == [
        "pre-freeze-script freeze",
        "50-app freeze",
        "50-app thaw",
        "post-thaw-script thaw",
    ]


def test_an_unsafe_script_is_never_run(start_agent, short_tmp) -> None:
    trace = short_tmp / "trace"
    folder = short_tmp / "scripts"
    make_scripts(folder, trace, ["ok", "writable"])
    (folder / "writable").chmod(0o777)
    os.chown(folder / "ok", 65534, 65534)
    agent = start_agent({"scripts": {"dir": str(folder), "legacy_dir": None}})
    frozen, _ = run_cycle(agent)
    assert not trace.exists()
    notes = " ".join(frozen["return"]["notes"])
    assert "owned by uid 65534" in notes and "writable by group or others" in notes


def test_a_concurrent_script_freezes_in_prepare_and_thaws_after_every_release(
    start_agent, short_tmp, ext4
) -> None:
    """``scripts.concurrent``: its freeze runs before any lock and its thaw after the last
    release, so its share of the blocked window is nothing; an ordinary script's freeze and
    thaw are inside the window and the report says how much of it they took."""
    trace = short_tmp / "trace"
    folder = short_tmp / "scripts"
    make_scripts(folder, trace, ["10-inside", "20-beside"])
    for name in ("10-inside", "20-beside"):  # each takes 0.3 s to freeze
        path = folder / name
        path.write_text(
            path.read_text().replace("exit 0", '[ "$1" = freeze ] && sleep 0.3\nexit 0')
        )
    agent = start_agent(
        {
            "scripts": {"dir": str(folder), "legacy_dir": None, "concurrent": ["20-beside"]},
            "filesystems": {"mounts": [ext4.path]},
        }
    )
    frozen, thawed = run_cycle(agent)
    assert "return" in thawed, thawed
    assert trace.read_text().split("\n")[:-1] == [
        "20-beside freeze",
        "10-inside freeze",
        "10-inside thaw",
        "20-beside thaw",
    ]
    report = thawed["return"]
    shares = {w["name"]: w["blocked_share_ms"] for w in report["writers"]}
    assert shares["scripts:10-inside"] >= 300
    assert shares["scripts:20-beside"] < shares["scripts:10-inside"] - 250
    beside = next(w for w in report["writers"] if w["name"] == "scripts:20-beside")
    t = report["timings"]
    assert beside["at_ms"]["prepare"] + beside["prepare_ms"] <= t["prepare_ms"] + 0.2
    assert beside["at_ms"]["finish"] >= t["prepare_ms"] + t["blocked_ms"] - 0.2  # rounding
    assert report["consistency"] == "application"
