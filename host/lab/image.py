"""The VM lab's guest image: Debian 12 built from Debian's packages, the agent installed in it.

``build_image(cache_dir, log=...)`` returns a ``GuestImage``: a raw ext4 root disk (the whole
disk is the filesystem, no partition table, so QEMU boots it with ``-kernel``/``-initrd`` and
``root=/dev/vda``; no bootloader to install, and a boot skips the firmware's disk probe), the
kernel and initrd copied out of it, and a raw ext4 data disk holding the databases' data
directories (PostgreSQL's cluster and MariaDB's datadir, initialised by their packages at build
time). How it is made, step by step:

    wheels     pip wheel of this project (on the host), pip download of its runtime
               dependencies for the guest's CPython 3.11 / glibc 2.36 (never the host's own)
    bootstrap  mmdebstrap --mode=unshare into a folder: as root this keeps real ownership and
               runs in a mount and pid namespace of its own, so whatever it mounts (/proc,
               /dev) goes away with it, even when it is killed; its customize hooks install
               the agent as the README says (what goes in: host/lab/guest_recipe.py)
    kernel     vmlinuz and initrd.img copied out of the tree's /boot
    data       the databases' data directories moved out of the tree into a folder of their
               own, as they will sit on the data disk (DATA_MOUNT in the guest)
    mkfs       mkfs.ext4 -d TREE and -d DATA: the disks made from the folders, nothing mounted
    fsck       e2fsck -fn of both, our judge of what mkfs wrote
    store      fsync, then one rename of the finished folder into the cache

The cache entry is named by a hash of every input (packages, mmdebstrap options and hooks,
the files put into the guest, the wheels' contents, sizes, a format version), so a second run
with the same inputs only rebuilds the wheels to compute the key and returns in seconds. The
Debian archive itself is not an input: bump FORMAT_VERSION to pick up newer packages. Builds
run under a lock, in ``.build-*`` folders of the cache that a later build removes if a build
died; downloaded .deb files are kept in ``debs/`` so a rebuild does not fetch them again.

Raises LabError naming the step, with the tail of the build log.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import fsync_dir
from host.lab import guest_recipe as recipe
from host.lab.databases import LabError
from host.lab.guest_recipe import CMDLINE, PACKAGES, REPO
from host.lab.procs import interrupt_on_sigterm, run_logged, tail

FORMAT_VERSION = 2
IMAGE_SIZE = 3 << 30  # sparse; about 1.2 GiB of it is used
DATA_SIZE = 1 << 30  # sparse; about 200 MiB of it is used
DATA_DIRS = ("var/lib/postgresql/*", "var/lib/mysql")  # moved to the data disk (globs)
MIN_FREE = 6 << 30  # the tree, the image and the .deb files, with room to spare
MKFS = ("mkfs.ext4", "-q", "-F", "-L", "quiesce-root", "-m", "1")
MKFS_DATA = ("mkfs.ext4", "-q", "-F", "-L", recipe.DATA_LABEL, "-m", "0")
KEEP_ENTRIES = 2  # newest cache entries kept; older ones are removed after a build
STEP_TIMEOUT = {"wheels": 600.0, "bootstrap": 2400.0, "mkfs": 900.0, "fsck": 600.0}
IMAGE_FILES = ("manifest.json", "root.img", "vmlinuz", "initrd.img", "data.img")
LOCK_WAIT = 3600.0
DATA_DOCS = ("docs/config.md", "docs/databases.md", "docs/agent.yaml.example")
Log = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot ``root`` (raw ext4) with ``kernel``, ``initrd`` and ``cmdline``;
    ``data`` (raw ext4, label DATA_LABEL) is the databases' disk, mounted at DATA_MOUNT."""

    key: str
    folder: Path
    root: Path
    kernel: Path
    initrd: Path
    cmdline: str
    built: bool  # False: found in the cache
    data: Path


def default_cache() -> Path:
    """$QUIESCE_GUEST_IMAGES, else .cache/guest-images in the repository."""
    env = os.environ.get("QUIESCE_GUEST_IMAGES")
    return Path(env) if env else REPO / ".cache" / "guest-images"


