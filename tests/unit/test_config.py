"""Configuration: the API.md example, defaults, and refusal of every bad key with its name."""
import dataclasses
import pathlib
import re
import tomllib

import pytest

from quota_server.config import (BUILTIN_SOURCE, Config, ConfigError, ServerConfig, StorageUrl,
                                 load_config, parse_config, parse_storage_url)
from quota_server.plans import Plan, RateLimit
from quota_server.pricing import ActionPrice

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# The example from API.md, "Configuration file (TOML)", verbatim.
API_EXAMPLE = '''
[server]
listen = "127.0.0.1:50051"

[storage]
url = "sqlite:///quota-data/quota.db"   # relative path; "sqlite:////var/lib/quota/quota.db" is absolute
                                        # (as in SQLAlchemy); or "redis://127.0.0.1:6379/0"

[defaults]
hold_ttl_ms = 60000          # TTL of a hold when the request gives 0
hold_ttl_max_ms = 604800000  # longer TTLs are INVALID_ARGUMENT
idempotency_retention_ms = 86400000

# Every plan key is optional. Defaults: period "month", included_credits 0, rollover_max 0,
# credit_limit 0, unlimited false, max_open_holds 0, features ["*"], no limits.
[plans.free]
period = "month"             # calendar period in UTC: "day", "week", "month", "year"
included_credits = 100       # granted at the start of every period, expires at its end
rollover_max = 0             # how much unused included credit carries into the next period
credit_limit = 0             # overdraft allowed below zero (pay-as-you-go)
unlimited = false            # subscription without credit checks (limits still apply)
max_open_holds = 0           # concurrency limit on open holds; 0 = no limit
features = ["image.generate", "doc.summarize"]   # actions this plan may use; default ["*"] = all

[[plans.free.limits]]
name = "requests_per_minute"
capacity = 10                # bucket size (burst)
refill_amount = 10           # tokens added per refill period
refill_period_ms = 60000
cost = "requests"            # what one call takes: "requests" (1 per call) or a quantity name
actions = ["*"]              # which actions this limit applies to; default all

[prices."image.generate"]
amount = 5                   # fixed price per call

[prices."doc.summarize"]
amount = 2

[prices."llm.chat"]
per_1000 = { input_tokens = 3, output_tokens = 15 }   # units per 1000 of each quantity, rounded up
margin_percent = 20          # cost-plus, applied to every line of this action's price
'''

LIMIT = {"name": "rpm", "capacity": 10, "refill_period_ms": 60_000}


def error_of(doc):
    """The ConfigError message for `doc` (a dict), without the source prefix."""
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, source="test.toml")
    assert str(caught.value).startswith("test.toml: ")
    return str(caught.value).removeprefix("test.toml: ")


def plan_with(**keys):
    return {"plans": {"free": keys}}


def limit_with(**keys):
    return plan_with(limits=[{**LIMIT, **keys}])


# --- the API.md example ---------------------------------------------------------------


def test_api_example_parses_to_the_stated_values(tmp_path):
    path = tmp_path / "quota.toml"
    path.write_text(API_EXAMPLE)
    config = load_config(str(path))

    assert config.source == str(path)
    assert config.warnings == ()
    assert config.server.listen == "127.0.0.1:50051"
    assert config.storage.url == StorageUrl(url="sqlite:///quota-data/quota.db",
                                            scheme="sqlite", path="quota-data/quota.db")
    assert config.defaults.hold_ttl_ms == 60_000
    assert config.defaults.hold_ttl_max_ms == 604_800_000
    assert config.defaults.idempotency_retention_ms == 86_400_000

    assert list(config.plans) == ["free"]  # a file with plans gets no built-in "default"
    assert config.plans["free"] == Plan(
        name="free", period="month", included_credits=100, rollover_max=0, credit_limit=0,
        unlimited=False, max_open_holds=0, features=("image.generate", "doc.summarize"),
        limits=(RateLimit(name="requests_per_minute", capacity=10, refill_amount=10,
                          refill_period_ms=60_000, cost="requests", actions=("*",)),))

    assert dict(config.prices) == {
        "image.generate": ActionPrice(amount=5),
        "doc.summarize": ActionPrice(amount=2),
        "llm.chat": ActionPrice(per_1000={"input_tokens": 3, "output_tokens": 15},
                                margin_percent=20),
    }
    assert config.prices.price("llm.chat", {"input_tokens": 1234, "output_tokens": 567}) == 16


