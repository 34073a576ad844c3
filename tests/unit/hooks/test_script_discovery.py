"""backupScripts.d discovery and running, with VMware Tools' order and our safety rules."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from hooks import scripts


def script(folder: Path, name: str, body: str = "exit 0", mode: int = 0o755) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "backupScripts.d"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def test_scripts_run_in_byte_order_and_leftovers_are_skipped_with_a_reason(folder: Path) -> None:
    for name in ("b-second", "B-upper", "a-first", "10-num", "_under"):
        script(folder, name)
    for name in (".hidden", "old~", "x.dpkg-old", "y.dpkg-dist", "z.rpmnew", "w.rpmsave"):
        script(folder, name)
    script(folder, "not-exec", mode=0o644)
    (folder / "subdir").mkdir()
    found, skipped = scripts.discover(str(folder), require_root=False)
    assert [Path(p).name for p in found] == ["10-num", "B-upper", "_under", "a-first", "b-second"]
    reasons = {Path(p).name: r for p, r in skipped}
    assert reasons[".hidden"] == "dotfile"
    assert reasons["old~"] == "editor backup"
    assert "package-manager" in reasons["x.dpkg-old"] and "package-manager" in reasons["z.rpmnew"]
    assert reasons["not-exec"] == "not executable"
    assert reasons["subdir"] == "directory"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_scripts_someone_else_could_change_are_refused(folder: Path) -> None:
    script(folder, "group-writable", mode=0o775)
    other = script(folder, "foreign")
    os.chown(other, 65534, 65534)
    _, skipped = scripts.discover(str(folder), require_root=True)
    reasons = {Path(p).name: r for p, r in skipped}
    assert "writable by group or others" in reasons["group-writable"]
    assert "owned by uid 65534" in reasons["foreign"]
    folder.chmod(0o777)
    script(folder, "fine")
    found, skipped = scripts.discover(str(folder), require_root=True)
    assert (
        found == []
        and "its folder is writable" in dict((Path(p).name, r) for p, r in skipped)["fine"]
    )


def test_a_script_gets_its_argument_and_its_output_is_kept_bounded(folder: Path) -> None:
    s = script(
        folder,
        "talk",
        'echo "arg=$1 label=$QUIESCE_LABEL"; head -c 100000 /dev/zero | tr "\\0" x; '
        "echo err >&2; exit 3",
    )
    result = scripts.run_script(str(s), "freeze", 10, "nightly")
    assert result.exit_code == 3
    assert result.stdout.startswith("arg=freeze label=nightly")
    assert len(result.stdout) == scripts.OUTPUT_LIMIT
    assert result.stderr == "err\n"


def test_a_hung_script_is_killed_with_its_whole_process_group(folder: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    s = script(folder, "hang", f"sleep 300 & echo $! > {pidfile}; sleep 300")
    start = time.monotonic()
    result = scripts.run_script(str(s), "freeze", 0.5)
    assert result.timed_out and time.monotonic() - start < 10
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_backgrounded_child_holding_the_pipes_does_not_stall_the_run(folder: Path) -> None:
    s = script(folder, "bg", "sleep 30 & exit 0")
    start = time.monotonic()
    result = scripts.run_script(str(s), "freeze", 10)
    assert result.exit_code == 0 and time.monotonic() - start < 3


def test_without_pidfd_the_run_still_collects_output_and_honours_the_timeout(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int) -> int:  # as on kernels before 5.3
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    done = scripts.run_script(str(script(folder, "talk", "echo hi; exit 4")), "thaw", 10)
    assert (done.exit_code, done.stdout, done.timed_out) == (4, "hi\n", False)
    hung = scripts.run_script(str(script(folder, "hang", "sleep 300")), "freeze", 0.3)
    assert hung.timed_out and hung.exit_code is not None


def test_legacy_scripts_wrap_the_folder(folder: Path, tmp_path: Path) -> None:
    legacy = tmp_path / "sbin"
    legacy.mkdir(mode=0o755)
    legacy.chmod(0o755)
    script(legacy, "pre-freeze-script")
    script(legacy, "post-thaw-script")
    script(folder, "50-app")
    notes: list[str] = []
    writers = scripts.build(str(folder), 5, str(legacy), False, notes)
    assert [w.name for w in writers] == ["pre-freeze-script", "50-app"]
    assert writers[0].thaw_path.endswith("post-thaw-script")


def test_concurrent_names_mark_their_scripts_and_a_missing_one_is_noted(folder: Path) -> None:
    script(folder, "10-db")
    script(folder, "20-cache")
    notes: list[str] = []
    writers = scripts.build(str(folder), 5, None, False, notes, ("20-cache", "30-gone"))
    assert [(w.name, w.concurrent) for w in writers] == [("10-db", False), ("20-cache", True)]
    assert writers[1].describe()["concurrent"] is True
    assert any("scripts.concurrent names '30-gone'" in n for n in notes)
