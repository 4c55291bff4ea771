"""Load that remembers what it was told, and the checks that settle the books after a fault.

Workers issue `Charge` and `Reserve`+`Commit` calls with unique ids against a few accounts and
record, per id, every call they attempted and the result of every call that was acknowledged.
After the fault, `settle()` proves the two promises of the API:

- nothing acknowledged was lost: the usage records hold every acknowledged charge and commit,
  and replaying an acknowledged call with its id and parameters returns the identical result;
- nothing was applied twice: the balance is exactly initial - price x (ids the server reports
  as done), with one usage record per charged id, before and after every attempted call (acked
  or not) is replayed to completion.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
from collections.abc import Iterable
from typing import Any

import grpc
from quota_client import (
    NO_RETRY,
    AsyncQuotaClient,
    ChargeResult,
    CommitResult,
    QuotaError,
    ReserveResult,
)

PRICE = 7
INITIAL = 10**12
HOLD_TTL_MS = 3_600_000  # no hold may expire while a test runs: every commit is on time
ACCOUNTS = ("acct-a", "acct-b", "acct-c", "acct-d")
REPLAY_CONCURRENCY = 32
REPLAY_TIMEOUT_S = 15.0

CHARGE = "charge"
RESERVE_COMMIT = "reserve+commit"

# What a call that could not be judged may fail with while storage or the server is broken.
OUTAGE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
})


@dataclasses.dataclass
class Attempt:
    """One id and what happened to the calls that used it."""

    kind: str
    account: str
    op_id: str
    charge: ChargeResult | None = None  # acknowledged Charge
    reserve: ReserveResult | None = None  # acknowledged Reserve
    commit: CommitResult | None = None  # acknowledged Commit
    commit_attempted: bool = False
    settled: bool = False  # replayed to completion by an earlier settle()

    @property
    def done_acked(self) -> bool:
        """The client was told the credits were charged."""
        return self.charge is not None or self.commit is not None


class Book:
    """Every attempted id, the acknowledged results and the failures, as the clients saw them."""

    def __init__(self, prefix: str = "t") -> None:
        self.prefix = prefix
        self.attempts: dict[str, Attempt] = {}
        self.errors: collections.Counter[str] = collections.Counter()  # by gRPC code name
        self.reasons: collections.Counter[str] = collections.Counter()  # by ErrorInfo reason
        self.acked = 0
        self._next = 0

    def new(self, kind: str, account: str) -> Attempt:
        op_id = f"{self.prefix}-{self._next}"
        self._next += 1
        attempt = Attempt(kind, account, op_id)
        self.attempts[op_id] = attempt
        return attempt

    def of(self, account: str) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.account == account]

    def failed(self, error: QuotaError) -> None:
        self.errors[error.code.name if error.code is not None else type(error).__name__] += 1
        self.reasons[error.reason] += 1


async def setup_accounts(client: AsyncQuotaClient, accounts: Iterable[str] = ACCOUNTS) -> None:
    """Create the accounts on the `prepaid` plan and fund each with INITIAL credits."""
    for account in accounts:
        await client.upsert_account(account, plan_id="prepaid", timeout=REPLAY_TIMEOUT_S)
        await client.grant(account, INITIAL, grant_id="funding", timeout=REPLAY_TIMEOUT_S)


async def one_call(client: AsyncQuotaClient, book: Book, rng: random.Random, timeout_s: float) -> None:
    """Attempt one new id: a Charge, or a Reserve then a Commit of the whole hold."""
    account = rng.choice(ACCOUNTS)
    if rng.random() < 0.5:
        attempt = book.new(CHARGE, account)
        result = await client.charge(account, charge_id=attempt.op_id, amount=PRICE, timeout=timeout_s)
        assert result.ok, result
        attempt.charge = result
    else:
        attempt = book.new(RESERVE_COMMIT, account)
        reserved = await client.reserve(account, reservation_id=attempt.op_id, amount=PRICE,
                                        ttl_ms=HOLD_TTL_MS, timeout=timeout_s)
        assert reserved.ok, reserved
        attempt.reserve = reserved
        attempt.commit_attempted = True
        attempt.commit = await client.commit(account, attempt.op_id, timeout=timeout_s)
    book.acked += 1


class Load:
    """`workers` concurrent callers on one channel until stopped.

    `stop_on_error`: a worker ends at its first failure (the server was killed); otherwise it
    records the failure (only outage codes are acceptable), pauses `error_pause_s` so an outage
    does not turn into a flood of new ids, and goes on.
    """

    def __init__(self, target: str, book: Book, *, workers: int = 16, timeout_s: float = 5.0,
                 stop_on_error: bool = False, error_pause_s: float = 0.05, seed: int = 0) -> None:
        self.client = AsyncQuotaClient(target, retry=NO_RETRY)
        self.book = book
        self.workers = workers
        self.timeout_s = timeout_s
        self.stop_on_error = stop_on_error
        self.error_pause_s = error_pause_s
        self.rng = random.Random(seed)
        self.unexpected: list[QuotaError] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> Load:
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        return self

    @property
    def stopped_workers(self) -> int:
        return sum(task.done() for task in self._tasks)

    async def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                await one_call(self.client, self.book, self.rng, self.timeout_s)
            except QuotaError as error:
                self.book.failed(error)
                if error.code not in OUTAGE_CODES:
                    self.unexpected.append(error)
                if self.stop_on_error:
                    return
                await asyncio.sleep(self.error_pause_s)

    async def stop(self) -> None:
        """Stop issuing new ids and wait for the calls in flight to end."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()

    async def wait_acked(self, count: int, *, timeout_s: float = 60.0, what: str = "") -> None:
        """Wait (bounded) until `count` more calls are acknowledged than when called."""
        target = self.book.acked + count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.book.acked < target:
            if loop.time() > deadline:
                raise AssertionError(f"only {self.book.acked}/{target} acknowledged calls {what}; "
                                     f"errors {dict(self.book.errors)}")
            if self.stop_on_error and self.stopped_workers == self.workers:
                raise AssertionError(f"every worker failed before {target} acks: {dict(self.book.errors)}")
            await asyncio.sleep(0.002)


