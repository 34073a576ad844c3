"""quiesce-agent: the guest daemon (see DESIGN.md). Importing it turns off bytecode writing,
because the daemon may run while the filesystems it would write to are frozen."""

import sys

sys.dont_write_bytecode = True
