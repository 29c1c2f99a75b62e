"""The delivery engine: claims due deliveries from the outbox, POSTs them, records each
attempt, retries with backoff, and deactivates a hook that fails for long enough.

- **Claims.** A delivery is due when it is pending, its ``next_attempt_at`` has come, nobody
  holds its lease, its hook is active, and every earlier version of its order for the same
  hook was delivered: so version n+1 of an order is never sent before version n was received
  (an order's deliveries go one at a time; other orders and hooks go on beside it). A claim
  takes a lease (``lease_until``, ``lease_owner``) in one statement; on PostgreSQL its rows
  are picked ``FOR UPDATE SKIP LOCKED`` and the lease is checked again as the row is updated,
  so two processes never claim one delivery, and a delivery whose process died is taken by
  another once its lease has expired. Results are written only under the claim's own lease.
- **Bounds.** At most ``WEBHOOK_CONCURRENCY_PER_HOOK`` requests in flight per hook in a
  process, and ``MAX_IN_FLIGHT`` in all: a slow or dead receiver holds up its own
  deliveries only.
- **Wake-up.** The writer rings the ``Doorbell`` after a commit that wrote deliveries; a
  finished attempt rings it too (the order's next version may be due); and every
  ``WEBHOOK_POLL_INTERVAL_SECONDS`` the outbox is looked at anyway (retries coming due, and
  deliveries written by other processes).
- **Failures.** Only a 2xx within ``WEBHOOK_TIMEOUT_SECONDS`` counts. After the n-th failed
  attempt the next comes ``retry_delay(n)`` later; after ``WEBHOOK_MAX_ATTEMPTS`` the
  delivery is failed (its order's later versions wait behind it), and if the hook has not
  delivered anything since that delivery's first attempt, the hook is deactivated, saying
  why. Reactivating it (or redelivering) puts its failed deliveries back in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final

import httpcore
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.connection import get_connection
from tortoise.transactions import in_transaction

from app import metrics, rest
from app.encoding import encode_json
from app.hooks import destinations, outbox
from app.hooks.budget import Budget
from app.hooks.outbox import now_ms
from app.models import Hook, HookAttempt, HookDelivery
from app.records import COLUMNS, StoredEvent
from app.settings import Settings
from app.sql import fetch, placeholders

logger = logging.getLogger(__name__)

USER_AGENT: Final = "order-events-hooks/1"
# Requests in flight per process, all hooks together.
MAX_IN_FLIGHT: Final = 200
# How much of a request's and a response's body the attempts log keeps.
LOGGED_BODY_BYTES: Final = 4096
# A claim's lease outlives the attempt's timeout by this much.
LEASE_MARGIN_SECONDS: Final = 10.0
# Rows a claim looks at (and on PostgreSQL locks, which writes each row) per request it may
# start on one hook: hooks that are full are passed over before, so few rows serve.
CANDIDATES_PER_REQUEST: Final = 4


class Doorbell:
    """Rung when deliveries may be due; the dispatcher waits on it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Until rung, or ``seconds`` at most."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()