def test_every_toml_block_in_the_reference_doc_is_a_valid_config():
    """docs/configuration.md must not show operators a file the server would refuse."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        parse_config(tomllib.loads(block), source="docs/configuration.md")


def test_the_api_example_is_in_the_reference_doc():
    assert API_EXAMPLE.strip() in DOCS.read_text()


# --- defaults -------------------------------------------------------------------------


def test_no_file_gives_built_in_defaults():
    config = load_config(None)
    assert config == Config()
    assert config.source == BUILTIN_SOURCE
    assert config.server == ServerConfig(
        listen="127.0.0.1:50051", max_queue=10_000, max_message_bytes=4 * 1024 * 1024,
        max_batch_ops=1_000, grace_period_ms=10_000, flush_max_ops=4_096, flush_window_us=2_000)
    assert config.storage.url.path == "quota-data/quota.db"
    assert (config.storage.snapshot_every_records, config.storage.lease_ttl_ms,
            config.storage.on_lease_held, config.storage.timeout_ms,
            config.storage.snapshot_fork) == (10_000, 10_000, "fail", 5_000, True)
    assert (config.defaults.hold_ttl_ms, config.defaults.hold_ttl_max_ms,
            config.defaults.idempotency_retention_ms) == (60_000, 604_800_000, 86_400_000)
    assert dict(config.prices) == {}


def test_built_in_default_plan_exists_only_without_plans(tmp_path):
    """Without it UpsertAccount could create no account on a config-less server."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    for config in (load_config(None), load_config(str(path)),
                   parse_config({"plans": {}}, source="x")):
        assert dict(config.plans) == {"default": Plan(name="default")}
        assert config.plans["default"].allows("anything")
        assert config.plans["default"].limits == ()
    assert list(parse_config(plan_with(), source="x").plans) == ["free"]


def test_plan_keys_default_as_documented():
    plan = parse_config(plan_with(), source="x").plans["free"]
    assert plan == Plan(name="free", period="month", included_credits=0, rollover_max=0,
                        credit_limit=0, unlimited=False, max_open_holds=0, low_balance=0, features=("*",),
                        limits=())


def test_limit_defaults():
    """refill_amount defaults to capacity, cost to "requests", actions to ["*"]."""
    (rpm,) = parse_config(limit_with(), source="x").plans["free"].limits
    assert rpm == RateLimit(name="rpm", capacity=10, refill_amount=10, refill_period_ms=60_000,
                            cost="requests", actions=("*",))


def test_all_optional_keys_are_read(tmp_path):
    path = tmp_path / "full.toml"
    path.write_text('''
[server]
listen = "[::]:6000"
max_queue = 50
max_message_bytes = 1024
max_batch_ops = 50
grace_period_ms = 0
flush_max_ops = 7
flush_window_us = 0

[storage]
url = "rediss://user:p%40ss@cache.example:6380/3"
snapshot_every_records = 9
lease_ttl_ms = 3000
on_lease_held = "wait"
timeout_ms = 250
snapshot_fork = false

[defaults]
hold_ttl_ms = 1000
hold_ttl_max_ms = 1000
idempotency_retention_ms = 5

[plans."pro.v2"]
period = "week"
included_credits = 1000000000000000
rollover_max = 7
credit_limit = 1000000000000000
unlimited = true
max_open_holds = 3
features = []

[[plans."pro.v2".limits]]
name = "tokens_per_minute"
capacity = 100000
refill_amount = 2000
refill_period_ms = 1000
cost = "input_tokens"
actions = ["llm.*", "doc.summarize"]

[prices."llm.chat"]
amount = 0
per_1000 = { input_tokens = 0 }
''')
    config = load_config(str(path))
    assert config.server == ServerConfig(listen="[::]:6000", max_queue=50, max_message_bytes=1024,
                                         max_batch_ops=50, grace_period_ms=0,
                                         flush_max_ops=7, flush_window_us=0)
    url = config.storage.url
    assert (url.scheme, url.host, url.port, url.db, url.username, url.password, url.tls) == \
        ("rediss", "cache.example", 6380, 3, "user", "p@ss", True)
    assert (config.storage.snapshot_every_records, config.storage.lease_ttl_ms,
            config.storage.on_lease_held, config.storage.timeout_ms,
            config.storage.snapshot_fork) == (9, 3000, "wait", 250, False)
    assert config.defaults.idempotency_retention_ms == 5
    plan = config.plans["pro.v2"]
    assert (plan.period, plan.included_credits, plan.rollover_max, plan.credit_limit,
            plan.unlimited, plan.max_open_holds, plan.features) == \
        ("week", 10**15, 7, 10**15, True, 3, ())
    assert plan.limits[0].actions == ("llm.*", "doc.summarize")
    assert config.warnings == ()  # input_tokens is named by a price
    assert config.prices.price("llm.chat", {"input_tokens": 10**6}) == 0


