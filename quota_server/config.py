"""Load and validate the quota-server configuration file (TOML).

Every key is documented in docs/configuration.md. Unknown keys and bad values raise
ConfigError naming the full dotted key, e.g.
`plans.free.limits[0].capacity: must be a positive integer, got 0`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quota_server.plans import (NAME_RE, PERIODS, REQUESTS_COST, Plan, PlanCatalog, RateLimit,
                                pattern_problem)
from quota_server.pricing import MAX_AMOUNT, ActionPrice, PriceCatalog
from quota_server.storage.base import LEASE_TTL_MAX_MS, LEASE_TTL_MIN_MS

BUILTIN_SOURCE = "<built-in defaults>"
DEFAULT_PLAN_NAME = "default"  # the only plan when the file defines none
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_STORAGE_URL = "sqlite:///quota-data/quota.db"
MAX_DURATION_MS = 10**12  # about 31.7 years; keeps every duration well inside int64 ns
MAX_MARGIN_PERCENT = 10_000
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's own limit
ON_LEASE_HELD = ("fail", "wait")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HOST = re.compile(r"[A-Za-z0-9.-]+")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the dotted key."""

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        text = f"{key}: {problem}" if key else problem
        super().__init__(f"{source}: {text}" if source else text)


@dataclass(frozen=True, kw_only=True)
class StorageUrl:
    """A parsed `[storage] url`: an SQLite file, or a Redis server (`tls` for rediss://)."""

    url: str = field(repr=False)  # as written; may contain a password, see `redacted`
    scheme: str  # "sqlite", "redis" or "rediss"
    path: str | None = None  # sqlite only: relative to the working directory unless absolute
    host: str | None = None
    port: int | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.scheme == "sqlite"

    @property
    def is_redis(self) -> bool:
        return self.scheme in ("redis", "rediss")

    def redacted(self) -> str:
        """The url with any password replaced by ***, for logs."""
        if self.password is None:
            return self.url
        user = urllib.parse.quote(self.username or "", safe="")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{user}:***@{host}:{self.port}/{self.db}"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    max_queue: int = 10_000  # operations waiting for the engine; beyond: RESOURCE_EXHAUSTED
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC receive/send limit
    max_batch_ops: int = 1_000  # ops in one Batch RPC
    grace_period_ms: int = 10_000  # on SIGTERM: time to finish and persist in-flight work
    # On SIGTERM, before the listener closes: health NOT_SERVING and new mutations refused with
    # SHUTTING_DOWN, for this long, so health checkers and clients see it and go elsewhere.
    shutdown_drain_ms: int = 500
    flush_max_ops: int = 4_096  # operations in one persisted batch
    flush_window_us: int = 2_000  # adaptive group commit: longest wait for more small ops
    tls_cert_file: str = ""  # PEM certificate chain: serve TLS (with tls_key_file)
    tls_key_file: str = ""  # PEM private key of tls_cert_file
    tls_client_ca_file: str = ""  # PEM CA bundle: require client certificates it signed (mTLS)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    url: StorageUrl = field(default_factory=lambda: parse_storage_url(DEFAULT_STORAGE_URL))
    snapshot_every_records: int = 10_000  # journal records between full snapshots
    lease_ttl_ms: int = 10_000  # ownership lease; renewed well before it runs out
    on_lease_held: str = "fail"  # another live owner holds the lease: "fail" or "wait"
    timeout_ms: int = 5_000  # one storage round trip; slower counts as failed, then retried
    snapshot_fork: bool = True  # serialize snapshots in a forked child, off the event loop
    # During a storage outage, answer calls that only touch rate limits (accounts on an
    # `unlimited` plan) once applied, persisted when storage returns (see DataPlane.submit).
    fail_open_rate_limits: bool = False


@dataclass(frozen=True, kw_only=True)
class DefaultsConfig:
    hold_ttl_ms: int = 60_000
    hold_ttl_max_ms: int = 604_800_000
    idempotency_retention_ms: int = 86_400_000


