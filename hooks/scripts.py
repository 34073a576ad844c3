"""backupScripts.d writers, with VMware Tools semantics.

Executables in ``scripts.dir`` run in byte-wise name order (strcmp, not locale order) with
the argument ``freeze``, in reverse with ``thaw``; when a freeze fails, the scripts whose
``freeze`` completed get ``freezeFail`` in reverse (the failing one gets nothing). The legacy
``pre-freeze-script`` runs first on freeze and ``post-thaw-script`` last on thaw/freezeFail.

Unlike VMware Tools we skip dotfiles, editor backups and package-manager leftovers, refuse
scripts an unprivileged user could have changed, give each script a timeout, and kill its
whole process group when it runs out.

A script's ``freeze`` runs inside the window clients wait in (first of the locks), by
contract. A script named in ``scripts.concurrent`` says its freeze blocks no client: its
``freeze`` then runs in prepare, concurrently with the databases' prepare (the concurrent
scripts still one after another, in byte-wise order), and its ``thaw`` after every lock of
the cycle is released, so it adds nothing to the time clients are blocked.

Raises: WriterError (non-zero exit on freeze or thaw, refused script), WriterTimeout.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

from common.deadline import Deadline
from hooks.base import Operation, Stage, Writer
from hooks.errors import WriterError, WriterTimeout

OUTPUT_LIMIT = 8192  # bytes kept per stream for the report
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL to a timed-out script's group
OUTPUT_GRACE = 0.2  # seconds the pipes may stay open after the script exited
LEFTOVER_SUFFIXES = (".rpmnew", ".rpmsave", ".rpmorig", ".swp", ".bak", ".orig", ".disabled")
SCRIPT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


@dataclass
class RunResult:
    """What one script run did, for the report."""

    argument: str
    exit_code: int | None
    seconds: float
    stdout: str
    stderr: str
    timed_out: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "argument": self.argument,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "timed_out": self.timed_out,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


def skip_reason(name: str) -> str | None:
    """Why a directory entry is not a script to run (by its name alone)."""
    if name.startswith("."):
        return "dotfile"
    if name.endswith("~") or (name.startswith("#") and name.endswith("#")):
        return "editor backup"
    if ".dpkg-" in name or name.endswith(LEFTOVER_SUFFIXES):
        return "package-manager or editor leftover"
    return None


def unsafe_reason(path: str, require_root: bool) -> str | None:
    """Why running ``path`` would let someone else's code run as root, or None."""
    allowed = {0} if require_root else {0, os.geteuid()}
    try:
        st = os.stat(path)
        parent = os.stat(os.path.dirname(os.path.realpath(path)))
    except OSError as err:
        return f"cannot stat: {err.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not st.st_mode & 0o111:
        return "not executable"
    if st.st_uid not in allowed:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if parent.st_uid not in allowed or parent.st_mode & 0o022:
        return "its folder is writable by group or others, or not owned by root"
    return None