def test_config_objects_are_frozen_and_keyword_only():
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = ServerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.max_queue = 1
    with pytest.raises(TypeError):
        ServerConfig("127.0.0.1:1")


# --- files ----------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(str(missing)) + ".*cannot read"):
        load_config(str(missing))


def test_invalid_toml_names_the_path(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server\nlisten = 1")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": not valid TOML"):
        load_config(str(path))


def test_error_from_a_file_names_file_and_key(tmp_path):
    path = tmp_path / "quota.toml"
    path.write_text('[plans.free]\n[[plans.free.limits]]\nname = "rpm"\ncapacity = 0\n'
                    'refill_period_ms = 1000\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == \
        f"{path}: plans.free.limits[0].capacity: must be a positive integer, got 0"
    assert caught.value.key == "plans.free.limits[0].capacity"
    assert caught.value.problem == "must be a positive integer, got 0"
    assert caught.value.source == str(path)


# --- unknown keys ---------------------------------------------------------------------


@pytest.mark.parametrize("doc, key", [
    ({"sever": {}}, "sever"),
    ({"server": {"port": 1}}, "server.port"),
    ({"storage": {"uri": "x"}}, "storage.uri"),
    ({"defaults": {"hold_ttl": 5}}, "defaults.hold_ttl"),
    (plan_with(credits=5), "plans.free.credits"),
    (limit_with(burst=5), "plans.free.limits[0].burst"),
    ({"prices": {"llm.chat": {"per_100": {"t": 1}}}}, 'prices."llm.chat".per_100'),
    ({"prices": {"image.generate": {"amount": 1, "margin": 5}}},
     'prices."image.generate".margin'),
])
def test_unknown_keys_are_refused_by_full_name(doc, key):
    assert error_of(doc).startswith(f"{key}: unknown key")


def test_unknown_key_suggests_the_close_one():
    assert 'did you mean "listen"' in error_of({"server": {"listn": "x"}})


def test_unquoted_dotted_action_gets_a_hint():
    """[prices.llm.chat] is a nested table in TOML: say how to write it."""
    message = error_of(tomllib.loads("[prices.llm.chat]\namount = 1\n"))
    assert message.startswith("prices.llm.chat: unknown key")
    assert '[prices."llm.chat"]' in message


# --- types ----------------------------------------------------------------------------


INT_KEYS = [
    ({"server": {"max_queue": True}}, "server.max_queue"),
    ({"server": {"grace_period_ms": False}}, "server.grace_period_ms"),
    ({"server": {"flush_window_us": True}}, "server.flush_window_us"),
    ({"storage": {"lease_ttl_ms": True}}, "storage.lease_ttl_ms"),
    ({"defaults": {"hold_ttl_ms": True}}, "defaults.hold_ttl_ms"),
    (plan_with(included_credits=True), "plans.free.included_credits"),
    (plan_with(credit_limit=True), "plans.free.credit_limit"),
    (plan_with(max_open_holds=False), "plans.free.max_open_holds"),
    (limit_with(capacity=True), "plans.free.limits[0].capacity"),
    (limit_with(refill_amount=True), "plans.free.limits[0].refill_amount"),
    (limit_with(refill_period_ms=True), "plans.free.limits[0].refill_period_ms"),
    ({"prices": {"a": {"amount": True}}}, "prices.a.amount"),
    ({"prices": {"a": {"per_1000": {"t": True}}}}, "prices.a.per_1000.t"),
    ({"prices": {"a": {"amount": 1, "margin_percent": True}}}, "prices.a.margin_percent"),
]


@pytest.mark.parametrize("doc, key", INT_KEYS)
def test_booleans_are_not_integers(doc, key):
    """TOML `true` is not 1."""
    assert re.fullmatch(re.escape(key) + r": must be an integer, got (true|false)",
                        error_of(doc))


@pytest.mark.parametrize("doc, key", [
    (plan_with(unlimited=1), "plans.free.unlimited"),
    (plan_with(unlimited="false"), "plans.free.unlimited"),
    ({"storage": {"snapshot_fork": 0}}, "storage.snapshot_fork"),
])
def test_integers_are_not_booleans(doc, key):
    assert error_of(doc).startswith(f"{key}: must be true or false, got ")


@pytest.mark.parametrize("doc, key, got", [
    ({"prices": {"a": {"amount": 2.5}}}, "prices.a.amount", "2.5"),
    (limit_with(capacity=10.0), "plans.free.limits[0].capacity", "10.0"),
    (plan_with(included_credits="100"), "plans.free.included_credits", '"100"'),
    ({"prices": {"a": {"per_1000": {"t": 0.5}}}}, "prices.a.per_1000.t", "0.5"),
])
def test_amounts_must_be_integers(doc, key, got):
    assert error_of(doc) == f"{key}: must be an integer, got {got}"


@pytest.mark.parametrize("doc, key", [
    ({"server": 5}, "server"),
    ({"plans": []}, "plans"),
    ({"plans": {"free": 1}}, "plans.free"),
    ({"prices": {"a": "5"}}, "prices.a"),
    ({"prices": {"a": {"per_1000": 3}}}, "prices.a.per_1000"),
    (plan_with(limits=[1]), "plans.free.limits[0]"),
])
def test_sections_must_be_tables(doc, key):
    assert error_of(doc).startswith(f"{key}: must be a table")


# --- values ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc, expected", [
    (limit_with(capacity=0), "plans.free.limits[0].capacity: must be a positive integer, got 0"),
    (limit_with(refill_amount=0),
     "plans.free.limits[0].refill_amount: must be a positive integer, got 0"),
    (limit_with(refill_period_ms=0),
     "plans.free.limits[0].refill_period_ms: must be a positive integer, got 0"),
    (limit_with(refill_period_ms=-5),
     "plans.free.limits[0].refill_period_ms: must be a positive integer, got -5"),
    (plan_with(included_credits=-1), "plans.free.included_credits: must not be negative, got -1"),
    (plan_with(rollover_max=-1), "plans.free.rollover_max: must not be negative, got -1"),
    (plan_with(credit_limit=-1000), "plans.free.credit_limit: must not be negative, got -1000"),
    (plan_with(max_open_holds=-1), "plans.free.max_open_holds: must not be negative, got -1"),
    ({"prices": {"a": {"amount": -1}}}, "prices.a.amount: must not be negative, got -1"),
    ({"prices": {"a": {"per_1000": {"t": -3}}}},
     "prices.a.per_1000.t: must not be negative, got -3"),
    ({"prices": {"a": {"amount": 1, "margin_percent": -10}}},
     "prices.a.margin_percent: must not be negative, got -10"),
    ({"server": {"max_queue": 0}}, "server.max_queue: must be a positive integer, got 0"),
    ({"defaults": {"hold_ttl_ms": 0}}, "defaults.hold_ttl_ms: must be a positive integer, got 0"),
    ({"storage": {"lease_ttl_ms": 0}}, "storage.lease_ttl_ms: must be a positive integer, got 0"),
    ({"storage": {"lease_ttl_ms": 3_600_001}}, "storage.lease_ttl_ms: must be at most 3600000, got 3600001"),
    (plan_with(limits=[{"name": "rpm", "capacity": 10, "refill_period_ms": 60_000, "warn_at_percent": 100}]),
     "plans.free.limits[0].warn_at_percent: must be at most 99, got 100"),
    ({"defaults": {"hold_ttl_max_ms": 1000}},
     "defaults.hold_ttl_max_ms: must be at least defaults.hold_ttl_ms (not set: its default 60000), got 1000; "
     "set both"),
    ({"server": {"flush_window_us": -1}}, "server.flush_window_us: must not be negative, got -1"),
])
def test_out_of_range_values(doc, expected):
    assert error_of(doc) == expected


