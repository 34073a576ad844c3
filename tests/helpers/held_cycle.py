"""A quiesce-host cycle in a process of its own, for the tests that SIGKILL or Ctrl-C it.

``python -m tests.helpers.held_cycle DISK ENDPOINT NAME``: one quiesced snapshot of the engine
disk DISK through ENDPOINT, as ``quiesce-host snapshot create --quiesce`` runs it, except
that between the switch and the thaw it prints ``frozen`` and sleeps, so that the test can
kill it there (SIGKILL) or interrupt it (SIGINT, a Ctrl-C: the abort then goes on the
connection that froze).
"""

from __future__ import annotations

import sys
import time

from host.snapshots.cycle import Faults, take
from host.snapshots.target import open_target


class Hold(Faults):
    def before_thaw(self) -> None:
        print("frozen", flush=True)
        time.sleep(120)


def main(disk: str, endpoint: str, name: str) -> int:
    target = open_target(disk)
    try:
        take(target, name, endpoint, faults=Hold())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    finally:
        target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
