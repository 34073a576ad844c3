"""The freeze state machine, with writers that record what was done to them.

The test writers implement the real Writer interface; the assertions are what an operator
would check: the order things were locked and released, who got freezeFail, and the guest
ending thawed whatever happens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from agent.errors import NotConsistent, StateError
from agent.session import Session, State
from hooks.base import Operation, Stage, Writer
from hooks.errors import WriterError, WriterTimeout


class Recorder(Writer):
    """A writer that logs every call into a shared journal; can fail or hang on a step."""

    def __init__(
        self, name: str, stage: Stage, journal: list[str], fail: str = "", hang: str = ""
    ) -> None:
        super().__init__(name)
        self.stage = stage  # type: ignore[misc]
        self.kind = {
            Stage.SCRIPTS: "scripts",
            Stage.MYSQL: "mysql",
            Stage.POSTGRES: "postgres",
            Stage.FILESYSTEMS: "filesystems",
        }[stage]  # type: ignore[misc]
        self.journal, self.fail, self.hang = journal, fail, hang
        self.released = threading.Event()
        self.locked = False

    def _step(self, step: str) -> None:
        self.journal.append(f"{step} {self.name}")
        if step == self.hang:
            self.released.wait(10)
        if step == self.fail:
            raise WriterError(self.qualified_name, f"{step} failed on purpose")

    def prepare(self, op: Operation) -> None:
        self._step("prepare")

    def freeze(self, op: Operation) -> None:
        self._step("freeze")
        self.locked = True

    def thaw(self, op: Operation) -> None:
        self.locked = False
        self._step("thaw")

    def finish(self, op: Operation) -> None:
        self._step("finish")

    def abort(self, op: Operation) -> None:
        self.locked = False
        self._step("abort")

    def emergency_release(self) -> None:
        self.journal.append(f"release {self.name}")
        self.locked = False
        self.released.set()

    def artifacts(self) -> dict[str, Any]:
        return {"name": self.name}


class FakeHooks:
    def __init__(self) -> None:
        self.armed: float | None = None
        self.logging_held: list[bool] = []

    def hold(self, path: str, held: bool) -> None: ...
    def arm(self, deadline: float) -> None:
        self.armed = deadline

    def disarm(self) -> None:
        self.armed = None

    def ensure_guard(self) -> None: ...
    def frozen_logging(self, frozen: bool) -> None:
        self.logging_held.append(frozen)


def make(
    writers: list[Writer], ceiling: float = 60, timeout: float = 5
) -> tuple[Session, FakeHooks]:
    hooks = FakeHooks()
    return Session(lambda names: (list(writers), []), hooks, ceiling, timeout), hooks


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_writers_lock_in_stage_order_and_release_in_reverse() -> None:
    j: list[str] = []
    ws = [
        Recorder("fs", Stage.FILESYSTEMS, j),
        Recorder("pg", Stage.POSTGRES, j),
        Recorder("a", Stage.SCRIPTS, j),
        Recorder("b", Stage.SCRIPTS, j),
        Recorder("my", Stage.MYSQL, j),
    ]
    s, hooks = make(ws)

    async def cycle() -> tuple[dict[str, Any], dict[str, Any]]:
        frozen = await s.freeze("nightly")
        return frozen, await s.thaw()

    frozen, thawed = run(cycle())
    locks = [e for e in j if e.startswith("freeze")]
    releases = [e for e in j if e.startswith("thaw")]
    assert locks == ["freeze a", "freeze b", "freeze my", "freeze pg", "freeze fs"]
    assert releases == ["thaw fs", "thaw pg", "thaw my", "thaw b", "thaw a"]
    assert frozen["outcome"] == "frozen" and thawed["outcome"] == "thawed"
    assert thawed["consistency"] == "application"
    assert all(w["state"] == "thawed" for w in thawed["writers"])
    assert thawed["writers"][0]["artifacts"] == {"name": "a"}
    assert s.state is State.IDLE and hooks.armed is None
    assert hooks.logging_held == [True, False]


def test_a_failed_freeze_rolls_back_what_was_locked_in_reverse() -> None:
    j: list[str] = []
    ws = [
        Recorder("a", Stage.SCRIPTS, j),
        Recorder("my", Stage.MYSQL, j),
        Recorder("pg", Stage.POSTGRES, j, fail="freeze"),
        Recorder("fs", Stage.FILESYSTEMS, j),
    ]
    s, hooks = make(ws)
    with pytest.raises(WriterError) as err:
        run(s.freeze("x"))
    assert "postgres:pg" in str(err.value)
    after = j[j.index("freeze pg") + 1 :]
    # fs only prepared: it gets the chance to free what prepare took, and is reported so
    assert after == ["abort fs", "abort pg", "abort my", "abort a"]
    report = err.value.data["report"]
    assert report["outcome"] == "failed" and report["consistency"] == "crash"
    states = {w["name"]: w["state"] for w in report["writers"]}
    assert states == {
        "scripts:a": "aborted",
        "mysql:my": "aborted",
        "postgres:pg": "failed",
        "filesystems:fs": "not frozen",
    }
    assert s.state is State.IDLE and hooks.armed is None


def test_a_failed_prepare_locks_nothing() -> None:
    j: list[str] = []
    ws = [Recorder("a", Stage.SCRIPTS, j), Recorder("pg", Stage.POSTGRES, j, fail="prepare")]
    s, _ = make(ws)
    with pytest.raises(WriterError):
        run(s.freeze("x"))
    assert not any(e.startswith("freeze") for e in j)
    assert s.state is State.IDLE


def test_a_hanging_writer_is_cut_off_by_the_budget_and_everything_is_undone() -> None:
    j: list[str] = []
    ws = [Recorder("a", Stage.SCRIPTS, j), Recorder("pg", Stage.POSTGRES, j, hang="freeze")]
    s, _ = make(ws, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(WriterTimeout):
        run(s.freeze("x"))
    assert time.monotonic() - start < 5
    assert "release pg" in j and j[-1] == "abort a"
    assert not ws[0].locked


def test_a_second_freeze_is_refused_and_thaw_needs_a_freeze() -> None:
    j: list[str] = []
    s, _ = make([Recorder("a", Stage.SCRIPTS, j)])

    async def scenario() -> None:
        with pytest.raises(StateError, match="nothing is frozen"):
            await s.thaw()
        await s.freeze("one")
        with pytest.raises(StateError, match="already frozen"):
            await s.freeze("two")
        await s.thaw()

    run(scenario())
    assert j.count("freeze a") == 1


def test_abort_after_a_freeze_gives_freezefail_semantics() -> None:
    j: list[str] = []
    s, _ = make([Recorder("a", Stage.SCRIPTS, j), Recorder("fs", Stage.FILESYSTEMS, j)])

    async def scenario() -> dict[str, Any]:
        await s.freeze("x")
        return await s.abort()

    report = run(scenario())
    assert j[-2:] == ["abort fs", "abort a"]
    assert report["outcome"] == "aborted" and report["consistency"] == "crash"


def test_the_ceiling_releases_everything_and_the_late_thaw_says_not_consistent() -> None:
    j: list[str] = []
    ws = [Recorder("a", Stage.SCRIPTS, j), Recorder("fs", Stage.FILESYSTEMS, j)]
    s, hooks = make(ws, ceiling=1, timeout=1)

    async def scenario() -> None:
        await s.freeze("x")
        assert 0 < s.status()["seconds_left"] <= 1
        await asyncio.sleep(1.5)
        assert s.state is State.IDLE
        with pytest.raises(NotConsistent, match="NOT consistent") as err:
            await s.thaw()
        assert err.value.data["report"]["ceiling_hit"] is True
        with pytest.raises(StateError):  # told once; after that, nothing is frozen
            await s.thaw()

    run(scenario())
    assert j[-2:] == ["release fs", "release a"]
    assert not any(w.locked for w in ws)
    assert hooks.armed is None


def test_the_ceiling_fires_even_when_the_event_loop_is_blocked() -> None:
    j: list[str] = []
    ws = [Recorder("fs", Stage.FILESYSTEMS, j)]
    s, _ = make(ws, ceiling=1, timeout=1)

    async def scenario() -> None:
        await s.freeze("x")
        time.sleep(1.5)  # a stuck main loop: nothing async runs
        assert not ws[0].locked

    run(scenario())
    assert "release fs" in j


def test_a_failing_thaw_still_thaws_the_rest_and_reports_it() -> None:
    j: list[str] = []
    ws = [
        Recorder("a", Stage.SCRIPTS, j),
        Recorder("pg", Stage.POSTGRES, j, fail="thaw"),
        Recorder("fs", Stage.FILESYSTEMS, j),
    ]
    s, _ = make(ws)

    async def scenario() -> None:
        await s.freeze("x")
        with pytest.raises(WriterError, match="thaw finished with errors") as err:
            await s.thaw()
        states = {w["name"]: w["state"] for w in err.value.data["report"]["writers"]}
        assert states == {
            "scripts:a": "thawed",
            "postgres:pg": "failed",
            "filesystems:fs": "thawed",
        }

    run(scenario())
    assert [e for e in j if e.startswith("thaw")] == ["thaw fs", "thaw pg", "thaw a"]


def test_filesystems_alone_give_a_filesystem_consistent_snapshot() -> None:
    j: list[str] = []
    s, _ = make([Recorder("fs", Stage.FILESYSTEMS, j)])

    async def scenario() -> dict[str, Any]:
        await s.freeze("x")
        return await s.thaw()

    assert run(scenario())["consistency"] == "filesystem"


class Broken(Recorder):
    """A writer with a bug: a step raises something that is not a WriterError."""

    def _step(self, step: str) -> None:
        self.journal.append(f"{step} {self.name}")
        if step == self.fail:
            raise RuntimeError(f"{step} has a bug")


def test_a_failed_thaw_names_the_writer_in_full() -> None:
    j: list[str] = []
    ws = [Recorder("pg", Stage.POSTGRES, j, fail="thaw"), Recorder("fs", Stage.FILESYSTEMS, j)]
    s, _ = make(ws)

    async def scenario() -> WriterError:
        await s.freeze("x")
        with pytest.raises(WriterError) as err:
            await s.thaw()
        return err.value

    err = run(scenario())
    assert err.writer == "postgres:pg" and err.data["writer"] == "postgres:pg"


def test_a_writer_bug_in_prepare_names_that_writer() -> None:
    j: list[str] = []
    s, _ = make([Recorder("a", Stage.SCRIPTS, j), Broken("my", Stage.MYSQL, j, fail="prepare")])
    with pytest.raises(WriterError) as err:
        run(s.freeze("x"))
    assert err.value.writer == "mysql:my"
    assert "prepare has a bug" in str(err.value)


def test_a_thaw_that_came_in_time_keeps_the_snapshot_consistent_however_long_it_takes() -> None:
    j: list[str] = []
    slow = Recorder("pg", Stage.POSTGRES, j, hang="thaw")  # its release waits for the ceiling
    s, _ = make([slow, Recorder("fs", Stage.FILESYSTEMS, j)], ceiling=1, timeout=1)

    async def scenario() -> dict[str, Any]:
        await s.freeze("x")
        return await s.thaw()  # arrives at once; pg's release then runs past the ceiling

    report = run(scenario())
    assert report["consistency"] == "application" and not report["ceiling_hit"]
    assert report["released_late"] is True
    assert any("ran past the 1 s ceiling" in n for n in report["notes"])
    assert "release pg" in j  # the ceiling cut the stuck release
    assert s.state is State.IDLE


class SlowScript(Recorder):
    """A script whose emergency release (its thaw) runs until the test lets it go."""

    def __init__(self, name: str, journal: list[str]) -> None:
        super().__init__(name, Stage.SCRIPTS, journal)
        self.let_go = threading.Event()

    def emergency_release(self) -> None:
        self.journal.append(f"release {self.name} starts")
        self.let_go.wait(10)
        super().emergency_release()


def test_status_answers_while_the_ceiling_runs_a_slow_thaw_script_last() -> None:
    j: list[str] = []
    script = SlowScript("slow", j)
    ws = [script, Recorder("my", Stage.MYSQL, j), Recorder("fs", Stage.FILESYSTEMS, j)]
    s, _ = make(ws, ceiling=1, timeout=1)

    async def scenario() -> dict[str, Any]:
        await s.freeze("x")
        while "release slow starts" not in j:
            await asyncio.sleep(0.01)
        status = s.status()  # the event loop: must not wait for the script
        assert not script.let_go.is_set()
        refused = None
        try:
            await s.freeze("y")
        except StateError as err:
            refused = str(err)
        script.let_go.set()
        assert refused is not None and "releasing" in refused
        while s.state is not State.IDLE:
            await asyncio.sleep(0.01)
        return dict(status)

    status = run(scenario())
    assert status["state"] == "releasing"
    assert j[j.index("release fs") :] == [
        "release fs",
        "release my",
        "release slow starts",
        "release slow",
    ]


class Slow(Recorder):
    """Its prepare takes a while and says when it is done."""

    def prepare(self, op: Operation) -> None:
        self._step("prepare")
        time.sleep(0.2)
        self.journal.append(f"prepared {self.name}")


def test_prepare_runs_the_databases_together_the_scripts_in_order_and_the_filesystems_last() -> (
    None
):
    j: list[str] = []
    ws = [
        Slow("a", Stage.SCRIPTS, j),
        Slow("b", Stage.SCRIPTS, j),
        Slow("my", Stage.MYSQL, j),
        Slow("pg", Stage.POSTGRES, j),
        Slow("fs", Stage.FILESYSTEMS, j),
    ]
    s, _ = make(ws)
    run(s.freeze("x"))
    prep = [e for e in j if e.startswith("prepare ")]
    assert j.index("prepare my") < j.index("prepared a")  # the databases do not wait for scripts
    assert j.index("prepare pg") < j.index("prepared my")  # nor for each other
    assert j.index("prepared a") < j.index("prepare b")  # scripts: one after another, in order
    assert prep[-1] == "prepare fs" and j.index("prepare fs") > j.index("prepared b")
    assert j.index("prepared fs") < j.index("freeze a")  # ...right before the first lock


def test_the_work_no_client_waits_for_comes_after_every_lock_is_released() -> None:
    j: list[str] = []
    ws = [
        Recorder("a", Stage.SCRIPTS, j),
        Recorder("my", Stage.MYSQL, j),
        Recorder("pg", Stage.POSTGRES, j),
        Recorder("fs", Stage.FILESYSTEMS, j),
    ]
    s, hooks = make(ws)

    async def cycle() -> dict[str, Any]:
        await s.freeze("x")
        return await s.thaw()

    report = run(cycle())
    after = j[j.index("thaw fs") :]
    assert after == [
        "thaw fs",
        "thaw pg",
        "thaw my",
        "thaw a",
        "finish fs",
        "finish pg",
        "finish my",
        "finish a",
    ]
    t = report["timings"]
    assert t["blocked_ms"] is not None and t["held_ms"] is not None
    assert t["held_ms"] <= t["blocked_ms"]
    assert t["finish_ms"] is not None and t["thaw_at_ms"] is not None
    for w in report["writers"]:
        assert w["blocked_share_ms"] == pytest.approx(w["freeze_ms"] + w["thaw_ms"], abs=0.2)
        assert w["at_ms"]["finish"] >= t["prepare_ms"] + t["blocked_ms"] - 0.2  # rounding
        assert w["at_ms"]["prepare"] < t["prepare_ms"]
    assert hooks.armed is None


def test_a_failed_prepare_undoes_what_the_others_prepared_and_blocks_nobody() -> None:
    j: list[str] = []
    ws = [
        Recorder("my", Stage.MYSQL, j, fail="prepare"),
        Recorder("pg", Stage.POSTGRES, j),  # its backup started in prepare
        Recorder("fs", Stage.FILESYSTEMS, j),
    ]
    s, _ = make(ws)
    with pytest.raises(WriterError) as err:
        run(s.freeze("x"))
    assert "abort pg" in j and "prepare fs" not in j and "abort fs" not in j
    report = err.value.data["report"]
    assert report["timings"]["blocked_ms"] is None
    assert all("blocked_share_ms" not in w for w in report["writers"])
