"""Chaos runs against real ``entraide run`` processes (issue 17; docs/chaos.md)."""
