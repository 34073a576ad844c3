"""quiesce-agent: the guest daemon and its command line (see DESIGN.md "The pieces").

Importing this package changes nothing: the host imports ``agent.protocol`` from it. The
daemon turns bytecode writing off where it starts (``agent.daemon.run``), since it may run
while the filesystems it would write to are frozen.
"""