@pytest.mark.parametrize("doc, key", [
    ({"prices": {"a": {"amount": 10**15 + 1}}}, "prices.a.amount"),
    ({"prices": {"a": {"per_1000": {"t": 10**15 + 1}}}}, "prices.a.per_1000.t"),
    (plan_with(included_credits=10**15 + 1), "plans.free.included_credits"),
    (plan_with(credit_limit=10**15 + 1), "plans.free.credit_limit"),
    (plan_with(rollover_max=10**15 + 1), "plans.free.rollover_max"),
    (limit_with(capacity=10**15 + 1), "plans.free.limits[0].capacity"),
])
def test_amounts_above_1e15_are_refused(doc, key):
    assert error_of(doc) == f"{key}: must be at most 1000000000000000, got 1000000000000001"


def test_amounts_at_1e15_are_accepted():
    config = parse_config({"prices": {"a": {"amount": 10**15}},
                           **plan_with(credit_limit=10**15)}, source="x")
    assert config.prices["a"].amount == 10**15


@pytest.mark.parametrize("doc, key", [
    ({"defaults": {"hold_ttl_max_ms": 10**12 + 1}}, "defaults.hold_ttl_max_ms"),
    ({"prices": {"a": {"amount": 1, "margin_percent": 10_001}}}, "prices.a.margin_percent"),
    ({"server": {"max_message_bytes": 2**31}}, "server.max_message_bytes"),
])
def test_other_maximums(doc, key):
    assert error_of(doc).startswith(f"{key}: must be at most ")


