"""The rbd: target against the throw-away cluster, without a guest: group and image snapshots,
their records read back by another client process, revert refused while an image is open,
and the command line's answers (also on a machine without python3-rbd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from host.engine.errors import SnapshotExists, SnapshotNotFound
from host.snapshots.rbd import ImageInUse, RbdStore
from host.snapshots.rbd_cluster import RbdError, RbdSpecError, parse_spec
from host.snapshots.rbd_records import object_name
from tests.helpers.ceph import OtherClient
from tests.helpers.env import REPO
from tests.helpers.hostcli import run_cli

pytestmark = pytest.mark.ceph


def quiesce_host(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``quiesce-host ARGV`` in a process of its own: another host, as far as Ceph can tell."""
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *argv], env={**os.environ, **env},
        capture_output=True, text=True, timeout=60, cwd=REPO, start_new_session=True,
    )  # fmt: skip


def test_a_group_snapshot_cuts_every_image_and_keeps_its_record_in_the_pool(make_vm) -> None:
    vm = make_vm(images=3)
    with RbdStore(vm.spec()) as store:
        assert store.subject.kind == "group" and sorted(store.image_names()) == vm.images
        snap = store.snapshot_create("s1", "before the upgrade", "crash")
        assert sorted(snap["images"]) == vm.images and snap["cut_ms"] > 0
        store.snapshot_update("s1", {"consistency": "filesystem", "ignored": 1})
    assert vm.group_snaps() == ["s1"]
    for image in vm.images:  # one snapshot per image, in the group's namespace
        (name,) = vm.image_snaps(image)
        assert name.startswith(".group.")
    other = quiesce_host("snapshot", "show", vm.spec(), "s1", "--json")
    assert other.returncode == 0, other.stderr
    shown = json.loads(other.stdout)
    assert shown["consistency"] == "filesystem" and shown["description"] == "before the upgrade"
    assert shown["state"] == "complete" and shown["recorded"] and "ignored" not in shown
    # the record is an omap entry of one object beside the images
    ioctx = vm.ioctx
    import rados

    with rados.ReadOpCtx() as op:
        it, _ = ioctx.get_omap_vals(op, "", "", 10)
        ioctx.operate_read_op(op, object_name("group", vm.group))
        assert [k for k, _ in it] == ["s1"]


def test_list_shows_snapshots_of_other_tools_as_unknown_and_orders_by_creation(make_vm) -> None:
    vm = make_vm(images=2)
    with RbdStore(vm.spec()) as store:
        store.snapshot_create("a")
        vm.rbd.Group(vm.ioctx, vm.group).create_snap("by-cron")
        store.snapshot_create("b")
        listed = store.snapshot_list()
    assert [s["name"] for s in listed] == ["a", "by-cron", "b"]
    assert [s["consistency"] for s in listed] == ["crash", "unknown", "crash"]
    assert all(s["created"] for s in listed)
    other = quiesce_host("snapshot", "list", vm.spec())
    assert other.returncode == 0 and "by-cron" in other.stdout and "unknown" in other.stdout


def test_delete_removes_the_snapshot_everywhere_and_its_record(make_vm) -> None:
    vm = make_vm(images=2)
    assert run_cli(["snapshot", "create", vm.spec(), "gone"]) == 0
    assert run_cli(["snapshot", "delete", vm.spec(), "gone"]) == 0
    assert vm.group_snaps() == [] and all(vm.image_snaps(i) == [] for i in vm.images)
    with RbdStore(vm.spec()) as store:
        assert store.records.all() == {}
        with pytest.raises(SnapshotNotFound):
            store.snapshot_delete("gone")
        store.snapshot_create("x")
        with pytest.raises(SnapshotExists):
            store.snapshot_create("x")
    assert run_cli(["snapshot", "delete", vm.spec(), "--all"]) == 0
    assert vm.group_snaps() == []


def test_revert_rolls_every_image_back(make_vm) -> None:
    vm = make_vm(images=3)
    images = {n: vm.rbd.Image(vm.ioctx, n) for n in vm.images}
    for n, im in images.items():
        im.write(b"before:" + n.encode(), 0)
        im.close()
    with RbdStore(vm.spec()) as store:
        store.snapshot_create("s")
        for n in vm.images:
            with vm.rbd.Image(vm.ioctx, n) as im:
                im.write(b"AFTER!!", 0)
        store.snapshot_revert("s")
    for n in vm.images:
        with vm.rbd.Image(vm.ioctx, n, read_only=True) as im:
            assert im.read(0, 7 + len(n)) == b"before:" + n.encode()


