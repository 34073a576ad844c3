"""quiesce-host starts light: the database drivers and the FUSE binding load only with the
verbs that use them (demo, serve --fuse), not with every start and every ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("psycopg", "pymysql", "mfusepy", "host.lab")


def test_importing_the_command_line_imports_no_driver_and_no_lab() -> None:
    probe = (
        "import json, sys; import host.cli.main; "
        "print(json.dumps(sorted({m.split('.')[0] if not m.startswith('host.') "
        "else '.'.join(m.split('.')[:2]) for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert loaded.isdisjoint(LAZY), sorted(loaded & set(LAZY))
    assert "host.cli" in loaded  # the probe did import it