def test_hold_ttl_must_not_exceed_its_maximum():
    assert error_of({"defaults": {"hold_ttl_ms": 2000, "hold_ttl_max_ms": 1000}}) == \
        "defaults.hold_ttl_ms: must be at most defaults.hold_ttl_max_ms (1000), got 2000"
    assert error_of({"defaults": {"hold_ttl_ms": 604_800_001}}).startswith("defaults.hold_ttl_ms")


def test_batch_ops_must_fit_in_the_queue():
    assert error_of({"server": {"max_queue": 10, "max_batch_ops": 11}}) == \
        "server.max_batch_ops: must be at most 10, got 11"
    assert parse_config({"server": {"max_queue": 10}}, source="x").server.max_batch_ops == 10


@pytest.mark.parametrize("doc, key", [
    (plan_with(period="monthly"), "plans.free.period"),
    (plan_with(period="Month"), "plans.free.period"),
    ({"storage": {"on_lease_held": "steal"}}, "storage.on_lease_held"),
])
def test_choices(doc, key):
    assert error_of(doc).startswith(f"{key}: must be one of ")


@pytest.mark.parametrize("features, key", [
    ("image.generate", "plans.free.features"),
    ([1], "plans.free.features[0]"),
    (["image.generate", True], "plans.free.features[1]"),
    (["im*ge"], "plans.free.features[0]"),
    (["*.generate"], "plans.free.features[0]"),
    ([""], "plans.free.features[0]"),
])
def test_features_must_be_a_list_of_action_patterns(features, key):
    assert error_of(plan_with(features=features)).startswith(f"{key}: must be ")


def test_limit_actions_are_validated_like_features():
    assert error_of(limit_with(actions=["ok", 5])).startswith(
        "plans.free.limits[0].actions[1]: must be a string")
    assert error_of(limit_with(actions=[])) == \
        'plans.free.limits[0].actions: must name at least one action (["*"] means all)'


@pytest.mark.parametrize("cost", ["", "request", "Requests", "REQUESTS", "reqs", "a b", 5])
def test_limit_cost_must_name_something_sensible(cost):
    assert error_of(limit_with(cost=cost)).startswith("plans.free.limits[0].cost: must be ")


def test_limit_cost_on_an_unpriced_quantity_is_allowed_with_a_warning():
    config = parse_config(limit_with(cost="gpu_seconds"), source="x")
    assert config.plans["free"].limits[0].cost == "gpu_seconds"
    assert config.warnings == (
        'plans.free.limits[0].cost: quantity "gpu_seconds" is not named by any price; '
        "calls that do not report it cost 0 against this limit",)


