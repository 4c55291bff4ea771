"""Fixtures of the end-to-end suite: real `quota-server` processes, killed at teardown."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.config import config_data
from tests.support.subproc import ServerProcess


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Make ServerProcess objects (not started) on the standard config; all are killed at the end."""
    made: list[ServerProcess] = []

    def make(name: str = "server", *, db: str = "quota.db", **sections: dict[str, Any]) -> ServerProcess:
        proc = ServerProcess(tmp_path, config_data(tmp_path / db, **sections), name=name)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.cleanup()
