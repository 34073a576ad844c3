"""quiesce-host starts light: a start imports the module of the verb it runs and what that
verb needs; the database drivers and the FUSE binding load only with the verbs that use
them (demo, serve --fuse), and ``--help`` loads no verb at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from host.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_by(*argv: str) -> set[str]:
    """The modules a ``quiesce-host ARGV`` has imported when it is done."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    return set(json.loads(out.stderr.splitlines()[-1]))


def packages(modules: set[str], *prefixes: str) -> set[str]:
    return {m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes)}


def test_importing_the_command_line_imports_no_driver_no_lab_and_no_verb() -> None:
    loaded = loaded_by()  # no verb: the usage error
    assert not packages(loaded, "psycopg", "pymysql", "mfusepy", "yaml", "host.lab")
    assert not packages(loaded, "host.engine", "host.serve", "host.snapshots")


def test_help_loads_no_verb_module() -> None:
    assert packages(loaded_by("--help"), "host.cli.") == {"host.cli.main"}


def test_a_disk_verb_loads_the_engine_and_not_the_servers_or_the_quiesce(tmp_path: Path) -> None:
    loaded = loaded_by("disk", "create", str(tmp_path / "vm"), "--size", "1M")
    assert (tmp_path / "vm" / "disk.vmdk").exists()
    assert "host.engine.disk" in loaded
    assert not packages(loaded, "psycopg", "pymysql", "mfusepy", "host.lab")
    assert not packages(loaded, "host.serve", "host.snapshots", "host.cli.snapshot")


def test_the_demo_verb_loads_the_lab_only_when_it_runs() -> None:
    loaded = loaded_by("demo", "--help")
    assert "host.cli.demo" in loaded and not packages(loaded, "host.lab", "psycopg")
