"""The core against the reference model on a seeded random workload (every op kind, several
accounts, clock jumps past TTLs and retention): the same results and the same views."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import _fastledger

from .workload import batches, setup_ops, views

RETENTION = 600 * 1_000_000_000


def load_model():
    path = Path(__file__).resolve().parents[1] / "model" / "reference.py"
    spec = importlib.util.spec_from_file_location("core_tests_reference_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [101, 202, 303, 404])
def test_core_matches_the_model(seed):
    model = load_model().Ledger(retention_ns=RETENTION)
    core = _fastledger.Ledger(retention_ns=RETENTION)
    now = 10**15
    assert core.apply(setup_ops(), now) == model.apply(setup_ops(), now)
    for i, (now, ops) in enumerate(batches(seed, 300, now)):
        assert core.apply(ops, now) == model.apply(ops, now), (i, ops)
        assert core.replayed_indices() == model.replayed_indices(), (i, ops)
        core.take_journal()
        if i % 25 == 0:
            core.check_invariants()
            model.check_invariants()
            assert views(core, now) == views(model, now)
    assert views(core, now) == views(model, now)
    assert core.account_ids() == model.account_ids()
