"""The Entraide daemon: storage, peer transport, HTTP API and CLI."""

__version__ = "0.1.0"
SERVER = f"entraide/{__version__}"
"""The Server header of every HTTP answer the node gives: its API app's and its read-lane
readers' (which must send the node's bytes exactly)."""