@pytest.mark.parametrize("doc, expected", [
    (plan_with(limits=[{"capacity": 1, "refill_period_ms": 1}]),
     "plans.free.limits[0].name: missing (this key is required)"),
    (plan_with(limits=[{"name": "a", "refill_period_ms": 1}]),
     "plans.free.limits[0].capacity: missing (this key is required)"),
    (plan_with(limits=[{"name": "a", "capacity": 1}]),
     "plans.free.limits[0].refill_period_ms: missing (this key is required)"),
    (plan_with(limits=[LIMIT, LIMIT]), 'plans.free.limits[1].name: duplicate limit name "rpm" '
                                      "in this plan"),
    (plan_with(limits={"name": "a"}),
     "plans.free.limits: must be an array of tables ([[plans.free.limits]]), got a table"),
])
def test_limit_structure(doc, expected):
    assert error_of(doc) == expected


def test_price_needs_amount_or_per_1000():
    assert error_of({"prices": {"llm.chat": {"margin_percent": 5}}}) == \
        'prices."llm.chat": needs amount and/or a non-empty per_1000 table'
    assert error_of({"prices": {"llm.chat": {"per_1000": {}}}}).startswith('prices."llm.chat": ')


@pytest.mark.parametrize("doc, key", [
    ({"prices": {"a b": {"amount": 1}}}, 'prices."a b"'),
    ({"prices": {"image.*": {"amount": 1}}}, 'prices."image.*"'),
    ({"prices": {"a": {"per_1000": {"in tokens": 1}}}}, 'prices.a.per_1000."in tokens"'),
    ({"plans": {"free plan": {}}}, 'plans."free plan"'),
    ({"plans": {"x" * 129: {}}}, "plans." + "x" * 129),
])
def test_names_follow_the_id_alphabet(doc, key):
    assert error_of(doc).startswith(f"{key}: ")


# --- listen and storage ---------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "0.0.0.0:0", "[::]:50051",
                                    "[::1]:1", "localhost:65535", "quota.internal:443"])
def test_valid_listen(listen):
    assert parse_config({"server": {"listen": listen}}, source="x").server.listen == listen


@pytest.mark.parametrize("listen", ["50051", ":50051", "host:", "host:abc", "host:65536",
                                    "::1:50051", "[]:1", "[zz]:1", "a b:1", "host:-1",
                                    "unix:/tmp/s"])
def test_invalid_listen(listen):
    assert error_of({"server": {"listen": listen}}).startswith("server.listen: ")


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///quota-data/quota.db", dict(scheme="sqlite", path="quota-data/quota.db")),
    ("sqlite:////var/lib/quota/quota.db", dict(scheme="sqlite", path="/var/lib/quota/quota.db")),
    ("SQLite:///a.db", dict(scheme="sqlite", path="a.db")),
    ("redis://127.0.0.1:6379/0", dict(scheme="redis", host="127.0.0.1", port=6379, db=0)),
    ("redis://localhost", dict(scheme="redis", host="localhost", port=6379, db=0)),
    ("redis://localhost/", dict(scheme="redis", host="localhost", port=6379, db=0)),
    ("redis://[::1]:7000/15", dict(scheme="redis", host="::1", port=7000, db=15)),
    ("redis://:secret@h:1/2", dict(scheme="redis", host="h", port=1, db=2, username=None,
                                  password="secret")),
    ("redis://bob:s%3Ac@h:1/2", dict(host="h", username="bob", password="s:c")),
    ("rediss://h:6380/1", dict(scheme="rediss", host="h", port=6380, db=1, tls=True)),
])
def test_storage_urls(url, expected):
    parsed = parse_storage_url(url)
    assert parsed.url == url
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name
    assert parsed.is_sqlite == (parsed.scheme == "sqlite")
    assert parsed.is_redis == (not parsed.is_sqlite)


@pytest.mark.parametrize("url", ["", "quota.db", "postgres://h/db", "sqlite://quota.db",
                                 "sqlite:///", "sqlite:////", "sqlite:///a.db?mode=ro", "sqlite:///:memory:",
                                 "redis://", "redis://:6379/0", "redis://h:0/0",
                                 "redis://h:99999/0", "redis://h:abc/0", "redis://h/abc",
                                 "redis://h/-1", "redis://h/0?ssl=true", "unix:///tmp/r.sock"])