def _builtin_plans() -> PlanCatalog:
    return PlanCatalog({DEFAULT_PLAN_NAME: Plan(name=DEFAULT_PLAN_NAME)})


AUTH_ROLES = ("data", "admin")


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """One accepted API key: its name (for logs), the SHA-256 of the key, and its role ("data":
    QuotaService; "admin": QuotaService and AdminService)."""

    name: str
    sha256: bytes
    role: str


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    keys: tuple[ApiKey, ...] = ()  # none: every call is accepted (no [auth] table)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    plans: PlanCatalog = field(default_factory=_builtin_plans)
    prices: PriceCatalog = field(default_factory=lambda: PriceCatalog({}))
    source: str = BUILTIN_SOURCE  # the file it was read from
    warnings: tuple[str, ...] = ()  # valid but suspicious settings, for the startup log


def load_config(path: str | None) -> Config:
    """Read and validate the TOML file at `path`; None gives the built-in defaults."""
    if path is None:
        return parse_config({}, source=BUILTIN_SOURCE)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError("", f"cannot read config file: {exc.strerror or exc}",
                          source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", source=path) from None
    return parse_config(data, source=path)


def parse_config(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate an already-parsed TOML document (`source` names it in error messages)."""
    try:
        return _parse(data, source)
    except _Invalid as exc:
        raise ConfigError(exc.key, exc.problem, source=source) from None


def parse_storage_url(url: str) -> StorageUrl:
    """Parse a storage url; ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("sqlite", "redis", "rediss", "memory"):
        raise ValueError("must start with sqlite://, redis:// or rediss:// (or memory:// for benchmarks)")
    if scheme == "memory":
        if rest:
            raise ValueError('memory storage takes no path: use "memory://"')
        return StorageUrl(url=url, scheme="memory")
    if scheme == "sqlite":
        return _parse_sqlite_url(url, rest)
    return _parse_redis_url(url, scheme)


def _parse_sqlite_url(url: str, rest: str) -> StorageUrl:
    if not rest.startswith("/"):
        raise ValueError('use "sqlite:///relative/path.db" or "sqlite:////absolute/path.db"')
    path = rest[1:]  # sqlite:///a.db -> "a.db", sqlite:////var/a.db -> "/var/a.db"
    if path == ":memory:":
        raise ValueError('an in-memory SQLite database cannot be shared with its worker thread; '
                         'use "memory://" (nothing persisted) for experiments')
    if not path or path.endswith("/"):
        raise ValueError("needs a database file path after sqlite:///")
    if "?" in path or "#" in path:
        raise ValueError("query parameters are not supported")
    return StorageUrl(url=url, scheme="sqlite", path=path)


def _parse_redis_url(url: str, scheme: str) -> StorageUrl:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port must be an integer from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"needs a host, e.g. {scheme}://127.0.0.1:6379/0")
    if parts.query or parts.fragment:
        raise ValueError("query parameters are not supported")
    db_text = parts.path.removeprefix("/")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise ValueError(f"the database must be a non-negative integer, not {db_text!r}")
    unquote = urllib.parse.unquote
    return StorageUrl(
        url=url, scheme=scheme, host=parts.hostname, port=6379 if port is None else port,
        db=int(db_text or 0), username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=scheme == "rediss")


# --- reading the document ---------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


_REQUIRED = object()


def _join(path: str, key: str) -> str:
    """The dotted TOML key of `key` inside `path`, quoted when it is not a bare key."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # TOML dates and times


class _Table:
    """One TOML table being read: refuses unknown keys, reads typed values by name."""

    def __init__(self, data: object, path: str, allowed: tuple[str, ...], *,
                 nested_hint: str = "") -> None:
        if not isinstance(data, dict):
            raise _Invalid(path, f"must be a table, got {_describe(data)}")
        for key, value in data.items():
            if key not in allowed:
                raise _Invalid(_join(path, key), _unknown_key_problem(
                    key, allowed, nested_hint if isinstance(value, dict) else ""))
        self.data = data
        self.path = path

    def key(self, key: str) -> str:
        return _join(self.path, key)

    def raw(self, key: str, default: object) -> object:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise _Invalid(self.key(key), "missing (this key is required)")
        return default

    def integer(self, key: str, default: object, *, minimum: int = 0,
                maximum: int = MAX_AMOUNT) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(self.key(key), f"must be an integer, got {_describe(value)}")
        if value < minimum:
            what = ("must be a positive integer" if minimum == 1 else
                    "must not be negative" if minimum == 0 else f"must be at least {minimum}")
            raise _Invalid(self.key(key), f"{what}, got {value}")
        if value > maximum:
            raise _Invalid(self.key(key), f"must be at most {maximum}, got {value}")
        return value

    def duration_ms(self, key: str, default: object, *, minimum: int = 1) -> int:
        return self.integer(key, default, minimum=minimum, maximum=MAX_DURATION_MS)

    def boolean(self, key: str, default: object) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise _Invalid(self.key(key), f"must be true or false, got {_describe(value)}")
        return value

    def string(self, key: str, default: object) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise _Invalid(self.key(key), f"must be a string, got {_describe(value)}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            options = ", ".join(json.dumps(c) for c in choices)
            raise _Invalid(self.key(key), f"must be one of {options}, got {_describe(value)}")
        return value

    def checked(self, key: str, default: object, problem: Callable[[str], str | None]) -> str:
        """A string that `problem` finds nothing wrong with."""
        value = self.string(key, default)
        why = problem(value)
        if why is not None:
            raise _Invalid(self.key(key), f"{why}, got {_describe(value)}")
        return value

    def patterns(self, key: str) -> tuple[str, ...]:
        """An array of action patterns (default ["*"])."""
        value = self.raw(key, ["*"])
        if not isinstance(value, list):
            raise _Invalid(self.key(key), f"must be an array of strings, got {_describe(value)}")
        for index, pattern in enumerate(value):
            why = pattern_problem(pattern)
            if why is not None:
                raise _Invalid(f"{self.key(key)}[{index}]", f"{why}, got {_describe(pattern)}")
        return tuple(value)


def _unknown_key_problem(key: str, allowed: tuple[str, ...], nested_hint: str) -> str:
    problem = "unknown key"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        problem += f' (did you mean "{close[0]}"?)'
    elif nested_hint:
        problem += f" ({nested_hint})"
    if allowed:
        problem += f"; expected one of: {', '.join(allowed)}"
    return problem


_NAME_RULE = "1 to 128 characters from [A-Za-z0-9._:@/-]"


def _name_problem(name: str) -> str | None:
    return None if NAME_RE.fullmatch(name) else f"must be {_NAME_RULE}"


def _check_table_name(path: str, name: str, what: str) -> None:
    """Names that are TOML keys (plans, actions, quantities) follow the id alphabet."""
    if not NAME_RE.fullmatch(name):
        raise _Invalid(path, f"{what} must be {_NAME_RULE}, got {_describe(name)}")


def _listen_problem(listen: str) -> str | None:
    bad = 'must be host:port, e.g. "127.0.0.1:50051" or "[::]:50051"'
    host, sep, port = listen.rpartition(":")
    if not sep or not host:
        return bad
    if host.startswith("[") and host.endswith("]"):
        if len(host) < 4 or not re.fullmatch(r"[0-9A-Fa-f:.]+", host[1:-1]):
            return bad
    elif ":" in host:
        return 'IPv6 addresses go in brackets, e.g. "[::1]:50051"'
    elif not _HOST.fullmatch(host):
        return bad
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return "the port must be an integer from 0 to 65535"
    return None


# --- sections ---------------------------------------------------------------------------


def _parse(data: Mapping[str, Any], source: str) -> Config:
    root = _Table(dict(data), "", ("server", "auth", "storage", "defaults", "plans", "prices"))
    server = _parse_server(root.raw("server", {}))
    auth = _parse_auth(root.raw("auth", {}))
    storage = _parse_storage(root.raw("storage", {}))
    defaults = _parse_defaults(root.raw("defaults", {}))
    prices = _parse_prices(root.raw("prices", {}))
    warnings: list[str] = []
    plans = _parse_plans(root.raw("plans", {}), prices, warnings)
    return Config(server=server, auth=auth, storage=storage, defaults=defaults, plans=plans,
                  prices=prices, source=source, warnings=tuple(warnings))


def _parse_auth(data: object) -> AuthConfig:
    """[auth] keys = [{name, key | key_sha256, role}, ...]; a key is sent as `authorization:
    Bearer <key>` and stored here in clear (`key`) or as the hex SHA-256 of it (`key_sha256`)."""
    t = _Table(data, "auth", ("keys",))
    items = t.raw("keys", [])
    if not isinstance(items, list):
        raise _Invalid(t.key("keys"), f"must be an array of tables ([[auth.keys]]), got {_describe(items)}")
    keys: list[ApiKey] = []
    seen: dict[bytes, str] = {}
    for index, item in enumerate(items):
        k = _Table(item, f"{t.key('keys')}[{index}]", ("name", "key", "key_sha256", "role"))
        name = k.string("name", f"key {index + 1}")
        if ("key" in k.data) == ("key_sha256" in k.data):
            raise _Invalid(k.path, 'set exactly one of "key" and "key_sha256"')
        if "key" in k.data:
            key = k.string("key", _REQUIRED)
            why = _api_key_problem(key)
            if why is not None:  # the message never quotes the key: it is a secret
                raise _Invalid(k.key("key"), why)
            digest = hashlib.sha256(key.encode()).digest()
        else:
            hexdigest = k.checked("key_sha256", _REQUIRED, _sha256_problem)
            digest = bytes.fromhex(hexdigest)
        if digest in seen:
            raise _Invalid(k.path, f"the same key as {seen[digest]!r}")
        seen[digest] = name
        keys.append(ApiKey(name=name, sha256=digest, role=k.choice("role", "data", AUTH_ROLES)))
    return AuthConfig(keys=tuple(keys))


def _api_key_problem(key: str) -> str | None:
    if len(key) < 16:
        return "must be at least 16 characters (use a random secret)"
    if not key.isascii() or not key.isprintable() or " " in key:
        return "must be printable ASCII without spaces"
    return None


def _sha256_problem(value: str) -> str | None:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return "must be 64 hex digits (the SHA-256 of the key)"
    return None


def _parse_server(data: object) -> ServerConfig:
    t = _Table(data, "server", ("listen", "max_queue", "max_message_bytes", "max_batch_ops",
                                "grace_period_ms", "shutdown_drain_ms", "flush_max_ops", "flush_window_us", "tls_cert_file",
                                "tls_key_file", "tls_client_ca_file"))
    d = ServerConfig()
    max_queue = t.integer("max_queue", d.max_queue, minimum=1, maximum=10**9)
    return ServerConfig(
        listen=t.checked("listen", d.listen, _listen_problem),
        max_queue=max_queue,
        max_message_bytes=t.integer("max_message_bytes", d.max_message_bytes, minimum=1,
                                    maximum=MAX_MESSAGE_BYTES),
        max_batch_ops=t.integer("max_batch_ops", min(d.max_batch_ops, max_queue), minimum=1,
                                maximum=max_queue),
        grace_period_ms=t.duration_ms("grace_period_ms", d.grace_period_ms, minimum=0),
        shutdown_drain_ms=t.integer("shutdown_drain_ms", d.shutdown_drain_ms, maximum=60_000),
        flush_max_ops=t.integer("flush_max_ops", d.flush_max_ops, minimum=1, maximum=10**9),
        flush_window_us=t.integer("flush_window_us", d.flush_window_us, minimum=0, maximum=1_000_000),
        **_tls_files(t),
    )


def _tls_files(t: _Table) -> dict[str, str]:
    """The TLS file keys: certificate and key together, a client CA only with them. The files
    are read when the server starts (a missing or bad file stops it, naming the key)."""
    files = {key: t.string(key, "") for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")}
    if bool(files["tls_cert_file"]) != bool(files["tls_key_file"]):
        missing = "tls_key_file" if files["tls_cert_file"] else "tls_cert_file"
        raise _Invalid(t.key(missing), "missing (tls_cert_file and tls_key_file go together)")
    if files["tls_client_ca_file"] and not files["tls_cert_file"]:
        raise _Invalid(t.key("tls_client_ca_file"), "needs tls_cert_file and tls_key_file (client "
                       "certificates are checked over TLS)")
    return files


def _parse_storage(data: object) -> StorageConfig:
    t = _Table(data, "storage", ("url", "snapshot_every_records", "lease_ttl_ms",
                                 "on_lease_held", "timeout_ms", "snapshot_fork", "fail_open_rate_limits"))
    d = StorageConfig()
    url_text = t.string("url", DEFAULT_STORAGE_URL)
    try:
        url = parse_storage_url(url_text)
    except ValueError as exc:
        shown = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url_text)  # no passwords in logs
        raise _Invalid(t.key("url"), f"{exc}, got {_describe(shown)}") from None
    return StorageConfig(
        url=url,
        snapshot_every_records=t.integer("snapshot_every_records", d.snapshot_every_records,
                                         minimum=1, maximum=10**9),
        lease_ttl_ms=t.integer("lease_ttl_ms", d.lease_ttl_ms, minimum=LEASE_TTL_MIN_MS, maximum=LEASE_TTL_MAX_MS),
        on_lease_held=t.choice("on_lease_held", d.on_lease_held, ON_LEASE_HELD),
        timeout_ms=t.duration_ms("timeout_ms", d.timeout_ms),
        snapshot_fork=t.boolean("snapshot_fork", d.snapshot_fork),
        fail_open_rate_limits=t.boolean("fail_open_rate_limits", d.fail_open_rate_limits),
    )


def _parse_defaults(data: object) -> DefaultsConfig:
    t = _Table(data, "defaults", ("hold_ttl_ms", "hold_ttl_max_ms", "idempotency_retention_ms"))
    d = DefaultsConfig()
    hold_ttl_ms = t.duration_ms("hold_ttl_ms", d.hold_ttl_ms)
    hold_ttl_max_ms = t.duration_ms("hold_ttl_max_ms", d.hold_ttl_max_ms)
    if hold_ttl_ms > hold_ttl_max_ms:
        if "hold_ttl_ms" in t.data:
            raise _Invalid(t.key("hold_ttl_ms"),
                           f"must be at most defaults.hold_ttl_max_ms ({hold_ttl_max_ms}), "
                           f"got {hold_ttl_ms}")
        raise _Invalid(t.key("hold_ttl_max_ms"),
                       f"must be at least defaults.hold_ttl_ms (not set: its default {hold_ttl_ms}), "
                       f"got {hold_ttl_max_ms}; set both")
    return DefaultsConfig(
        hold_ttl_ms=hold_ttl_ms,
        hold_ttl_max_ms=hold_ttl_max_ms,
        idempotency_retention_ms=t.duration_ms("idempotency_retention_ms",
                                               d.idempotency_retention_ms),
    )


_PRICE_KEYS = ("amount", "per_1000", "margin_percent")
_PRICES_HINT = 'names with dots must be quoted, e.g. [prices."llm.chat"]'
_PLANS_HINT = 'names with dots must be quoted, e.g. [plans."pro.v2"]'


def _parse_prices(data: object) -> PriceCatalog:
    if not isinstance(data, dict):
        raise _Invalid("prices", f"must be a table, got {_describe(data)}")
    prices = {}
    for action, table in data.items():
        path = _join("prices", action)
        _check_table_name(path, action, "an action name")
        prices[action] = _parse_price(_Table(table, path, _PRICE_KEYS, nested_hint=_PRICES_HINT))
    return PriceCatalog(prices)


def _parse_price(t: _Table) -> ActionPrice:
    amount = t.integer("amount", None) if "amount" in t.data else None
    raw = t.raw("per_1000", {})
    table = _Table(raw, t.key("per_1000"), tuple(raw) if isinstance(raw, dict) else ())
    per_1000: dict[str, int] = {}
    for name in table.data:
        _check_table_name(table.key(name), name, "a quantity name")
        per_1000[name] = table.integer(name, _REQUIRED)
    if amount is None and not per_1000:
        raise _Invalid(t.path, "needs amount and/or a non-empty per_1000 table")
    margin = t.integer("margin_percent", 0, maximum=MAX_MARGIN_PERCENT)
    return ActionPrice(amount=amount, per_1000=per_1000, margin_percent=margin)


_PLAN_KEYS = ("period", "included_credits", "rollover_max", "credit_limit", "unlimited",
              "max_open_holds", "low_balance", "features", "limits")
_LIMIT_KEYS = ("name", "capacity", "refill_amount", "refill_period_ms", "cost", "actions", "warn_at_percent")


def _parse_plans(data: object, prices: PriceCatalog, warnings: list[str]) -> PlanCatalog:
    if not isinstance(data, dict):
        raise _Invalid("plans", f"must be a table, got {_describe(data)}")
    if not data:
        return _builtin_plans()
    priced_quantities = {name for price in prices.values() for name in price.per_1000}
    plans = {}
    for name, table in data.items():
        path = _join("plans", name)
        _check_table_name(path, name, "a plan name")
        t = _Table(table, path, _PLAN_KEYS, nested_hint=_PLANS_HINT)
        d = Plan(name=name)
        plans[name] = Plan(
            name=name,
            period=t.choice("period", d.period, PERIODS),
            included_credits=t.integer("included_credits", d.included_credits),
            rollover_max=t.integer("rollover_max", d.rollover_max),
            credit_limit=t.integer("credit_limit", d.credit_limit),
            unlimited=t.boolean("unlimited", d.unlimited),
            max_open_holds=t.integer("max_open_holds", d.max_open_holds, maximum=10**9),
            low_balance=t.integer("low_balance", d.low_balance),
            features=t.patterns("features"),
            limits=_parse_limits(t, priced_quantities, warnings),
        )
    return PlanCatalog(plans)


def _parse_limits(plan: _Table, priced_quantities: set[str],
                  warnings: list[str]) -> tuple[RateLimit, ...]:
    items = plan.raw("limits", [])
    if not isinstance(items, list):
        raise _Invalid(plan.key("limits"),
                       f"must be an array of tables ([[{plan.key('limits')}]]), "
                       f"got {_describe(items)}")
    limits: list[RateLimit] = []
    for index, item in enumerate(items):
        t = _Table(item, f"{plan.key('limits')}[{index}]", _LIMIT_KEYS)
        name = t.checked("name", _REQUIRED, _name_problem)
        if any(limit.name == name for limit in limits):
            raise _Invalid(t.key("name"), f"duplicate limit name {_describe(name)} in this plan")
        capacity = t.integer("capacity", _REQUIRED, minimum=1)
        cost = t.checked("cost", REQUESTS_COST, _cost_problem)
        if cost != REQUESTS_COST and cost not in priced_quantities:
            warnings.append(
                f"{t.key('cost')}: quantity {_describe(cost)} is not named by any price; "
                f"calls that do not report it cost 0 against this limit")
        limits.append(RateLimit(
            name=name,
            capacity=capacity,
            refill_amount=t.integer("refill_amount", capacity, minimum=1),
            refill_period_ms=t.duration_ms("refill_period_ms", _REQUIRED),
            cost=cost,
            actions=_non_empty(t, t.patterns("actions")),
            warn_at_percent=t.integer("warn_at_percent", 0, maximum=99),
        ))
    return tuple(limits)


def _cost_problem(cost: str) -> str | None:
    if cost != REQUESTS_COST and cost.lower() in ("request", "requests", "req", "reqs"):
        return f'must be "{REQUESTS_COST}" (exactly) or a quantity name'
    if _name_problem(cost):
        return f'must be "{REQUESTS_COST}" or a quantity name of {_NAME_RULE}'
    return None


def _non_empty(t: _Table, actions: tuple[str, ...]) -> tuple[str, ...]:
    if not actions:
        raise _Invalid(t.key("actions"), 'must name at least one action (["*"] means all)')
    return actions
