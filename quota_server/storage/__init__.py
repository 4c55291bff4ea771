"""Storage backends: persistence for the engine (never a shared counter).

``storage_from_url`` picks the backend from ``[storage] url``:

- ``sqlite:///quota-data/quota.db``  relative path (to the working directory)
- ``sqlite:////var/lib/quota/quota.db``  absolute path (four slashes, as in SQLAlchemy)
- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS)
"""
from __future__ import annotations

import urllib.parse
from typing import Any

from .base import (
    EventRow,
    Fenced,
    InvalidCursor,
    LeaseHeld,
    Recovered,
    SequenceError,
    Storage,
    StorageError,
    StorageUnavailable,
    UsageChunk,
    UsageRow,
)

__all__ = [
    "EventRow",
    "Fenced",
    "InvalidCursor",
    "LeaseHeld",
    "Recovered",
    "SequenceError",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "UsageChunk",
    "UsageRow",
    "sqlite_path_from_url",
    "storage_from_url",
]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///`` URL: relative after three slashes, absolute after four."""
    if not url.startswith(_SQLITE_PREFIX):
        raise ValueError(f"not a sqlite URL (expected sqlite:///path): {url!r}")
    path = urllib.parse.unquote(url[len(_SQLITE_PREFIX):])
    if "?" in path or "#" in path:
        raise ValueError(f"sqlite URL takes no query or fragment: {url!r}")
    if not path or path.endswith("/") or path == ":memory:":
        raise ValueError(f"sqlite URL must name a database file: {url!r}")
    return path


def storage_from_url(url: str, **options: Any) -> Storage:
    """Build (not open) the backend that ``url`` names; ``options`` go to its constructor
    as keyword arguments (e.g. ``op_timeout_ms`` for Redis, ``clock_ms`` for SQLite)."""
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        from .memory import MemoryStorage

        return MemoryStorage()
    if scheme == "sqlite":
        from .sqlite import SqliteStorage

        return SqliteStorage(sqlite_path_from_url(url), **options)
    if scheme in ("redis", "rediss"):
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"redis URL needs a host: {url!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port in redis URL {url!r}: {exc}") from None
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError(f"redis URL database must be a number: {url!r}")
        from .redis import RedisStorage

        return RedisStorage(url, **options)
    raise ValueError(f"unsupported storage URL {url!r}: use sqlite:///path or redis://host:port/db")
