"""``entraide run``: the daemon: listeners, signals, logging and the shutdown order
around the node agent/composition.py builds.

Start-up order: the API app's start-up (the helper processes' supervisor, then the
node: config, key, ledger, replication), then the peer listener, then the local API
listener; the node is reported ready only when both listen. Any failure (bad config,
missing or wrongly sealed key, port in use, ledger in use) is one line on stderr and
exit status 1.

Shutdown on SIGTERM or SIGINT, in this order, so nothing acknowledged is lost:
1. the API listener stops accepting; requests in flight finish (their entries are
   committed before they are acknowledged);
2. the node stops: queued submissions are committed, peer sessions closed with a
   "shutdown" reason, the ledger closed; then the helper processes end;
3. the peer listener is torn down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.composition import compose
from agent.config.datadir import DataDir, take_passphrase_from_env
from agent.config.settings import ApiConfig, LogConfig, PeerListenerConfig, load_node_config
from agent.errors import ConfigError
from agent.node.node import ENV_PASSPHRASE
from agent.peering.limits import (
    AcceptErrorLog,
    ConnectionGuard,
    ListenerLimits,
    fit_to_nofile,
    merged_families,
    raise_nofile,
)
from agent.peering.transport import Replicator, start_peer_listener
from agent.workers.gcsettings import settle_heap

__all__ = ["JsonFormatter", "configure_logging", "run_command", "serve"]

log = logging.getLogger("entraide.daemon")
SHUTDOWN_TIMEOUT_S = 10.0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc when any)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(config: LogConfig, fmt: str | None = None, level: str | None = None) -> None:
    """Log to stderr as text (default) or JSON lines; the CLI flags win over the file."""
    handler = logging.StreamHandler(sys.stderr)
    if (fmt or config.format) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or config.level).upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at DEBUG: indicator values,
    # personal data included (docs/privacy.md). Never below INFO.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


async def serve(data_dir: DataDir, *, passphrase: bytes | None = None,
                stop: asyncio.Event | None = None,
                ready: Callable[[], None] | None = None,
                readers: int | None = None) -> None:
    """Run the node until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    ``ready`` is called once the node and both listeners are up. ``readers``: processes
    of the read lane (agent/workers/read_lane.py); default: ``[api] readers`` of the config,
    else :func:`agent.workers.supervisor.default_readers`.

    Raises:
        ConfigError: bad config, a port in use.
        EntraideError: the node cannot start (key, passphrase, ledger).
    """
    stop = stop if stop is not None else _signal_event()
    parts = compose(data_dir, passphrase=passphrase, readers=readers)
    peer_guard, api_guard = _guards(parts.config.peer, parts.config.api)
    accept_errors = AcceptErrorLog()
    accept_errors.install(asyncio.get_running_loop())
    parts.node.metrics.add_collector(lambda: merged_families(
        peer_guard.metric_families, api_guard.metric_families, accept_errors.metric_families))
    parts.app.middlewares.append(api_guard.middleware)
    peer_runner: web.AppRunner | None = None
    api_runner = web.AppRunner(parts.app, handle_signals=False, access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                               keepalive_timeout=api_guard.limits.keepalive_timeout)
    api_server: asyncio.AbstractServer | None = None
    try:
        await api_runner.setup()  # the supervisor opens, the node starts
        config = parts.node.config
        replicator = parts.node.replication
        assert isinstance(replicator, Replicator)
        peer_runner, peer_port = await _listen(
            "peer", lambda: start_peer_listener(replicator, config.peer.host, config.peer.port,
                                                guard=peer_guard),
            config.peer.host, config.peer.port)
        server = api_runner.server
        assert server is not None
        # The guard admits each connection first; the read lane's sniffer (when there are
        # readers) comes next, and the server's protocols report their end to the guard.
        factory = api_guard.accept(parts.workers.api_protocol(api_guard.served(server)))
        api_server = await _listen(
            "API", lambda: asyncio.get_running_loop().create_server(
                factory, config.api.host, config.api.port),
            config.api.host, config.api.port)
        log.info("node %s ready: API on http://%s:%d, peers on %s:%d (card URL %s)",
                 config.name, config.api.host, config.api.port, config.peer.host, peer_port,
                 config.peer_url)
        print(f"entraide: node {config.name} running (API http://{config.api.host}:"
              f"{config.api.port}, peer listener {config.peer.host}:{peer_port})",
              file=sys.stderr, flush=True)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("shutting down")
    finally:
        if api_server is not None:
            api_server.close()  # stop accepting; the runner finishes what is in flight
        await api_runner.cleanup()  # requests finish, the node stops, the helpers end
        if peer_runner is not None:
            await peer_runner.cleanup()
        log.info("stopped")


def _guards(peer: PeerListenerConfig, api: ApiConfig
            ) -> tuple[ConnectionGuard, ConnectionGuard]:
    """The two listeners' guards, from ``[peer]`` and ``[api]``, after the soft open-file
    limit is raised to the hard one; their totals are shrunk to fit under it when they do
    not (agent/peering/limits.py), so a connection is refused long before ``accept``
    fails for want of a descriptor."""
    before, after = raise_nofile()
    if after != before:
        log.info("open-file limit raised from %d to %d", before, after)
    else:
        log.info("open-file limit: %d", after)
    wanted = [ListenerLimits(section.max_connections, section.max_connections_per_address,
                             section.header_timeout, section.keepalive_timeout)
              for section in (peer, api)]
    fitted = fit_to_nofile(wanted, after)
    if fitted != wanted:
        log.warning("open-file limit %d is too low for max_connections %d ([peer]) + %d "
                    "([api]): the listeners take at most %d and %d (raise LimitNOFILE)",
                    after, wanted[0].max_connections, wanted[1].max_connections,
                    fitted[0].max_connections, fitted[1].max_connections)
    return ConnectionGuard("peer", fitted[0]), ConnectionGuard("api", fitted[1])


async def _listen(what: str, start: Any, host: str, port: int) -> Any:
    try:
        return await start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} for the {what} listener: "
                          f"{reason}") from exc


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def run_command(argv: list[str], data_dir: Path) -> int:
    """``entraide run [--passphrase-env VAR] [--log-format text|json] [--log-level L]``."""
    parser = argparse.ArgumentParser(prog="entraide run", description="Run the node.")
    parser.add_argument("--passphrase-env", metavar="VAR",
                        help="environment variable holding the key passphrase "
                             "(default: ENTRAIDE_PASSPHRASE, when the key is sealed)")
    parser.add_argument("--log-format", choices=("text", "json"), help="default: from config")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--passphrase-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dd = DataDir(data_dir)
    dd.require_node()
    config = load_node_config(dd)
    if args.passphrase_fd is not None:
        passphrase: bytes | None = _read_passphrase_fd(args.passphrase_fd)
    else:
        passphrase = take_passphrase_from_env(args.passphrase_env or ENV_PASSPHRASE,
                                              required=args.passphrase_env is not None)
        default_set = os.environ.pop(ENV_PASSPHRASE, None) is not None
        if passphrase is not None or default_set:
            _reexec_without_passphrase(argv, data_dir, passphrase)
    configure_logging(config.log, args.log_format, args.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        # The process is the node's own: its start-up heap is frozen once it is up
        # (agent/workers/gcsettings.py).
        asyncio.run(serve(dd, passphrase=passphrase, ready=settle_heap))
    return 0


def _reexec_without_passphrase(argv: list[str], data_dir: Path,
                               passphrase: bytes | None) -> None:
    """Start ``entraide run`` again in this process (same pid), its environment without
    the passphrase, which it reads from a pipe instead (None: there is none to pass, the
    variable only had to go).

    Why: deleting the variable from ``os.environ`` keeps it from the helper processes,
    but ``/proc/PID/environ`` shows the environment the process was started with, to
    the same user and to root, for as long as the daemon runs. An exec is the one way to
    start over without it. The pipe holds the passphrase until the new image reads it
    (a pipe's buffer is 64 KiB; a passphrase is short).
    """
    tail: list[str] = []
    if passphrase is not None:
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, passphrase)
        finally:
            os.close(write_end)
        os.set_inheritable(read_end, True)
        tail = ["--passphrase-fd", str(read_end)]
    rest, skip = [], False
    for arg in argv:  # drop --passphrase-env VAR (the variable is gone)
        if skip:
            skip = False
        elif arg == "--passphrase-env":
            skip = True
        elif not arg.startswith("--passphrase-env="):
            rest.append(arg)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "agent.cli", "run", "--data-dir",
                               str(data_dir), *rest, *tail],
              dict(os.environ))


def _read_passphrase_fd(fd: int) -> bytes:
    """The passphrase written to pipe ``fd`` by :func:`_reexec_without_passphrase`.

    Raises:
        ConfigError: nothing readable there.
    """
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 64 * 1024:
                raise ConfigError("--passphrase-fd: more than 64 KiB")
    except OSError as exc:
        raise ConfigError(f"--passphrase-fd {fd}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if not chunks:
        raise ConfigError(f"--passphrase-fd {fd}: no passphrase")
    return b"".join(chunks)