def test_bad_storage_urls(url):
    assert error_of({"storage": {"url": url}}).startswith("storage.url: ")


def test_storage_url_password_is_kept_out_of_logs():
    url = parse_storage_url("redis://bob:hunter2@h:1/2")
    assert "hunter2" not in repr(url)
    assert url.redacted() == "redis://bob:***@h:1/2"
    assert parse_storage_url("redis://h:1/2").redacted() == "redis://h:1/2"
    assert "hunter2" not in error_of({"storage": {"url": "redis://bob:hunter2@h:99999/0"}})


@pytest.mark.parametrize("doc, key", [
    ({"defaults": {"async_durability": True}}, "defaults.async_durability"),
    ({"server": {"flush_window_max_ms": 2}}, "server.flush_window_max_ms"),
])
def test_keys_that_would_do_nothing_are_refused(doc, key):
    """Regression: these keys were accepted and documented but the server ignored them; an
    operator must learn at startup that a setting has no effect, not in production."""
    assert error_of(doc).startswith(f"{key}: ")


# --- [auth] --------------------------------------------------------------------------

SECRET = "s3cret-key-0123456789"


def test_auth_keys_are_read_as_hashes_with_roles():
    import hashlib

    config = parse_config({"auth": {"keys": [
        {"name": "backend", "key": SECRET},
        {"key_sha256": "AB" * 32, "role": "admin"},
    ]}}, source="t")
    assert config.auth.enabled and not parse_config({}, source="t").auth.enabled
    (backend, second) = config.auth.keys
    assert (backend.name, backend.sha256, backend.role) == ("backend", hashlib.sha256(SECRET.encode()).digest(), "data")
    assert (second.name, second.sha256, second.role) == ("key 2", bytes.fromhex("ab" * 32), "admin")


@pytest.mark.parametrize("keys, expected", [
    ({"keys": [{"key": "short"}]}, "auth.keys[0].key: must be at least 16 characters (use a random secret)"),
    ({"keys": [{"key": SECRET + " x"}]}, "auth.keys[0].key: must be printable ASCII without spaces"),
    ({"keys": [{"name": "x"}]}, 'auth.keys[0]: set exactly one of "key" and "key_sha256"'),
    ({"keys": [{"key": SECRET, "key_sha256": "ab" * 32}]}, 'auth.keys[0]: set exactly one of "key" and "key_sha256"'),
    ({"keys": [{"key_sha256": "xyz"}]}, 'auth.keys[0].key_sha256: must be 64 hex digits (the SHA-256 of the key), got "xyz"'),
    ({"keys": [{"key": SECRET, "role": "root"}]}, 'auth.keys[0].role: must be one of "data", "admin", got "root"'),
    ({"keys": [{"name": "a", "key": SECRET}, {"name": "b", "key": SECRET}]}, "auth.keys[1]: the same key as 'a'"),
    ({"keys": {"key": SECRET}}, "auth.keys: must be an array of tables ([[auth.keys]]), got a table"),
])
def test_bad_auth_keys_are_refused_without_quoting_the_key(keys, expected):
    message = error_of({"auth": keys})
    assert message == expected
    assert SECRET not in message


@pytest.mark.parametrize("server, expected", [
    ({"tls_cert_file": "c.pem"}, "server.tls_key_file: missing (tls_cert_file and tls_key_file go together)"),
    ({"tls_key_file": "k.pem"}, "server.tls_cert_file: missing (tls_cert_file and tls_key_file go together)"),
    ({"tls_client_ca_file": "ca.pem"},
     "server.tls_client_ca_file: needs tls_cert_file and tls_key_file (client certificates are checked over TLS)"),
])
def test_tls_files_go_together(server, expected):
    assert error_of({"server": server}) == expected


def test_tls_files_are_read_as_paths():
    server = parse_config({"server": {"tls_cert_file": "c.pem", "tls_key_file": "k.pem"}}, source="t").server
    assert (server.tls, server.tls_cert_file, server.tls_key_file, server.tls_client_ca_file) == (True, "c.pem", "k.pem", "")
    assert not parse_config({}, source="t").server.tls