def retry_delay(failed_attempts: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``failed_attempts`` failures: ``base`` doubled
    each time, of which a random half is taken off (so that many deliveries failing together
    do not come back together)."""
    full = base * 2.0 ** (failed_attempts - 1)
    jitter: float = (rng.uniform if rng else random.uniform)(0, full / 2)
    return full / 2 + jitter


def signature(secret: str, body: bytes) -> str:
    """The ``event-signature`` header: hex HMAC-SHA1 of the raw body with the secret."""
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


@dataclass(frozen=True)
class Claim:
    id: int
    event_delivery: str
    hook_id: int
    account_id: str
    event: str
    order_id: str | None
    version: int | None
    event_id: str | None
    attempts: int
    first_attempt_at: int | None
    owner: str


@dataclass(frozen=True)
class Target:
    """A hook as its deliveries need it."""

    hook_id: str
    url: str
    content_type: str
    secret: str


_TARGET_SQL: Final = (
    f"SELECT id, {', '.join(field.name for field in fields(Target))} FROM hooks"  # noqa: S608
    " WHERE id IN ({})"
)
_EVENTS_SQL: Final = f"SELECT {COLUMNS} FROM order_events WHERE event_id IN ({{}})"  # noqa: S608


@dataclass(frozen=True)
class Job:
    """A claimed delivery with what its request is made of: its hook, and its event (None
    for a ping, or if the event is not found)."""

    claim: Claim
    target: Target
    event: StoredEvent | None


_RETURNED: Final = (
    "id, event_delivery, hook_id, account_id, event, order_id, version, event_id, attempts,"
    " first_attempt_at"
)


def claim_sql(dialect: str, per_hook: int, busy: dict[int, int], candidates: int) -> str:
    """The statement that leases due deliveries: at most ``per_hook`` per hook less those
    in flight here (``busy``: hook id → requests in flight), at most ``candidates`` in all.
    Parameters: lease_until, owner, now, now. Numbers are written in as integers.

    The candidates are read in the order they fell due, from the partial index, stopping at
    ``candidates``. On PostgreSQL they are locked as they are read (``SKIP LOCKED``), which
    checks the lease again on the row's latest version: a row another process leased in
    the meantime is not taken. The rows are then updated by id."""
    lock = " FOR UPDATE OF delivery SKIP LOCKED" if dialect == "postgres" else ""
    full = [hook for hook, used in busy.items() if used >= per_hook]
    skip_full = f" AND delivery.hook_id NOT IN ({', '.join(map(str, full))})" if full else ""
    # No WHEN at all is not SQL: a hook id never used (0) stands in.
    busy_cases = " ".join(f"WHEN {int(hook)} THEN {int(n)}" for hook, n in busy.items()) or (
        "WHEN 0 THEN 0"
    )
    return (
        "UPDATE hook_deliveries SET lease_until = ?, lease_owner = ?"  # noqa: S608
        " FROM ("
        "  SELECT due.id AS chosen_id,"
        "   row_number() OVER (PARTITION BY due.hook_id ORDER BY due.n) AS turn"
        "  FROM ("
        "   SELECT delivery.id, delivery.hook_id,"
        "    row_number() OVER (ORDER BY delivery.next_attempt_at, delivery.id) AS n"
        "   FROM ("
        "    SELECT delivery.id, delivery.hook_id, delivery.next_attempt_at"
        "    FROM hook_deliveries AS delivery"
        "    JOIN hooks AS hook ON hook.id = delivery.hook_id AND hook.active"
        f"    WHERE delivery.status = '{outbox.PENDING}' AND delivery.next_attempt_at <= ?"
        "    AND (delivery.lease_until IS NULL OR delivery.lease_until < ?)"
        f"{skip_full}"
        "    AND NOT EXISTS (SELECT 1 FROM hook_deliveries AS earlier"
        "     WHERE earlier.hook_id = delivery.hook_id AND earlier.order_id = delivery.order_id"
        f"     AND earlier.version < delivery.version AND earlier.status <> '{outbox.DELIVERED}')"
        "    ORDER BY delivery.next_attempt_at, delivery.id"
        f"    LIMIT {int(candidates)}{lock}"
        "   ) AS delivery"
        "  ) AS due"
        " ) AS chosen"
        f" WHERE hook_deliveries.id = chosen.chosen_id AND chosen.turn <= {int(per_hook)} - "
        f"(CASE hook_deliveries.hook_id {busy_cases} ELSE 0 END)"
        f" RETURNING {_RETURNED}"
    )


class Statistics:
    """Keeps PostgreSQL's statistics of the outbox fresh enough for the claim's plan.

    The claim reads due deliveries in index order and stops at the first few that may go.
    Where the statistics say that few deliveries are pending (a new table; or a table of
    mostly delivered rows, when a receiver's outage has built a backlog too small a share
    of it for autovacuum to analyze again), PostgreSQL instead checks the version order of
    every pending row before sorting them: a claim took ~140 ms at a backlog of 12,000
    instead of under 1 ms (docs/benchmarks.md). So a claim slower than ``SLOW_CLAIM_SECONDS``
    has the table analyzed, in the background, at most once every
    ``ANALYZE_INTERVAL_SECONDS``. (A claim's time includes its wait for a connection and for
    a busy event loop: under load that can mean an analyze not needed, once a minute at
    most; an analyze samples 30,000 rows whatever the table's size.)"""

    SLOW_CLAIM_SECONDS: Final = 0.05
    ANALYZE_INTERVAL_SECONDS: Final = 60.0

    def __init__(self) -> None:
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None

    def after_claim(self, connection: BaseDBAsyncClient, seconds: float) -> None:
        if seconds < self.SLOW_CLAIM_SECONDS or connection.capabilities.dialect != "postgres":
            return
        now = time.monotonic()
        if self._task is not None or (
            self._last is not None and now - self._last < self.ANALYZE_INTERVAL_SECONDS
        ):
            return
        self._last = now
        self._task = asyncio.create_task(self._analyze(connection))

    async def _analyze(self, connection: BaseDBAsyncClient) -> None:
        try:
            await connection.execute_script("ANALYZE hook_deliveries")
        except Exception as error:
            logger.warning("could not analyze hook_deliveries: %s", error)
        finally:
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Dispatcher:
    """Delivers the outbox, in this process, until stopped."""

    def __init__(
        self, settings: Settings, doorbell: Doorbell, budget: Budget | None = None
    ) -> None:
        self.settings = settings
        self.doorbell = doorbell
        self.budget = budget or Budget(settings.webhook_delivery_share)
        self._in_flight: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._http: httpcore.AsyncConnectionPool | None = None
        self._outcomes = Outcomes(settings)
        self._statistics = Statistics()

    async def start(self) -> None:
        self._http = destinations.client(
            allow_private=self.settings.webhook_allow_private_networks,
            max_connections=MAX_IN_FLIGHT,
        )
        connection = get_connection("default")
        if connection.capabilities.dialect == "sqlite":
            # One process serves a SQLite database: a lease still held is a dead process's.
            with contextlib.suppress(Exception):
                await HookDelivery.filter(lease_owner__isnull=False).update(
                    lease_until=None, lease_owner=None
                )
        self._runner = asyncio.create_task(self._run(), name="hook-dispatcher")

    async def stop(self) -> None:
        tasks = [task for task in (self._runner, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Outcomes already on their way are committed (what is not is sent again later).
        await self._outcomes.flush()
        await self._statistics.stop()
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            allowed = self.budget.allowance()
            if allowed == 0:
                wait = self.budget.wait_seconds()
                metrics.WEBHOOK_GIVING_WAY.inc(wait)
                await asyncio.sleep(wait)
                continue
            try:
                claimed = await self.claim(allowed)
            except Exception as error:
                logger.warning("could not claim webhook deliveries: %s", error)
                claimed = []
            self.budget.started(len(claimed))
            for job in claimed:
                self._in_flight[job.claim.hook_id] += 1
                task = asyncio.create_task(self._deliver(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not claimed or sum(self._in_flight.values()) >= MAX_IN_FLIGHT:
                await self.doorbell.wait(self.settings.webhook_poll_interval_seconds)

    async def claim(self, allowed: int | None = None) -> list[Job]:
        """Leases the due deliveries this process has room for (``allowed`` at most), and
        reads their hooks and events (one statement each for all of them)."""
        room = MAX_IN_FLIGHT - sum(self._in_flight.values())
        if allowed is not None:
            room = min(room, allowed)
        if room <= 0:
            return []
        connection = get_connection("default")
        busy = {hook: n for hook, n in self._in_flight.items() if n}
        sql = claim_sql(
            connection.capabilities.dialect,
            self.settings.webhook_concurrency_per_hook,
            busy,
            min(room, CANDIDATES_PER_REQUEST * self.settings.webhook_concurrency_per_hook),
        )
        owner = str(uuid.uuid4())
        now = now_ms()
        lease = now + int((self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS) * 1000)
        started = time.monotonic()
        rows = await connection.execute_query_dict(
            placeholders(connection, sql), [lease, owner, now, now]
        )
        self._statistics.after_claim(connection, time.monotonic() - started)
        return await _jobs(connection, [Claim(**row, owner=owner) for row in rows])

    async def _deliver(self, job: Job) -> None:
        """Sends, then records: the hook's slot is free once its request is answered (the
        bound is on requests in flight), while the lease holds the delivery, and its order's
        next version, until the outcome is committed."""
        claim = job.claim
        outcome = None
        try:
            outcome = await self.attempt(job)
        except Exception:
            logger.exception("webhook delivery %s failed unexpectedly", claim.event_delivery)
        finally:
            self.budget.finished()
            self._in_flight[claim.hook_id] -= 1
            if not self._in_flight[claim.hook_id]:
                del self._in_flight[claim.hook_id]
            self.doorbell.ring()
        if outcome is None:
            return
        try:
            await self._outcomes.record(outcome)
        except Exception:
            logger.exception("webhook delivery %s not recorded", claim.event_delivery)
        self.doorbell.ring()  # its order's next version may be due

    async def attempt(self, job: Job) -> Outcome:
        """One POST of a claimed delivery; its outcome, to be recorded."""
        assert self._http is not None
        claim, hook = job.claim, job.target
        body, created_at = self.body(job)
        headers = {
            "content-type": hook.content_type,
            "user-agent": USER_AGENT,
            "event": claim.event,
            "event-delivery": claim.event_delivery,
            "event-signature": signature(hook.secret, body),
        }
        started = time.perf_counter()
        attempted_at = now_ms()
        status: int | None = None
        answer_headers: dict[str, str] | None = None
        answer_body: bytes | None = None
        error: str | None = None
        try:
            async with (
                asyncio.timeout(self.settings.webhook_timeout_seconds),
                self._http.stream(
                    "POST", hook.url, headers=list(headers.items()), content=body
                ) as response,
            ):
                status = response.status
                answer_headers = _header_fields(response.headers)
                answer_body = await _read_some(response, LOGGED_BODY_BYTES)
        except TimeoutError:
            if status is None:
                error = f"no answer within {self.settings.webhook_timeout_seconds:g} s"
                metrics.webhook_attempt("timeout")
        except destinations.ERRORS as failed:
            error = f"{type(failed).__name__}: {failed}" if str(failed) else type(failed).__name__
            metrics.webhook_attempt("unreachable")
        duration_ms = round((time.perf_counter() - started) * 1000)
        delivered = status is not None and 200 <= status < 300
        if delivered:
            metrics.webhook_delivered(created_at)
        elif status is not None:
            metrics.webhook_attempt("refused")
            if error is None:
                error = f"answered {status}; only a 2xx counts"
        return Outcome(
            claim,
            delivered=delivered,
            attempted_at=attempted_at,
            log={
                "attempt_id": str(uuid.uuid4()),
                "delivery_id": claim.id,
                "hook_id": claim.hook_id,
                "attempt": claim.attempts + 1,
                "created_at": datetime.fromtimestamp(attempted_at / 1000, UTC),
                "status": outbox.DELIVERED if delivered else outbox.FAILED,
                "response_status": status,
                "duration_ms": duration_ms,
                "request_headers": json.dumps(headers),
                "request_body": _shown(body),
                "response_headers": None if answer_headers is None else json.dumps(answer_headers),
                "response_body": None if answer_body is None else _shown(answer_body),
                "error": error,
            },
        )

    def body(self, job: Job) -> tuple[bytes, datetime | None]:
        """The POST's body, where ``order_event`` is the event as the REST endpoint gives it;
        and the event's time (None for a ping)."""
        claim = job.claim
        payload: dict[str, Any] = {
            "account_id": claim.account_id,
            "event": claim.event,
            "event_delivery": claim.event_delivery,
        }
        if claim.event == outbox.PING:
            payload["hook_id"] = job.target.hook_id
            return encode_json(payload), None
        stored = job.event
        if stored is None:
            raise LookupError(f"event {claim.event_id} of delivery {claim.id} not found")
        payload["order_id"] = claim.order_id
        payload["order_event"] = rest.event_body(stored, self.settings.public_url)
        return encode_json(payload), stored.created_at


@dataclass(frozen=True)
class Outcome:
    """How one attempt went, to be recorded."""

    claim: Claim
    delivered: bool
    attempted_at: int
    log: dict[str, Any]


class Outcomes:
    """Records attempts' outcomes, group-committed like the writer's events: the outcomes
    that arrive while one transaction commits are written by the next, in one commit (on
    SQLite, one fsync for many deliveries instead of one each). Each ``record`` returns once
    its own outcome is committed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def record(self, outcome: Outcome) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        await asyncio.shield(future)

    async def flush(self) -> None:
        """Waits until the outcomes queued are committed (or failed)."""
        if self._draining is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._draining)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with in_transaction() as connection:
                        await self._record(connection, [outcome for outcome, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._draining = None

    async def _record(self, connection: BaseDBAsyncClient, outcomes: list[Outcome]) -> None:
        """The attempts' outcomes, each under its claim's lease: the delivery delivered,
        retried later or failed, counted from its row's attempts (which a reactivation of
        the hook may have reset meanwhile); the attempt logged; the hook's failing streak,
        and its deactivation. A batch of deliveries costs three statements, whatever its
        size; failures add a few each."""
        base = self.settings.webhook_retry_base_seconds
        values = []
        for outcome in outcomes:
            delay = retry_delay(outcome.claim.attempts + 1, base)
            values += [
                outcome.claim.id,
                outcome.claim.owner,
                outcome.attempted_at,
                1 if outcome.delivered else 0,
                now_ms() + int(delay * 1000),
            ]
        sql = record_sql(len(outcomes), self.settings.webhook_max_attempts)
        rows = await connection.execute_query_dict(placeholders(connection, sql), values)
        recorded = {row["id"]: row for row in rows}
        unrecorded = [outcome.claim.id for outcome in outcomes if outcome.claim.id not in recorded]
        # A delivery whose lease was lost keeps its attempt in the log; one whose hook was
        # deleted meanwhile (with its deliveries) does not.
        kept = set(recorded)
        if unrecorded:
            found = HookDelivery.filter(id__in=unrecorded).using_db(connection)
            kept.update(await found.values_list("id", flat=True))
        logged = [outcome for outcome in outcomes if outcome.claim.id in kept]
        if not logged:
            return
        await HookAttempt.bulk_create(
            [HookAttempt(**outcome.log) for outcome in logged], using_db=connection
        )
        by_hook: dict[int, list[Outcome]] = {}
        for outcome in logged:
            by_hook.setdefault(outcome.claim.hook_id, []).append(outcome)
        healthy = [hook for hook, its in by_hook.items() if all(o.delivered for o in its)]
        if healthy:
            await (
                Hook.filter(id__in=healthy, failing_since__isnull=False)
                .using_db(connection)
                .update(failing_since=None)
            )
        for hook, its in by_hook.items():
            if hook not in healthy:
                for outcome in its:
                    await _failing_streak(connection, outcome, recorded.get(outcome.claim.id))


async def _failing_streak(
    connection: BaseDBAsyncClient, outcome: Outcome, row: dict[str, Any] | None
) -> None:
    """A hook's failing streak after one attempt (``row``: its delivery as recorded, None
    if its lease was lost): ended by a delivery, begun by a failure; and the hook
    deactivated when the delivery has failed its last attempt and nothing was delivered
    since its first."""
    claim = outcome.claim

    def hook(**conditions: Any) -> Any:
        return Hook.filter(id=claim.hook_id, **conditions).using_db(connection)

    if outcome.delivered:
        await hook(failing_since__isnull=False).update(failing_since=None)
        return
    await hook(failing_since__isnull=True).update(failing_since=outcome.attempted_at)
    if row is not None and row["status"] == outbox.FAILED:
        reason = (
            f"deactivated: delivery {claim.event_delivery} failed all "
            f"{row['attempts']} attempts, and nothing was delivered since its "
            f"first ({outcome.log['error']})"
        )
        await hook(active=True, failing_since__lte=row["first_attempt_at"]).update(
            active=False,
            deactivated_at=datetime.now(UTC),
            deactivated_reason=reason,
        )


# An outcome's values in ``record_sql``, in order: the delivery's id, its lease owner, the
# attempt's time, delivered (1 or 0), the next attempt's time.
_OUTCOME_VALUES: Final = (
    "(CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS INTEGER), CAST(? AS BIGINT))"
)


@functools.lru_cache(maxsize=64)
def record_sql(count: int, max_attempts: int) -> str:
    """The statement that records ``count`` attempts' outcomes, each under its lease (see
    ``_OUTCOME_VALUES``). SET reads the row as it was: ``attempts + 1`` is this attempt's
    number. VALUES names its columns column1, column2, … on both databases."""
    return (
        "UPDATE hook_deliveries SET attempts = hook_deliveries.attempts + 1,"  # noqa: S608
        " first_attempt_at = COALESCE(hook_deliveries.first_attempt_at, outcome.column3),"
        f" status = CASE WHEN outcome.column4 = 1 THEN '{outbox.DELIVERED}'"
        f" WHEN hook_deliveries.attempts + 1 >= {int(max_attempts)} THEN '{outbox.FAILED}'"
        f" ELSE '{outbox.PENDING}' END,"
        " next_attempt_at = outcome.column5, lease_until = NULL, lease_owner = NULL"
        f" FROM (VALUES {', '.join([_OUTCOME_VALUES] * count)}) AS outcome"
        " WHERE hook_deliveries.id = outcome.column1"
        " AND hook_deliveries.lease_owner = outcome.column2"
        " RETURNING id, attempts, status, first_attempt_at"
    )


async def _jobs(connection: BaseDBAsyncClient, claims: list[Claim]) -> list[Job]:
    """The claims with their hooks and events, read in one statement each. A claim whose
    hook has gone (deleted with its deliveries) is dropped."""
    if not claims:
        return []
    hook_ids = sorted({claim.hook_id for claim in claims})
    rows = await fetch(connection, _TARGET_SQL.format(", ".join("?" * len(hook_ids))), hook_ids)
    targets = {row[0]: Target(*row[1:]) for row in rows}
    event_ids = sorted({claim.event_id for claim in claims if claim.event_id is not None})
    events: dict[str, StoredEvent] = {}
    if event_ids:
        sql = _EVENTS_SQL.format(", ".join("?" * len(event_ids)))
        rows = await fetch(connection, sql, event_ids)
        events = {event.id: event for event in map(StoredEvent.from_columns, rows)}
    return [
        Job(claim, targets[claim.hook_id], events.get(claim.event_id or ""))
        for claim in claims
        if claim.hook_id in targets
    ]


def _header_fields(fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """A response's header fields by lowercased name, repeated ones joined by commas."""
    shown: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        shown[name] = f"{shown[name]}, {value}" if name in shown else value
    return shown


async def _read_some(response: httpcore.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of the response's body: a receiver may answer without end."""
    read = bytearray()
    async for chunk in response.aiter_stream():
        read.extend(chunk)
        if len(read) >= limit:
            break
    return bytes(read[:limit])


def _shown(body: bytes) -> str:
    """A body as the attempts log keeps it: its first ``LOGGED_BODY_BYTES`` as text."""
    return body[:LOGGED_BODY_BYTES].decode("utf-8", "replace")
