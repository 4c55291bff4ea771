"""benchmarks/bench_durability.py's choices that no figure shows: which targets run, in which
order, and what the report says of the A/A check (the benchmark itself runs in CI with
--small)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_durability as bd  # noqa: E402


def test_default_targets_keep_the_rotating_orders():
    args = bd.parse_args([])
    assert args.targets == ["memory", "sqlite", "redis"]
    assert args.reps == 7
    for rep in range(8):
        assert bd.order_of(rep, args.targets) == list(bd.ORDERS[rep % len(bd.ORDERS)])


def test_memory2_stands_next_to_memory_and_each_goes_first_half_the_time():
    targets = bd.parse_args(["--targets", "memory2"]).targets
    assert targets == ["memory", "memory2"]  # the baseline is always measured
    orders = [bd.order_of(rep, targets) for rep in range(4)]
    assert sorted(map(tuple, orders)) == [("memory", "memory2")] * 2 + [("memory2", "memory")] * 2


def test_memory2_goes_last_beside_redis():
    targets = bd.parse_args(["--targets", "memory,sqlite,redis,memory2"]).targets
    for rep in range(4):
        order = bd.order_of(rep, targets)
        assert order[:3] == list(bd.ORDERS[rep]) and order[3] == "memory2"


def test_unknown_target_is_refused(capsys):
    with pytest.raises(SystemExit):
        bd.parse_args(["--targets", "memory,postgres"])
    assert "unknown target(s) postgres" in capsys.readouterr().err


def _runs(*ops_per_s: float) -> list[dict]:
    return [{"median": {"ops_per_s": x, "reserve_p50_ms": 1.0, "reserve_p99_ms": 2.0, "commit_p50_ms": 1.0,
                        "commit_p99_ms": 2.0},
             "server_cpu": 1.0, "steal_pct": 0.0, "tally": {"rpc_errors": 0, "bad": 0, "denied": 0}}
            for x in ops_per_s]


def test_report_gives_the_a_a_ratio_and_judges_only_redis():
    args = bd.parse_args(["--workloads", "unary", "--targets", "memory2,redis"])
    results = {("memory", "unary"): _runs(100, 100, 100), ("memory2", "unary"): _runs(90, 110, 80),
               ("redis", "unary"): _runs(84, 95, 80)}
    text, met = bd.render(results, args, ["config"])
    assert "A/A check, a second memory-only server at 90% of the first (per repetition 90%, 110%, 80%)" in text
    assert "Redis (appendfsync everysec) at 84% of memory-only (per repetition 84%, 95%, 80%), target >= 85%: MISSED" in text
    assert not met
