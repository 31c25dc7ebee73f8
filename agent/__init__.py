"""The Entraide daemon: storage, peer transport, HTTP API and CLI."""

__version__ = "0.1.0"