def discover(directory: str, require_root: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Scripts to run in freeze order, and (path, reason) for every entry skipped."""
    try:
        names = sorted(os.listdir(os.fsencode(directory)))  # bytes: strcmp order
    except FileNotFoundError:
        return [], []
    except OSError as err:
        raise WriterError("scripts", f"cannot list {directory}: {err.strerror}") from err
    scripts, skipped = [], []
    for raw in names:
        name = os.fsdecode(raw)
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            skipped.append((path, "directory"))
            continue
        reason = skip_reason(name) or unsafe_reason(path, require_root)
        if reason:
            skipped.append((path, reason))
        else:
            scripts.append(path)
    return scripts, skipped


def _keep(buffer: bytearray, chunk: bytes) -> None:
    room = OUTPUT_LIMIT - len(buffer)
    if room > 0:
        buffer += chunk[:room]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the script's process group, then SIGKILL, then sweep its session."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for p in psutil.process_iter(["pid"]):  # anything that left the group but not the session
        try:
            if os.getsid(p.pid) == proc.pid:
                p.kill()
        except (OSError, psutil.Error):
            continue


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:  # kernels before 5.3: the loop below polls for the exit instead
        return None


def _collect(proc: subprocess.Popen[bytes], timeout: float, out: bytearray, err: bytearray) -> bool:
    """Read both output pipes and wait for the exit in one poll loop, in this thread: no
    reader threads, no Popen.wait sleep-polling (its naps grow to 50 ms); a pidfd becomes
    readable the moment the script exits. Returns True if it exited within ``timeout``.

    After the exit, the pipes get OUTPUT_GRACE to reach end-of-file: a child the script
    left in the background may hold them open, and we do not wait for it."""
    assert proc.stdout is not None and proc.stderr is not None
    pidfd = _pidfd(proc.pid)
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    poller = select.poll()
    for fd in streams if pidfd is None else (pidfd, *streams):
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    exited = False
    try:
        while streams or not exited:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            nap = left if pidfd is not None or exited else min(left, 0.005)
            for fd, _ in poller.poll(max(1, int(nap * 1000) + 1)):
                if fd == pidfd:
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    _keep(streams[fd], chunk)
                else:
                    poller.unregister(fd)
                    del streams[fd]
            if not exited and proc.poll() is not None:
                exited = True
                if pidfd is not None:
                    poller.unregister(pidfd)
                deadline = min(deadline, time.monotonic() + OUTPUT_GRACE)
        return exited
    finally:
        if pidfd is not None:
            os.close(pidfd)


def run_script(path: str, argument: str, timeout: float, label: str = "") -> RunResult:
    """Run one script in its own session with a timeout; output bounded."""
    start = time.monotonic()
    env = dict(SCRIPT_ENV, QUIESCE_LABEL=label, QUIESCE_ACTION=argument)
    proc = subprocess.Popen(
        [path, argument],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    out, err = bytearray(), bytearray()
    try:
        timed_out = not _collect(proc, max(timeout, 0.01), out, err)
        if timed_out:
            _kill_group(proc)
        proc.wait()
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return RunResult(
        argument,
        proc.returncode,
        time.monotonic() - start,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        timed_out,
    )


class ScriptWriter(Writer):
    """One backupScripts.d executable (or the legacy pre-freeze/post-thaw pair)."""

    kind = "scripts"
    stage = Stage.SCRIPTS

    def __init__(
        self, path: str, timeout: float, thaw_path: str | None = None, concurrent: bool = False
    ) -> None:
        super().__init__(os.path.basename(path))
        self.path = path
        self.thaw_path = thaw_path or path  # legacy: post-thaw-script differs
        self.timeout = timeout
        self.concurrent = concurrent  # freeze in prepare, thaw after every lock is released
        self.runs: list[RunResult] = []
        self._frozen = False
        self._undo_lock = threading.Lock()  # thaw/freezeFail vs the ceiling: one undo only

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "thaw_path": self.thaw_path,
            "timeout_seconds": self.timeout,
            "concurrent": self.concurrent,
        }

    def _run(self, op: Operation, path: str, argument: str, budget: float) -> RunResult:
        result = run_script(path, argument, budget, op.label)
        self.runs.append(result)
        op.log(
            self.qualified_name,
            f"{argument}: exit {result.exit_code} in {result.seconds:.3f} s"
            + (" (timed out, process group killed)" if result.timed_out else ""),
        )
        for line in (result.stdout + result.stderr).splitlines()[:20]:
            op.log(self.qualified_name, f"  {line}")
        return result

    def prepare(self, op: Operation) -> None:
        self.runs, self._frozen = [], False
        if self.concurrent:
            self._freeze(op)

    def freeze(self, op: Operation) -> None:
        if not self.concurrent:
            self._freeze(op)

    def thaw(self, op: Operation) -> None:
        if not self.concurrent:
            self._thaw(op)

    def finish(self, op: Operation) -> None:
        if self.concurrent:
            self._thaw(op)

    def _freeze(self, op: Operation) -> None:
        budget = min(self.timeout, op.time_left(self.qualified_name, "before freeze"))
        if not os.path.exists(self.path):  # legacy pair with only post-thaw-script
            self._frozen = True
            return
        result = self._run(op, self.path, "freeze", budget)
        if result.timed_out:
            raise WriterTimeout(
                self.qualified_name,
                f"{self.path} freeze did not finish in "
                f"{budget:.1f} s; killed it; raise scripts.timeout_seconds or fix the script",
            )
        if result.exit_code != 0:
            tail = result.stderr.strip().splitlines()[-1:] or ["no stderr"]
            raise WriterError(
                self.qualified_name, f"{self.path} freeze exited with {result.exit_code}: {tail[0]}"
            )
        self._frozen = True

    def _undo(self, op: Operation, argument: str) -> RunResult | None:
        with self._undo_lock:
            if not self._frozen:
                return None  # freeze never completed (VMware gives it nothing), or undone
            self._frozen = False
        if not os.path.exists(self.thaw_path):
            return None
        return self._run(op, self.thaw_path, argument, self.timeout)

    def _thaw(self, op: Operation) -> None:
        result = self._undo(op, "thaw")
        if result and (result.exit_code != 0 or result.timed_out):
            raise WriterError(
                self.qualified_name,
                f"{self.thaw_path} thaw failed (exit "
                f"{result.exit_code}{', timed out' if result.timed_out else ''})",
            )

    def abort(self, op: Operation) -> None:
        self._undo(op, "freezeFail")  # exit codes of freezeFail are ignored, as VMware does

    def emergency_release(self) -> None:
        """Run ``thaw`` now (bounded by the script's timeout): the one emergency release that
        may take long, so the ceiling runs scripts last and without the session's lock."""
        if self._frozen:
            try:
                self._undo(Operation(label="ceiling", deadline=Deadline(self.timeout)), "thaw")
            except Exception:  # noqa: BLE001 - never raise from the ceiling path
                pass

    def artifacts(self) -> dict[str, Any]:
        return {"runs": [r.summary() for r in self.runs]} if self.runs else {}


def build(
    directory: str,
    timeout: float,
    legacy_dir: str | None,
    require_root: bool,
    notes: list[str],
    concurrent: tuple[str, ...] = (),
) -> list[ScriptWriter]:
    """Writers for the legacy pair (first) and every runnable script, in freeze order; the
    scripts named in ``concurrent`` freeze in prepare (a name that is not there is noted)."""
    writers: list[ScriptWriter] = []
    if legacy_dir:
        pre = os.path.join(legacy_dir, "pre-freeze-script")
        post = os.path.join(legacy_dir, "post-thaw-script")
        present = [p for p in (pre, post) if os.path.exists(p)]
        bad = [(p, unsafe_reason(p, require_root)) for p in present]
        for p, reason in bad:
            if reason:
                notes.append(f"refused {p}: {reason}")
        if present and not any(r for _, r in bad):
            writers.append(ScriptWriter(pre, timeout, thaw_path=post))
    scripts, skipped = discover(directory, require_root)
    notes.extend(f"skipped {p}: {r}" for p, r in skipped)
    writers.extend(
        ScriptWriter(p, timeout, concurrent=os.path.basename(p) in concurrent) for p in scripts
    )
    found = {os.path.basename(p) for p in scripts}
    notes.extend(
        f"scripts.concurrent names {name!r}, which is not a script that runs in {directory}"
        for name in concurrent
        if name not in found
    )
    return writers