@pytest.mark.parametrize("how", ["open", "exclusive"])
def test_revert_is_refused_while_an_image_is_open_by_another_client(make_vm, how) -> None:
    vm = make_vm(images=3)
    with RbdStore(vm.spec()) as store:
        store.snapshot_create("s")
    with OtherClient(vm.cluster, vm.images[1], how):
        other = quiesce_host("snapshot", "revert", vm.spec(), "s")
        assert other.returncode == 17, other.stderr
        assert f"{vm.images[1]}: open by client." in other.stderr
        assert "stop it" in other.stderr
        with RbdStore(vm.spec()) as store, pytest.raises(ImageInUse):
            store.snapshot_revert("s")
    assert run_cli(["snapshot", "revert", vm.spec(), "s"]) == 0  # free again


def test_a_single_image_is_a_target_too(make_vm) -> None:
    vm = make_vm(images=1)
    image = vm.images[0]
    with RbdStore(vm.spec(image)) as store:
        assert store.subject.kind == "image"
        store.snapshot_create("one")
        assert [s["name"] for s in store.snapshot_list()] == ["one"]
    assert vm.image_snaps(image) == ["one"]
    with RbdStore(vm.spec()) as store:  # the group does not see the image's own snapshot
        assert store.snapshot_list() == []


def test_bad_specs_say_what_is_wrong() -> None:
    for bad, words in [
        ("rbd:pool", "rbd:POOL/NAME"),
        ("rbd:pool/a/b/c", "rbd:POOL/NAME"),
        ("rbd:pool/img@snap", "give the snapshot as NAME"),
        ("rbd:pool/vm:colour=red", "bad option 'colour=red'"),
        ("rbd:pool/vm:type=volume", "type must be group or image"),
    ]:
        with pytest.raises(RbdSpecError, match=words):
            parse_spec(bad)
    spec = parse_spec("rbd:p/ns/vm:id=backup:type=group:conf=/x/ceph.conf")
    assert (spec.pool, spec.namespace, spec.name, spec.kind) == ("p", "ns", "vm", "group")
    assert (spec.user, spec.conf, str(spec)) == ("backup", "/x/ceph.conf", "rbd:p/ns/vm")


def test_missing_pools_groups_and_images_say_what_is_wrong(ceph) -> None:
    with pytest.raises(RbdError, match="no group or image 'nothing' in pool 'rbd'"):
        RbdStore(f"rbd:rbd/nothing:conf={ceph.conf}")
    out = quiesce_host("snapshot", "list", f"rbd:nopool/x:conf={ceph.conf}")
    assert out.returncode == 2 and "cannot open pool 'nopool'" in out.stderr


def test_an_unreachable_cluster_is_exit_7_and_quick(tmp_path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = v2:127.0.0.1:1\nauth client required = none\n")
    t0 = time.monotonic()
    out = quiesce_host(
        "snapshot", "list", f"rbd:rbd/vm:conf={conf}", CEPH_ARGS="--client_mount_timeout=2"
    )
    assert time.monotonic() - t0 < 20  # the bound, not librados' 300 s default
    assert out.returncode == 7, out.stderr
    assert "cannot connect to the Ceph cluster" in out.stderr


def test_without_python3_rbd_the_cli_says_what_to_install(tmp_path) -> None:
    # a machine without Ceph: the binding's import fails; everything else still runs
    fake = tmp_path / "no-ceph"
    fake.mkdir()
    for mod in ("rados", "rbd"):
        (fake / f"{mod}.py").write_text("raise ImportError('not installed')\n")
    env_cmd = [sys.executable, "-c",
               f"import sys; sys.path.insert(0, {str(fake)!r}); "
               "from host.cli.main import main; sys.exit(main(sys.argv[1:]))"]  # fmt: skip
    out = subprocess.run([*env_cmd, "snapshot", "list", "rbd:rbd/vm"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert out.returncode == 2
    assert "needs librbd's Python binding: apt-get install python3-rbd python3-rados" in out.stderr
    disk = tmp_path / "disk"
    assert subprocess.run([*env_cmd, "disk", "create", str(disk), "--size", "1M"], timeout=60,
                          cwd=REPO).returncode == 0  # fmt: skip
