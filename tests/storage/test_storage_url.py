"""storage_from_url: the [storage] url forms of the config file."""
from __future__ import annotations

import pytest

from quota_server.storage import storage_from_url
from quota_server.storage.redis import RedisStorage
from quota_server.storage.sqlite import SqliteStorage


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///quota-data/quota.db", "quota-data/quota.db"),
        ("sqlite:///quota.db", "quota.db"),
        ("sqlite:////var/lib/quota/quota.db", "/var/lib/quota/quota.db"),
        ("sqlite:///dir%20with%20space/q.db", "dir with space/q.db"),
    ],
)
def test_sqlite_urls_relative_with_three_slashes_absolute_with_four(url: str, path: str) -> None:
    """As in SQLAlchemy: three slashes then a relative path, four for an absolute one."""
    storage = storage_from_url(url)
    assert isinstance(storage, SqliteStorage)
    assert storage.path == path
    assert storage.lock_path == path + ".lock"


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:secret@cache.internal:6380/2", "redis://cache.internal:6380/2"),
        ("rediss://:secret@cache.internal:6390", "rediss://cache.internal:6390"),
        ("redis://localhost", "redis://localhost:6379"),
    ],
)
def test_redis_urls_and_credentials_stay_out_of_messages(url: str, where: str) -> None:
    """redis:// and rediss:// (TLS) are accepted; messages never show the password."""
    storage = storage_from_url(url, op_timeout_ms=500)
    assert isinstance(storage, RedisStorage)
    assert storage.url == url
    assert storage.where == where


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///dir/",
        "sqlite:///q.db?mode=ro",
        "sqlite:relative.db",
        "redis://",
        "redis://host:notaport/0",
        "redis://host:6379/zero",
        "postgres://localhost/quota",
        "quota.db",
    ],
)
def test_bad_urls_are_refused_with_the_url_in_the_message(url: str) -> None:
    """A typo in the config must fail at startup, naming what was wrong."""
    with pytest.raises(ValueError) as info:
        storage_from_url(url)
    assert repr(url) in str(info.value) or url in str(info.value)
