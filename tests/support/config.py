"""The standard test configuration: a few plans and prices that cover every feature.

Plans: `prepaid` (no overdraft), `payg` (credit limit 1000), `free` (100 included credits a
month, a feature list, a requests limit and an input-token limit), `team` (at most 2 open
holds) and `unlimited` (no credit checks, one small rate limit). Prices: image.generate 5,
doc.summarize 2, llm.chat per 1000 (input 3, output 15) with a 20 % margin, video.render 50.
"""
from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from quota_server.config import Config, parse_config

CREDIT_LIMIT_PAYG = 1000
INCLUDED_FREE = 100
HOLD_TTL_MS = 60_000
RPM_CAPACITY = 10
TOKENS_CAPACITY = 5_000
UNLIMITED_RPS_CAPACITY = 3

PLANS: dict[str, Any] = {
    "prepaid": {},
    "payg": {"credit_limit": CREDIT_LIMIT_PAYG},
    "free": {
        "period": "month",
        "included_credits": INCLUDED_FREE,
        "features": ["image.generate", "doc.summarize", "llm.chat"],
        "limits": [
            {"name": "requests_per_minute", "capacity": RPM_CAPACITY, "refill_amount": RPM_CAPACITY,
             "refill_period_ms": 60_000, "cost": "requests"},
            {"name": "input_tokens_per_minute", "capacity": TOKENS_CAPACITY, "refill_amount": TOKENS_CAPACITY,
             "refill_period_ms": 60_000, "cost": "input_tokens", "actions": ["llm.*"]},
        ],
    },
    "team": {"max_open_holds": 2},
    "unlimited": {
        "unlimited": True,
        "limits": [
            {"name": "requests_per_second", "capacity": UNLIMITED_RPS_CAPACITY,
             "refill_amount": UNLIMITED_RPS_CAPACITY, "refill_period_ms": 1_000},
        ],
    },
}

PRICES: dict[str, Any] = {
    "image.generate": {"amount": 5},
    "doc.summarize": {"amount": 2},
    "llm.chat": {"per_1000": {"input_tokens": 3, "output_tokens": 15}, "margin_percent": 20},
    "video.render": {"amount": 50},
}


def sqlite_url(path: Path | str) -> str:
    """The storage url of an SQLite file at an absolute path (four slashes)."""
    path = str(Path(path).resolve())
    return f"sqlite:///{path}"  # path starts with "/", giving sqlite:////abs/path


def config_data(db_path: Path | str, *, listen: str = "127.0.0.1:0", **sections: dict[str, Any]) -> dict[str, Any]:
    """The standard config as a TOML-shaped dict; `sections` are merged over its top-level tables."""
    data: dict[str, Any] = {
        # No shutdown drain: a test server stops at once (test_shutdown_drain covers the drain).
        "server": {"listen": listen, "shutdown_drain_ms": 0},
        "storage": {"url": sqlite_url(db_path)},
        "defaults": {"hold_ttl_ms": HOLD_TTL_MS},
        "plans": copy.deepcopy(PLANS),
        "prices": copy.deepcopy(PRICES),
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def build_config(data: dict[str, Any]) -> Config:
    return parse_config(data, source="test")


# -- TOML writing (the standard library only reads TOML) -----------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit(lines: list[str], path: str, table: dict[str, Any], header: str | None) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)}
    if header is not None:
        lines.append(header)
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        sub = f"{path}.{_key(k)}" if path else _key(k)
        if isinstance(v, dict):
            _emit(lines, sub, v, f"[{sub}]")
        elif _is_table_array(v):
            for item in v:
                _emit(lines, sub, item, f"[[{sub}]]")


def to_toml(data: dict[str, Any]) -> str:
    """`data` as TOML text (checked: it reads back equal)."""
    lines: list[str] = []
    _emit(lines, "", data, None)
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != data:
        raise AssertionError(f"TOML writer bug: {text}")
    return text
