"""Entraide's sans-I/O protocol core: formats, crypto and state machines.

Nothing here does I/O, reads a clock or draws randomness: time arrives as ``now``
and randomness as bytes (or a ``randbytes(n)`` callable) from the caller.
"""
