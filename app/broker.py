"""Live delivery: committed events reach the subscriptions of every server process.

    Hub                  this process's subscriptions; fans an event out to the matching ones
    Broker               brings every committed event into the hub of every process
     ├── LocalBroker     SQLite (one process): the writer publishes right after its commit
     └── PostgresBroker  NOTIFY in the writer's transaction, LISTEN in every process

A subscription never trusts the feed to be complete: see ``RESYNC`` and ``app.live``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from app import metrics
from app.models import OrderEvent
from app.records import COLUMN_NAMES, StoredEvent

logger = logging.getLogger(__name__)

CHANNEL: Final = "order_events"
# The listening connection's application_name, to find it in pg_stat_activity.
LISTENER_NAME: Final = "order-events-listener"
# NOTIFY refuses payloads of 8000 bytes or more; a larger event is sent as a reference.
MAX_PAYLOAD: Final = 7900

# An event's payload, made by PostgreSQL in the statement that stores it: the row as
# ``StoredEvent.to_record`` has it (metadata as its JSON text, created_at as ISO 8601), or
# a reference that receivers read from the table when that is too large for NOTIFY.
_RECORD = "json_build_object(" + ", ".join(f"'{name}', {name}" for name in COLUMN_NAMES) + ")"
NOTIFY_SQL: Final = (
    f"pg_notify('{CHANNEL}', (SELECT CASE WHEN octet_length(record) <= {MAX_PAYLOAD}"  # noqa: S608
    " THEN record ELSE json_build_object('ref', event_id, 'a', account_id, 'o', order_id)::text"
    f" END FROM (SELECT {_RECORD}::text AS record) AS payload))"
)
# For events already stored (``in_transaction``): their rows in the order given, each event
# notified in turn (notifications of one transaction arrive in the order they were sent).
_NOTIFY_STORED: Final = (
    f"SELECT {NOTIFY_SQL} FROM ("  # noqa: S608 (no input in the text)
    + "SELECT "
    + ", ".join(
        "given.created_at AS created_at" if name == "created_at" else f"stored.{name}"
        for name in COLUMN_NAMES
    )
    + " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS given(event_id, created_at, n)"
    " JOIN order_events AS stored USING (event_id) ORDER BY given.n) AS event"
)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Pushed to every subscription when events may have been missed: catch up from the table.
RESYNC: Final = _Marker("RESYNC")

Item = StoredEvent | _Marker


class Subscription:
    """One subscriber's buffer. Overflowing it ends the subscription rather than the process:
    a stuck consumer costs at most ``limit`` events of memory and slows nobody else.

    Slotted and small: an idle subscription holds an empty list, no future and no task (a
    list rather than a deque, whose block is allocated up front; it holds at most ``limit``
    items, so taking from its front stays cheap). ``app.live.Feed`` acts on ``push``."""

    __slots__ = ("_hub", "_items", "_limit", "account_id", "order_id", "overflowed")

    def __init__(self, hub: Hub, account_id: str, order_id: str | None, limit: int) -> None:
        self._hub = hub
        self._items: list[Item] = []
        self._limit = limit
        self.account_id = account_id
        self.order_id = order_id
        self.overflowed = False

    def push(self, item: Item) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self._limit:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(item)

    def take(self) -> Item | None:
        """The next buffered item without waiting: None when there is none (see
        ``overflowed`` to tell an overflow from an empty buffer)."""
        if self.overflowed or not self._items:
            return None
        return self._items.pop(0)

    def close(self) -> None:
        self._hub.remove(self)


class Hub:
    """This process's subscriptions, indexed by account and order; ``publish`` fans an event
    out to the matching ones, each into its bounded buffer."""

    def __init__(self) -> None:
        self._by_order: dict[tuple[str, str], set[Subscription]] = {}
        self._by_account: dict[str, set[Subscription]] = {}

    def add(self, subscription: Subscription) -> None:
        """Registers a subscription (``app.live.Feed``, which acts on ``push``)."""
        self._index(subscription).add(subscription)

    def remove(self, subscription: Subscription) -> None:
        if subscription.order_id is None:
            index = self._by_account.get(subscription.account_id)
        else:
            index = self._by_order.get((subscription.account_id, subscription.order_id))
        if index is None:
            return
        index.discard(subscription)
        if not index:
            if subscription.order_id is None:
                self._by_account.pop(subscription.account_id, None)
            else:
                self._by_order.pop((subscription.account_id, subscription.order_id), None)

    def _index(self, subscription: Subscription) -> set[Subscription]:
        if subscription.order_id is None:
            return self._by_account.setdefault(subscription.account_id, set())
        key = (subscription.account_id, subscription.order_id)
        return self._by_order.setdefault(key, set())

    def wants(self, account_id: str, order_id: str) -> bool:
        return account_id in self._by_account or (account_id, order_id) in self._by_order

    def publish(self, event: StoredEvent) -> None:
        # Over a copy: a subscription's push may end it (and remove it from its set).
        for subscription in tuple(self._by_account.get(event.account_id, ())):
            subscription.push(event)
        for subscription in tuple(self._by_order.get((event.account_id, event.order_id), ())):
            subscription.push(event)

    def resync_all(self) -> None:
        for subscriptions in (*self._by_account.values(), *self._by_order.values()):
            for subscription in tuple(subscriptions):
                subscription.push(RESYNC)

    @property
    def subscription_count(self) -> int:
        return sum(len(s) for s in (*self._by_account.values(), *self._by_order.values()))


class Broker:
    """Carries committed events to the hubs of all processes; this base does it within one."""

    def __init__(self) -> None:
        self.hub = Hub()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def notify_sql(self) -> str | None:
        """An SQL expression that NOTIFYs one committed event to the other processes, for the
        writer to put in the statement that stores the events; None when this broker needs
        no notification. It reads the event's ``COLUMNS`` by name, ``created_at`` as ISO 8601
        text (``created_at_text``): a row source must offer those."""
        return None

    async def in_transaction(
        self, connection: BaseDBAsyncClient, events: Sequence[StoredEvent]
    ) -> None:
        """Called inside the writer's transaction after the events' rows are written, when
        the writer stores them in statements of its own rather than with ``notify_sql``."""
        return None

    def after_commit(self, events: Sequence[StoredEvent]) -> None:
        """Called by the writer right after its transaction committed."""
        return None


class LocalBroker(Broker):
    def after_commit(self, events: Sequence[StoredEvent]) -> None:
        # Called with no await since the commit: SQLite commits one writer at a time, so
        # events reach the hub in commit order.
        for event in events:
            self.hub.publish(event)


class PostgresBroker(Broker):
    """NOTIFY inside the writer's transaction, so an event is delivered at commit and in
    commit order, to every process LISTENing. The listening connection is its own (a pool's
    reset would UNLISTEN), is checked every few seconds, and reconnects by itself; as
    notifications are not kept for a listener that was away, every subscription is then told
    to catch up from the table (``RESYNC``)."""

    def __init__(
        self,
        database_url: str,
        *,
        check_interval: float = 5.0,
        reconnect_delay: float = 0.1,
        # Low: while the listener is away, live delivery waits for it even if writes succeed.
        max_reconnect_delay: float = 1.0,
    ) -> None:
        super().__init__()
        parts = urlsplit(database_url)
        self._dsn = urlunsplit(parts._replace(scheme="postgresql"))
        self._check_interval = check_interval
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        # Notifications are handled one at a time, in the order they arrived.
        self._inbox: asyncio.Queue[str] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="broker-listener")
        self._dispatcher = asyncio.create_task(self._dispatch(), name="broker-dispatch")

    async def stop(self) -> None:
        for task in (self._supervisor, self._dispatcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._disconnect()

    def notify_sql(self) -> str:
        return NOTIFY_SQL

    async def in_transaction(
        self, connection: BaseDBAsyncClient, events: Sequence[StoredEvent]
    ) -> None:
        # Read back from the table, so that the payload is made by the one expression the
        # writer's batches use too; created_at as the event has it.
        await connection.execute_query(
            _NOTIFY_STORED,
            [[event.id for event in events], [event.created_at_text for event in events]],
        )

    # The listening connection -------------------------------------------------------------

    async def _connect(self) -> None:
        connection = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": LISTENER_NAME}
        )
        try:
            self._lost.clear()
            connection.add_termination_listener(lambda _: self._lost.set())
            await connection.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        logger.info("listening for order events (backend %d)", connection.get_server_pid())

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)

    async def _supervise(self) -> None:
        while True:
            await self._wait_until_lost()
            logger.warning("lost the order-event listener connection; reconnecting")
            await self._disconnect()
            delay = self._reconnect_delay
            while True:
                try:
                    await self._connect()
                    break
                except Exception as error:
                    # Whatever failed, giving up would end live delivery in this process.
                    logger.warning(
                        "reconnecting the listener failed (%s); retry in %.1fs", error, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_reconnect_delay)
            metrics.LISTENER_RECONNECTS.inc()
            # Whatever was notified while away is lost: every subscription catches up.
            self.hub.resync_all()

    async def _wait_until_lost(self) -> None:
        """Returns once the connection is gone, checking it every few seconds: a connection
        can die without the termination callback firing (a silent network drop)."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=self._check_interval)
                return
            except TimeoutError:
                pass
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            try:
                await asyncio.wait_for(connection.execute("SELECT 1"), timeout=self._check_interval)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self._inbox.put_nowait(payload)

    async def _dispatch(self) -> None:
        while True:
            payload = await self._inbox.get()
            try:
                event = await self._decode(payload)
            except Exception:
                # One unreadable notification must not stop delivery; subscriptions that
                # missed it see the gap in positions and catch up from the table.
                logger.exception("could not read an order-event notification")
                continue
            if event is not None:
                self.hub.publish(event)

    async def _decode(self, payload: str) -> StoredEvent | None:
        data = orjson.loads(payload)  # made by NOTIFY_SQL, so plain JSON
        if "ref" not in data:
            if not self.hub.wants(data["account_id"], data["order_id"]):
                return None  # nobody here watches it (every writer hears its own events)
            return StoredEvent.from_record(data)
        if not self.hub.wants(data["a"], data["o"]):
            return None  # nobody here watches it: no need to read it
        row = await OrderEvent.get_or_none(event_id=data["ref"])
        return None if row is None else StoredEvent.from_row(row)


def create_broker(database_url: str) -> Broker:
    if urlsplit(database_url).scheme in {"postgres", "postgresql", "asyncpg"}:
        return PostgresBroker(database_url)
    return LocalBroker()