async def usage_ids(client: AsyncQuotaClient, account: str) -> list[str]:
    """The ids of an account's usage records, as ListUsage returns them (duplicates kept)."""
    ids = []
    async for record in client.iter_usage(account, page_size=1000, timeout=REPLAY_TIMEOUT_S):
        ids.append(record.charge_id or record.reservation_id)
    return ids


@dataclasses.dataclass
class Settlement:
    """Figures of one settle(), for messages and reports."""

    attempted: int
    acked_done: int
    on_books_before_replay: int
    replayed: int


async def check_books(client: AsyncQuotaClient, book: Book, *, all_done: bool) -> int:
    """Balance and usage agree exactly with the ids the server reports as charged.

    Returns how many ids are charged in total. With `all_done`, every attempted id must be one
    of them and no hold may be open.
    """
    total = 0
    for account in ACCOUNTS:
        attempts = {a.op_id: a for a in book.of(account)}
        ids = await usage_ids(client, account)
        charged = set(ids)
        assert len(ids) == len(charged), f"{account}: a usage record appears twice"
        assert charged <= set(attempts), f"{account}: usage for ids never attempted: {charged - set(attempts)}"
        lost = {i for i, a in attempts.items() if a.done_acked} - charged
        assert not lost, f"{account}: acknowledged charges/commits missing from the books: {sorted(lost)[:10]}"
        balance = await client.get_balance(account, timeout=REPLAY_TIMEOUT_S)
        assert balance.balance == INITIAL - PRICE * len(charged), (
            f"{account}: balance {balance.balance} != {INITIAL} - {PRICE} x {len(charged)} charged ids")
        open_holds = {i for i, a in attempts.items()
                      if a.kind == RESERVE_COMMIT and a.reserve is not None and i not in charged}
        assert balance.held % PRICE == 0 and balance.held >= PRICE * len(open_holds), (account, balance)
        if all_done:
            assert charged == set(attempts), f"{account}: not charged after replay: {set(attempts) - charged}"
            assert balance.held == 0, (account, balance)
        total += len(charged)
    return total


async def replay_one(client: AsyncQuotaClient, attempt: Attempt) -> None:
    """Repeat the attempt's calls with the same id and parameters, completing it."""
    if attempt.kind == CHARGE:
        result = await client.charge(attempt.account, charge_id=attempt.op_id, amount=PRICE,
                                     timeout=REPLAY_TIMEOUT_S)
        assert result.ok, result
        if attempt.charge is not None:
            assert result == attempt.charge, f"replay of acked {attempt.op_id}: {result} != {attempt.charge}"
        attempt.charge = result
        return
    reserved = await client.reserve(attempt.account, reservation_id=attempt.op_id, amount=PRICE,
                                    ttl_ms=HOLD_TTL_MS, timeout=REPLAY_TIMEOUT_S)
    assert reserved.ok, reserved
    if attempt.reserve is not None:
        assert reserved == attempt.reserve, f"replay of acked reserve {attempt.op_id}: {reserved} != {attempt.reserve}"
    attempt.reserve = reserved
    committed = await client.commit(attempt.account, attempt.op_id, timeout=REPLAY_TIMEOUT_S)
    if attempt.commit is not None:
        assert committed == attempt.commit, f"replay of acked commit {attempt.op_id}: {committed} != {attempt.commit}"
    assert (committed.amount_charged, committed.amount_uncharged, committed.late) == (PRICE, 0, False), committed
    attempt.commit = committed
    attempt.commit_attempted = True


async def settle(target: str, book: Book) -> Settlement:
    """The full check after a fault: books before replay, replay of every id, books after.

    Ids settled by an earlier call are not replayed again, but they stay in every check: their
    (now acknowledged) results must survive the later faults too.
    """
    async with AsyncQuotaClient(target, retry=NO_RETRY) as client:
        before = await check_books(client, book, all_done=False)
        acked_done = sum(a.done_acked for a in book.attempts.values())
        semaphore = asyncio.Semaphore(REPLAY_CONCURRENCY)

        async def replay(attempt: Attempt) -> None:
            async with semaphore:
                await replay_one(client, attempt)

        todo = [a for a in book.attempts.values() if not a.settled]
        await asyncio.gather(*(replay(a) for a in todo))
        for attempt in todo:
            attempt.settled = True
        after = await check_books(client, book, all_done=True)
        assert after == len(book.attempts)
    return Settlement(attempted=len(book.attempts), acked_done=acked_done,
                      on_books_before_replay=before, replayed=len(todo))


async def server_balances(target: str) -> dict[str, Any]:
    """GetBalance of every account (balance, held) as the live server reports it."""
    out = {}
    async with AsyncQuotaClient(target, retry=NO_RETRY) as client:
        for account in ACCOUNTS:
            b = await client.get_balance(account, timeout=REPLAY_TIMEOUT_S)
            out[account] = (b.balance, b.held)
    return out
