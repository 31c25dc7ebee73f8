"""The ``entraide`` command line: ``agent.cli.main:main`` (the console script) parses
the command words with argparse (:func:`build_parser`) and runs one handler. Commands
that edit the data dir live in agent/cli/main.py; those that talk to the running node
(client.py), run a demo federation (demo.py, localfed.py), move MISP events (misp.py)
or back up and restore the ledger (ledger.py) are imported only when run, so
``entraide id`` stays fast. (``main`` itself is not re-exported here: the name would
hide the ``agent.cli.main`` module.)"""

from agent.cli.main import build_parser

__all__ = ["build_parser"]