def build_image(cache_dir: Path, *, log: Log) -> GuestImage:
    """The image for the current inputs: from the cache, or built into it (minutes)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, log):
        _remove_stale(cache_dir)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        try:
            wheels = _step("wheels", log, lambda: _wheels(work, log))
            files = recipe.guest_files()
            key = _key(files, wheels)
            found = _cached(cache_dir / f"debian12-{key}", key, built=False)
            if found is not None:
                os.utime(found.folder)  # recently used: _prune keeps it
                log(f"image {key}: in the cache ({found.folder})")
                return found
            log(f"image {key}: not in the cache; building (several minutes)")
            _check_space(cache_dir)
            return _build(cache_dir, work, key, files, log)
        except LabError:
            _keep_log(work, cache_dir)
            raise
        finally:
            started = time.monotonic()
            _remove_work(work)
            if time.monotonic() - started > 1:
                log(f"cleanup: the build folder removed in {time.monotonic() - started:.1f} s")


def _build(
    cache_dir: Path, work: Path, key: str, files: dict[str, tuple[int, bytes]], log: Log
) -> GuestImage:
    """Every step from the wheels to the stored entry; the entry appears whole or not at all."""
    files = {**files, "etc/machine-id": (0o444, key.ljust(32, "0")[:32].encode() + b"\n")}
    _stage(work / "files", files)
    tree, out = work / "tree", work / "out"
    tree.mkdir()
    out.mkdir()
    debs = cache_dir / "debs"
    debs.mkdir(exist_ok=True)
    args = recipe.mmdebstrap_args(work, debs)
    _step("bootstrap", log, lambda: _run("bootstrap", args, work, log))
    _step("kernel", log, lambda: _copy_kernel(tree, out))
    _step("data", log, lambda: _move_data(tree, work / "data"))
    _step("mkfs", log, lambda: _mkfs(tree, out / "root.img", work, log))
    _step("mkfs", log, lambda: _mkfs(work / "data", out / "data.img", work, log, data=True))
    for disk in (out / "root.img", out / "data.img"):
        _step("fsck", log, functools.partial(_run, "fsck", ["e2fsck", "-fn", str(disk)], work, log))
    _write_manifest(out, key, work)
    final = cache_dir / f"debian12-{key}"
    _step("store", log, lambda: _store(out, final, work / "debs-new", debs))
    _prune(cache_dir, final)
    image = _cached(final, key, built=True)
    assert image is not None
    return image


def _step(name: str, log: Log, action: Callable[[], Any]) -> Any:
    """Run one named step with its time logged; an OSError becomes a LabError naming it."""
    start = time.monotonic()
    log(f"{name}: ...")
    try:
        result = action()
    except OSError as err:
        raise LabError(f"guest image: step '{name}' failed: {err}") from err
    log(f"{name}: done in {time.monotonic() - start:.1f} s")
    return result


# -- the key -------------------------------------------------------------------------------
def _key(files: dict[str, tuple[int, bytes]], wheels: dict[str, str]) -> str:
    """A hash of every input of the image; the mmdebstrap arguments with placeholder paths."""
    inputs = {
        "format": FORMAT_VERSION,
        "mmdebstrap": recipe.mmdebstrap_args(Path("/@work"), Path("/@debs")),
        "files": {p: [m, hashlib.sha256(c).hexdigest()] for p, (m, c) in sorted(files.items())},
        "wheels": wheels,
        "size": IMAGE_SIZE,
        "mkfs": MKFS,
        "data": [DATA_SIZE, MKFS_DATA, DATA_DIRS],
        "cmdline": CMDLINE,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# -- the wheels ------------------------------------------------------------------------------
def _wheels(work: Path, log: Log) -> dict[str, str]:
    """The project's wheel and its dependencies for the guest: file name -> content hash."""
    folder, src = work / "wheels", work / "src"
    _copy_source(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run("wheels", [*pip, "wheel", "--no-deps", "-w", str(folder), str(src)], work, log)
    (ours,) = folder.glob("quiesce_agent-*.whl")
    _check_packages(ours)
    download = [*pip, "download", *recipe.pip_target_args()]
    _run("wheels", [*download, "-d", str(folder), f"{ours}[guest]"], work, log)  # the drivers
    return {w.name: _content_hash(w) for w in sorted(folder.glob("*.whl"))}


def _copy_source(src: Path) -> None:
    """The files the wheel is built from, in a folder of our own: setuptools' build/ in the
    repository would keep modules deleted since (and other builds run there too)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top in ("agent", "common", "hooks", "host"):
        shutil.copytree(REPO / top, src / top, ignore=skip)
    (src / "docs").mkdir()
    for name in ("pyproject.toml", "README.md", *DATA_DOCS):  # DATA_DOCS: pyproject's data-files
        shutil.copyfile(REPO / name, src / name)


def _check_packages(wheel: Path) -> None:
    """Every package of the source tree must be in the wheel, or the guest cannot import it."""
    with zipfile.ZipFile(wheel) as z:
        inside = {os.path.dirname(n) for n in z.namelist() if n.endswith("/__init__.py")}
    wanted = {
        str(p.parent.relative_to(REPO))
        for top in ("agent", "common", "hooks", "host")
        for p in (REPO / top).rglob("__init__.py")
    }
    missing = sorted(wanted - inside)
    if missing:
        raise LabError(
            f"guest image: step 'wheels': {wheel.name} lacks the packages "
            f"{', '.join(m.replace('/', '.') for m in missing)}; add them to "
            "[tool.setuptools.packages.find] include in pyproject.toml (e.g. 'agent.*')"
        )


def _content_hash(wheel: Path) -> str:
    """sha256 of a wheel's member names and bytes: equal for equal content, whatever the zip
    timestamps of a fresh build. Left out is what the guest never reads, so that changing it
    does not cost a rebuild of the image (the guest's copy may then be older than the
    repository's): the host's own modules (``host/``, in our wheel), the README (its copy in
    the data files, and the long description in METADATA, which is the README again), and
    RECORD, which lists their hashes."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if not _unread_by_guest(n)):
            data = z.read(name)
            if name.endswith(".dist-info/METADATA"):
                data = _metadata_headers(data)
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _unread_by_guest(name: str) -> bool:
    """A member of our wheel that the guest never reads (see ``_content_hash``)."""
    return (
        name.startswith("host/")
        or name.endswith(".dist-info/RECORD")
        or name.endswith(".data/data/share/doc/quiesce-agent/README.md")
    )


def _metadata_headers(metadata: bytes) -> bytes:
    """METADATA without its body: the headers end at the first empty line, and what follows
    is the long description (the README)."""
    head, _, _ = metadata.partition(b"\n\n")
    return head


# -- the steps -------------------------------------------------------------------------------
def _stage(folder: Path, files: dict[str, tuple[int, bytes]]) -> None:
    """Write the guest's files under ``folder``, which is synced over the guest's /."""
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)  # its mode becomes the mode of the guest's /
    for rel, (mode, content) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if rel.endswith("/"):
            path.mkdir(mode=mode, exist_ok=True)
            continue
        path.write_bytes(content)
        os.chmod(path, mode)


def _mkfs(tree: Path, image: Path, work: Path, log: Log, *, data: bool = False) -> None:
    """A sparse file made into ext4 holding the tree, without mounting it: the root disk
    (IMAGE_SIZE), or with ``data`` the data disk (DATA_SIZE)."""
    with open(image, "wb") as f:
        f.truncate(DATA_SIZE if data else IMAGE_SIZE)
    _run("mkfs", [*(MKFS_DATA if data else MKFS), "-d", str(tree), str(image)], work, log)


def _move_data(tree: Path, data: Path) -> None:
    """Move the databases' data directories (DATA_DIRS) out of the tree into ``data``, at
    the same paths under it that the guest's configuration gives below DATA_MOUNT
    (var/lib/postgresql/15 -> postgresql/15, var/lib/mysql -> mysql); each parent keeps its
    owner and mode, and an emptied /var/lib/mysql stays as the mysql user's home."""
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # the data disk's root directory
    moved = 0
    for pattern in DATA_DIRS:
        for src in sorted(tree.glob(pattern)):
            rel = src.relative_to(tree / "var" / "lib")
            dest = data / rel
            for parent in reversed(rel.parents[:-1]):  # postgresql/ for postgresql/15
                _mkdir_like(data / parent, tree / "var" / "lib" / parent)
            os.rename(src, dest)
            _mkdir_like(src, dest)  # an empty directory where it was
            moved += 1
    if moved < len(DATA_DIRS):
        raise LabError(
            f"guest image: step 'data': found {moved} of the data directories {DATA_DIRS} in "
            "the tree; did postgresql's or mariadb-server's postinst not initialise them?"
        )


def _mkdir_like(path: Path, model: Path) -> None:
    """Make ``path`` (if missing) with the owner and mode of ``model``."""
    st = model.stat()
    path.mkdir(exist_ok=True)
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, st.st_mode & 0o7777)


