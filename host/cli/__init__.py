"""``quiesce-host``: the command line, one module per verb group (see ``host.cli.main``)."""
