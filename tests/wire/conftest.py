"""Fixtures of the wire tests: one config and one seeded ledger snapshot for the whole module."""
from __future__ import annotations

import pytest

from .support import make_config, seed_snapshot


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return make_config(tmp_path_factory.mktemp("wire"))


@pytest.fixture(scope="module")
def snapshot(config) -> bytes:
    return seed_snapshot(config)