def _copy_kernel(tree: Path, out: Path) -> None:
    """Copy /boot/vmlinuz-* and /boot/initrd.img-* out of the tree (exactly one of each)."""
    for pattern, name in (("vmlinuz-*", "vmlinuz"), ("initrd.img-*", "initrd.img")):
        found = sorted((tree / "boot").glob(pattern))
        if len(found) != 1:
            raise LabError(f"guest image: step 'kernel': /boot/{pattern} matched {found}")
        shutil.copyfile(found[0], out / name)
        (out / "kernel-version").write_text(found[0].name.split("-", 1)[1] + "\n")


def _write_manifest(out: Path, key: str, work: Path) -> None:
    """What the entry holds and how long it took, for people and for the VM lab."""
    (out / "build.log").write_bytes((work / "build.log").read_bytes())
    size = (out / "root.img").stat()
    manifest = {
        "key": key,
        "format": FORMAT_VERSION,
        "packages": list(PACKAGES),
        "wheels": sorted(p.name for p in (work / "wheels").glob("*.whl")),
        "kernel": (out / "kernel-version").read_text().strip(),
        "cmdline": CMDLINE,
        "size_bytes": size.st_size,
        "allocated_bytes": size.st_blocks * 512,
        "data_allocated_bytes": (out / "data.img").stat().st_blocks * 512,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _store(out: Path, final: Path, debs_new: Path, debs: Path) -> None:
    """fsync the entry's files, rename it into place, and keep this build's .debs."""
    for path in out.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(out, final)
    fsync_dir(final.parent)
    if debs_new.is_dir():  # exactly the .debs this build used: older versions go
        shutil.rmtree(debs)
        os.rename(debs_new, debs)


def _cached(folder: Path, key: str, *, built: bool) -> GuestImage | None:
    """The entry in ``folder`` if it is complete (it only ever appears complete)."""
    parts = [folder / n for n in IMAGE_FILES]
    if not all(p.is_file() for p in parts):
        return None
    return GuestImage(key, folder, parts[1], parts[2], parts[3], CMDLINE, built, parts[4])


# -- the cache folder ------------------------------------------------------------------------
@contextmanager
def _locked(cache_dir: Path, log: Log) -> Iterator[None]:
    """One build at a time per cache folder (another build's result is then reused)."""
    with open(cache_dir / ".lock", "a") as f:
        until = time.monotonic() + LOCK_WAIT
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if time.monotonic() > until:
                    msg = f"guest image: {cache_dir} stayed locked for {LOCK_WAIT:g} s"
                    raise LabError(msg) from err
                if not told:
                    log(f"waiting for another build in {cache_dir}")
                    told = True
                time.sleep(1)
        yield


def _remove_stale(cache_dir: Path) -> None:
    """Remove what a build that died left (we hold the lock, so none is running)."""
    for work in cache_dir.glob(".build-*"):
        _remove_work(work)


def _remove_work(work: Path) -> None:
    """Remove a build folder, never through a mount point (nothing should be mounted)."""
    mounted = [m for m in _mount_points() if m == work or work in m.parents]
    if mounted:
        raise LabError(
            f"guest image: {mounted[0]} is still mounted; run umount -R {work} and remove it"
        )
    shutil.rmtree(work, ignore_errors=True)


def _mount_points() -> list[Path]:
    """Every mount point of this mount namespace (octal escapes of mountinfo decoded)."""
    with open("/proc/self/mountinfo") as f:
        fields = [line.split()[4] for line in f]
    return [Path(p.encode().decode("unicode_escape")) for p in fields]


def _check_space(cache_dir: Path) -> None:
    """Fail before building, not in the middle, when the cache's filesystem is too full."""
    free = shutil.disk_usage(cache_dir).free
    if free < MIN_FREE:
        raise LabError(
            f"guest image: step 'space': {cache_dir} has {free / 2**30:.1f} GiB free, a build "
            f"needs {MIN_FREE / 2**30:.0f} GiB; free some or set QUIESCE_GUEST_IMAGES"
        )


def _prune(cache_dir: Path, keep: Path) -> None:
    """Keep the newest KEEP_ENTRIES entries (always ``keep``); each holds about 1.5 GiB."""
    entries = sorted(cache_dir.glob("debian12-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [e for e in entries if e != keep][KEEP_ENTRIES - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _keep_log(work: Path, cache_dir: Path) -> None:
    """A failed build's log stays as failed-build.log beside the entries (not one of them)."""
    try:
        shutil.copyfile(work / "build.log", cache_dir / "failed-build.log")
    except OSError:  # no space left, most likely: the error's tail has to do
        (cache_dir / "failed-build.log").unlink(missing_ok=True)


# -- subprocesses ----------------------------------------------------------------------------
def _run(step: str, cmd: list[str], work: Path, log: Log) -> None:
    """Run one command of ``step`` (host/lab/procs.py), its output in work/build.log;
    mmdebstrap's progress lines go to ``log``. LabError naming the step, with the log's tail."""
    timeout = STEP_TIMEOUT.get(step, 300.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    if step != "wheels":  # the host's pip settings are for the host's pip only
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    logfile = work / "build.log"
    kept = f" (the whole log: {work.parent / 'failed-build.log'})"
    rc = run_logged(cmd, logfile, timeout, env=env, cwd=work, progress=lambda s: _progress(s, log))
    if rc is None:
        raise LabError(
            f"guest image: step '{step}': {cmd[0]} did not finish within {timeout:g} s "
            f"and was killed; the last lines of the build log{kept}:\n{tail(logfile)}"
        )
    if rc != 0:
        raise LabError(
            f"guest image: step '{step}' failed: {cmd[0]} exited with {rc}; "
            f"the last lines of the build log{kept}:\n{tail(logfile)}"
        )


def _progress(line: str, log: Log, width: int = 96) -> None:
    """mmdebstrap's "I: ..." lines, without the chroot path and cut to ``width``."""
    if not line.startswith("I: ") or "skipping" in line:
        return
    line = line[3:].replace("running --customize-hook in shell: sh -c ", "hook: ")
    line = line.split(" exec /")[0]
    log("  " + (line if len(line) <= width else line[: width - 3] + "..."))


# -- the command line (scripts/build-guest-image) --------------------------------------------
def main(argv: list[str]) -> int:
    """Build or reuse the image in $QUIESCE_GUEST_IMAGES (or argv[0]); print what it is."""
    start = time.monotonic()
    interrupt_on_sigterm()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - start:7.1f} s] {message}", flush=True)

    cache = Path(argv[0]) if argv else default_cache()
    try:
        image = build_image(cache.resolve(), log=say)
    except LabError as err:
        print(f"build-guest-image: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("build-guest-image: interrupted; nothing was left in the cache", file=sys.stderr)
        return 130
    used = image.root.stat().st_blocks * 512
    say(f"{'built' if image.built else 'cached'}: {image.folder}")
    print(f"  root   {image.root} ({IMAGE_SIZE >> 30} GiB sparse, {used / 2**20:.0f} MiB used)")
    data = image.data.stat().st_blocks * 512
    print(f"  data   {image.data} ({DATA_SIZE >> 30} GiB sparse, {data / 2**20:.0f} MiB used)")
    print(f"  kernel {image.kernel}\n  initrd {image.initrd}\n  append {image.cmdline}")
    return 0
