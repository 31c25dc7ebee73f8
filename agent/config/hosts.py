"""Which ``Host`` and ``Origin`` the local API answers: the defence against DNS
rebinding (issue 17).

A web page on ``http://evil.example`` can make a browser on the node's host send
requests to the API (its DNS answer switches to 127.0.0.1 once the page is loaded); the
browser then sends ``Host: evil.example:8470``. Only a name can be rebound, so the API
answers a request whose ``Host`` is an IP address literal, ``localhost``, or a name the
admin listed in ``[api] allowed_hosts``, and nothing else. A request that carries an
``Origin`` (only browsers send one) must come from such a host too. Tools (curl, SIEM
connectors, the CLI) send the host they connected to, so they are never refused.

Sans-I/O: strings in, a decision out. Used by the API's middleware and by the read
lane's readers, which answer lookups on their own.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HostPolicy"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6]:port`` -> (lowercase name, port); None when malformed."""
    value = value.strip().lower()
    if not value or any(c.isspace() for c in value) or "@" in value or "/" in value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        if value.count(":") > 1:  # an IPv6 address without brackets is no Host
            return None
        name, sep, after = value.partition(":")
        port_text = after if sep else None
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


_MAX_CACHED_HOST = 300
"""Longer ``Host`` values are judged each time, so that the cache holds at most 1,024
short ones (a DNS name is at most 253 characters, a port six more)."""


@functools.lru_cache(maxsize=1024)
def _host_allowed(value: str, names: frozenset[str]) -> bool:
    # Cached: every API request asks, nearly always with the same one or two values,
    # and parsing an IP literal was ~5% of a read-lane reader's CPU per lookup.
    split = _split_host(value)
    if split is None:
        return False
    name = split[0]
    return name in _LOOPBACK_NAMES or _is_ip(name) or name.rstrip(".") in names


@dataclass(frozen=True)
class HostPolicy:
    """The names the API answers to, besides IP literals and ``localhost``."""

    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allowed_hosts: Iterable[str]) -> HostPolicy:
        return cls(frozenset(name.strip().lower().rstrip(".") for name in allowed_hosts))

    def allows_host(self, value: str | None) -> bool:
        """True for a ``Host`` header the API answers (HTTP/1.1 requires one)."""
        if value is None:
            return False
        if len(value) > _MAX_CACHED_HOST:
            return _host_allowed.__wrapped__(value, self.names)
        return _host_allowed(value, self.names)

    def allows_origin(self, value: str | None) -> bool:
        """True when there is no ``Origin`` (not a browser) or it names an allowed host
        over http or https; ``Origin: null`` (sandboxed pages, files) is refused."""
        if value is None:
            return True
        try:
            parts = urlsplit(value.strip())
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            return False
        return self.allows_host(parts.netloc)
