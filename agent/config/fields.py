"""What entraide.toml and peers.toml share: strict models, field checks, TOML reading.

Both files are TOML, read with ``tomllib`` and checked by frozen pydantic models that
forbid unknown keys and coerce nothing (``port = "8470"`` is refused). Every problem
surfaces as one ``ConfigError`` line naming the file and the field
(:func:`validate_model`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from agent.config.datadir import read_bounded
from agent.errors import ConfigError
from protocol.errors import KeyFormatError
from protocol.keys import PublicKey

__all__ = [
    "ConfigModel",
    "KeyField",
    "check_field",
    "check_jurisdiction",
    "leading_comments",
    "load_toml",
    "validate_model",
]

_MAX_JURISDICTION_CHARS = 100


class ConfigModel(BaseModel):
    """Base of every configuration model: frozen, unknown keys refused, no coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def _parse_key(value: Any) -> PublicKey:
    if isinstance(value, PublicKey):
        return value
    if not isinstance(value, str):
        raise ValueError("a key is a string 'ed25519:<base64url>'")
    try:
        return PublicKey.from_text(value)
    except KeyFormatError as exc:
        raise ValueError(str(exc)) from exc


KeyField = Annotated[
    PublicKey,
    PlainValidator(_parse_key),
    PlainSerializer(lambda key: key.text, return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^ed25519:[A-Za-z0-9_-]{43}$"}),
]
"""A public key written as its text form in TOML and JSON."""


def check_field(fn: Callable[[str], str], value: str) -> str:
    """``fn(value)`` (a protocol check), its KeyFormatError as pydantic's ValueError."""
    try:
        return fn(value)
    except KeyFormatError as exc:
        raise ValueError(str(exc)) from exc


def check_jurisdiction(value: str | None) -> str | None:
    """A jurisdiction of 1 to 100 printable characters, or None.

    Raises:
        ValueError: otherwise (pydantic reports it as the field's error).
    """
    if value is None:
        return None
    if not value.strip() or len(value) > _MAX_JURISDICTION_CHARS:
        raise ValueError(f"jurisdiction must be 1 to {_MAX_JURISDICTION_CHARS} characters")
    if not value.isprintable():
        raise ValueError("jurisdiction contains control characters")
    return value


# --- reading and checking ----------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def load_toml(path: Path, max_bytes: int) -> dict[str, Any]:
    """The TOML document at ``path`` (at most ``max_bytes``).

    Raises:
        ConfigError: missing, unreadable, over the size, not UTF-8 or not TOML.
    """
    try:
        text = read_bounded(path, max_bytes).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from exc


def validate_model(model: type[M], path: Path | None, data: Any) -> M:
    """``data`` checked as ``model``.

    Raises:
        ConfigError: one line naming the file (when ``path`` is given) and the first
            bad field.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f"{path.name}: " if path is not None else ""
        raise ConfigError(where + _one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    """The first validation problem as ``field.path: message`` (+ how many more)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def leading_comments(text: str) -> str:
    """The comment block (and blank lines) at the top of a TOML text."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    header = "".join(lines).rstrip("\n")
    return header + "\n" if header.strip() else ""
