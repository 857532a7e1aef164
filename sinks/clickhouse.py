"""The ClickHouse sink: connection, schema migrations, batched idempotent writes, read-only SQL.

One URL chooses the store: ``http(s)://host:port`` is a ClickHouse server, anything else (a path,
or ``chdb:PATH``) is embedded chDB on that data directory, through clickhouse-connect's own
``chdb`` interface, so the server and the replay run the very same code. One process owns an
embedded data directory at a time (an ``flock`` on ``journeymap.lock`` inside it).

Why writes are idempotent (at-least-once delivery must never count a batch twice):

* Every analyst table is a ``ReplacingMergeTree`` whose sorting key is deterministic: taken from
  the event (``touchpoints``: channel, touchpoint, occurred_at, event_id), or the full identity of
  an aggregate cell (``transition_cells``: pane, segment, channel, prev2, src, dst, gap bucket,
  shard). Aggregates are written as their *full current value*, never as a delta, so rewriting a
  cell after a redelivery or a replay replaces it instead of adding to it (a SummingMergeTree of
  deltas would double count). A version column (ingested_at, updated_at, as_of) makes the newest
  win.
* Transitions are stored as the processor emits them: the cells of one *pane* (one step of event
  time) per shard (Kafka partition), written whole when the pane becomes final; a correction
  (late events, merges) writes only the cells it changed (``partial = 1``, an ``n = 0`` row for
  a cell that emptied). A whole emission can drop cells, so the views read the latest row of each
  cell that is not older than its pane's latest whole emission, found in ``transition_panes`` (a
  materialized ``max(updated_at)``, exact under repeated inserts), and sum over shards and panes
  at query time: ``FINAL`` plus ``GROUP BY`` (migrations 0003 and 0011).
  An AggregatingMergeTree of sums could not be exact here: a re-emitted pane would add to its
  earlier emission instead of replacing it.
* Each flushed batch carries an ``insert_deduplication_token`` fixed when the batch is sealed and
  reused by every retry, with ``non_replicated_deduplication_window`` on the tables: an insert that
  reached the server although the client saw a timeout is dropped when it is retried, so even
  queries without FINAL do not see that retry twice.

Replacement happens at merge time. Queries through ``journeymap query`` run with the ``final=1``
setting and the views use ``FINAL``, so results are exact; other clients add ``FINAL`` after the
table name (or ``SETTINGS final = 1``) for exact counts (docs/analysts.md).

Faust's ``stream.take()`` acknowledges a batch in a ``finally``: call :meth:`SinkWriter.flush`
before the batch is acknowledged. It retries with exponential backoff while ClickHouse is down
(bounded by ``retry_total_s``) and raises :class:`ServiceUnavailable` after that, keeping the
buffer, so nothing is dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    DataError,
    OperationalError,
)

from processors.errors import (
    QueryError,
    SchemaError,
    ServiceError,
    ServiceUnavailable,
    StoreLockedError,
)
from processors.events import ResolvedEvent
from processors.identity import Conflict, IdentityLink, MergeRecord
from processors.transitions import CellUpdate
from processors.validation import DeadLetter
from sinks.migrations import RAW_TABLES, RETENTION_COLUMNS

if TYPE_CHECKING:  # only annotations: the sink does not pay for importing River
    from online_models.drift import Alert
    from online_models.segments import SegmentProfile
    from online_models.suite import Scores
    from processors.funnels import FunnelStageStats
    from processors.journeys import LateEvent
    from processors.transitions import CellRow

log = logging.getLogger(__name__)

LOCK_FILE: Final = "journeymap.lock"
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# ClickHouse error codes worth waiting for: overload and network trouble, not bad SQL.
RETRYABLE_CODES: Final = frozenset({159, 202, 209, 210, 241, 252, 425, 1000})
_CODE: Final = re.compile(r"Code: (\d+)")


class ClickHouseTarget(Protocol):
    """What :func:`connect` needs (streams.settings.ClickHouseSettings has it)."""

    url: str
    database: str
    user: str
    password: Any  # SecretStr or str


# --------------------------------------------------------------------------------------------
# Connection


@dataclass
class _Held:
    fd: int
    users: int


_LOCKS: dict[str, _Held] = {}
_LOCKS_GUARD = threading.Lock()


def _acquire_dir_lock(path: Path) -> str:
    """Own `path` for this process; a second process gets StoreLockedError naming the holder."""
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    with _LOCKS_GUARD:
        held = _LOCKS.get(key)
        if held is not None:
            held.users += 1
            return key
        lock_path = os.path.join(key, LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"embedded ClickHouse data directory {key} is in use by another process "
                f"(pid {holder}); stop that process, or point clickhouse.url at another "
                "directory or at a ClickHouse server"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _LOCKS[key] = _Held(fd, 1)
        return key


def _release_dir_lock(key: str) -> None:
    with _LOCKS_GUARD:
        held = _LOCKS.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users == 0:
            del _LOCKS[key]
            os.ftruncate(held.fd, 0)
            fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)


@dataclass
class Store:
    """An open ClickHouse: the clickhouse-connect `client` plus what owns it. Close it when done."""

    client: Client
    database: str
    url: str
    embedded: bool
    _lock_key: str | None = field(default=None, repr=False)
    _reader: Client | None = field(default=None, repr=False)

    def close(self) -> None:
        for client in (self._reader, self.client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._reader = None
        if self._lock_key is not None:
            _release_dir_lock(self._lock_key)
            self._lock_key = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def database_exists(self) -> bool:
        rows = self.client.query(
            "SELECT count() FROM system.databases WHERE name = {db:String}",
            parameters={"db": self.database},
        ).result_rows
        return bool(rows[0][0])

    def read_only_client(self) -> tuple[Client, dict[str, Any]]:
        """A client and per-query settings for analyst queries: readonly=1 and final=1.

        chDB applies settings to its session (SET ... then restores them), and a session in
        readonly mode cannot restore anything; so embedded queries get a session of their own
        that is read-only for good. A server takes the settings with each request.
        """
        if not self.embedded:
            return self.client, {"readonly": 1, "final": 1}
        if self._reader is None:
            self._reader = clickhouse_connect.get_client(
                interface="chdb",
                path=self.url,
                database=self.database if self.database_exists() else None,
                settings={"final": 1, "readonly": 1},
            )
        return self._reader, {}

    def writer(self, **kwargs: Any) -> SinkWriter:
        return SinkWriter(self.client, **kwargs)


def _secret(value: Any) -> str:
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter else value or "")


def connect(target: ClickHouseTarget, *, connect_timeout_s: float = 10.0) -> Store:
    """Open the store `target.url` names. The database is selected when it exists.

    Raises StoreLockedError (embedded directory owned by another process) or ServiceUnavailable.
    """
    if not _IDENTIFIER.match(target.database):
        raise SchemaError(f"clickhouse.database {target.database!r} is not a valid identifier")
    parts = urlsplit(target.url)
    if parts.scheme in ("http", "https"):
        try:
            client = clickhouse_connect.get_client(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                interface=parts.scheme,
                username=target.user,
                password=_secret(target.password),
                connect_timeout=connect_timeout_s,
                send_receive_timeout=300,
                autogenerate_session_id=False,
            )
        except ClickHouseError as exc:
            raise ServiceUnavailable(
                f"ClickHouse at {target.url} is not reachable: {_one_line(exc)}; start it "
                "(`journeymap services up`) or fix clickhouse.url"
            ) from None
        store = Store(client, target.database, target.url, embedded=False)
    else:
        path = Path(target.url.removeprefix("chdb:").removeprefix("file:"))
        key = _acquire_dir_lock(path)
        try:
            client = clickhouse_connect.get_client(interface="chdb", path=key)
        except Exception as exc:
            _release_dir_lock(key)
            raise ServiceError(f"could not open embedded ClickHouse at {key}: {exc}") from exc
        store = Store(client, target.database, key, embedded=True, _lock_key=key)
    try:
        if store.database_exists():
            client.database = target.database
    except ClickHouseError as exc:
        store.close()
        raise ServiceUnavailable(f"ClickHouse at {target.url}: {_one_line(exc)}") from None
    return store


# --------------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The statements of the file, comments removed, split on `;` at the end of a line."""
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def load_migrations() -> list[Migration]:
    """The migrations shipped with this journeymap, in version order (versions 1..N, no gaps)."""
    folder = resources.files("sinks") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise SchemaError(f"migration versions must be 1..N without gaps: {found}")
    return found


def required_version() -> int:
    return len(load_migrations())


_SCHEMA_MIGRATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC'),
    checksum String
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


def _applied(store: Store) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the migrations recorded in the database."""
    if not store.database_exists():
        return {}
    exists = store.client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND name = 'schema_migrations'",
        parameters={"db": store.database},
    ).result_rows[0][0]
    if not exists:
        return {}
    rows = store.client.query(
        "SELECT version, name, checksum FROM {db:Identifier}.schema_migrations FINAL",
        parameters={"db": store.database},
    ).result_rows
    return {int(v): (n, c) for v, n, c in rows}


def schema_version(store: Store) -> int:
    """The highest migration version applied to the database (0 when none)."""
    return max(_applied(store), default=0)


def check_schema(store: Store) -> int:
    """Refuse to run on a database this code cannot use. Returns its version.

    Raises SchemaError with the command that fixes it.
    """
    need = required_version()
    have = schema_version(store)
    if have < need:
        raise SchemaError(
            f"database {store.database} is at version {have}, this journeymap needs {need}: "
            f"run `journeymap migrate`"
        )
    if have > need:
        raise SchemaError(
            f"database {store.database} is at version {have}, newer than this journeymap "
            f"({need}): upgrade journeymap"
        )
    return have


@dataclass(frozen=True)
class MigrationResult:
    database: str
    before: int
    after: int
    applied: list[Migration]
    ttl: str


def migrate(
    store: Store,
    *,
    ttl_days: int = 0,
    ttl_days_by_table: Mapping[str, int] | None = None,
    now_ms: Callable[[], int] | None = None,
) -> MigrationResult:
    """Apply pending migrations in order, then set the TTLs. Safe to run again (idempotent)."""
    clock = now_ms or (lambda: int(time.time() * 1000))
    migrations = load_migrations()
    client = store.client
    client.command(f"CREATE DATABASE IF NOT EXISTS `{store.database}`")
    client.database = store.database
    client.command(_SCHEMA_MIGRATIONS_DDL)
    applied = _applied(store)
    before = max(applied, default=0)
    known = {m.version for m in migrations}
    if before > max(known, default=0):
        raise SchemaError(
            f"database {store.database} is at version {before}, newer than this journeymap "
            f"({max(known, default=0)}): upgrade journeymap"
        )
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise SchemaError(
                    f"migration {migration.version} ({name}) was changed after it was applied "
                    f"to {store.database}; ship schema changes as a new migration file"
                )
            continue
        for statement in migration.statements():
            try:
                client.command(statement)
            except DatabaseError as exc:
                raise SchemaError(
                    f"migration {migration.version:04d}_{migration.name} failed: "
                    f"{_one_line(exc)}"
                ) from None
        client.insert(
            "schema_migrations",
            [[migration.version], [migration.name], [clock()], [migration.checksum]],
            column_names=["version", "name", "applied_at", "checksum"],
            column_oriented=True,
        )
        done.append(migration)
    ttl = apply_ttl(store, ttl_days, ttl_days_by_table)
    return MigrationResult(store.database, before, max(before, *known), done, ttl)


def retention_days(ttl_days: int, by_table: Mapping[str, int] | None = None) -> dict[str, int]:
    """Days each table keeps its rows (0 = forever): `ttl_days` for the raw tables, then the
    per-table overrides. Raises SchemaError on a table that cannot age out or a negative value."""
    days = {table: (int(ttl_days) if table in RAW_TABLES else 0) for table in RETENTION_COLUMNS}
    for table, value in (by_table or {}).items():
        if table not in RETENTION_COLUMNS:
            raise SchemaError(
                f"no TTL for table {table!r}: tables that can age out are "
                + ", ".join(sorted(RETENTION_COLUMNS))
            )
        days[table] = int(value)
    bad = {t: d for t, d in days.items() if d < 0}
    if bad:
        raise SchemaError(f"TTL days must be >= 0, got {bad}")
    return days


def apply_ttl(store: Store, ttl_days: int, by_table: Mapping[str, int] | None = None) -> str:
    """Make every table's TTL match the settings (0 = keep forever). Idempotent. Returns a
    one-line summary such as `touchpoints 90 days, alerts 365 days; the rest kept forever`."""
    days = retention_days(ttl_days, by_table)
    for table, column in RETENTION_COLUMNS.items():
        ddl = store.client.query(
            "SELECT create_table_query FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": store.database, "t": table},
        ).result_rows[0][0]
        has_ttl = " TTL " in ddl
        if days[table] > 0:
            # Table and column names come from RETENTION_COLUMNS, the int from validated settings:
            # DDL takes no query parameters here.
            store.client.command(
                f"ALTER TABLE {table} MODIFY TTL toDateTime({column}) + "
                f"toIntervalDay({days[table]})"
            )
        elif has_ttl:
            store.client.command(f"ALTER TABLE {table} REMOVE TTL")
    aged = [f"{t} {d} days" for t, d in days.items() if d > 0]
    return ", ".join(aged) + "; the rest kept forever" if aged else "none (rows are kept forever)"


# --------------------------------------------------------------------------------------------
# Batched writes


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    text = re.sub(r"^Received ClickHouse exception, code: \d+, server response: ", "", text)
    text = re.sub(r"\s*\(for url [^)]*\)", "", text)
    text = re.sub(r"\s*\(version [\d.]+[^)]*\)", "", text)
    first = " ".join(text.split())
    return first[:500] + ("…" if len(first) > 500 else "")


def _error_code(exc: BaseException) -> int | None:
    match = _CODE.search(str(exc))
    return int(match[1]) if match else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, DataError):
        return False
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DatabaseError) and _error_code(exc) in RETRYABLE_CODES


@dataclass
class _Batch:
    """Rows sealed for one insert; its token stays the same across retries."""

    table: str
    names: tuple[str, ...]
    columns: list[list[Any]]
    n_rows: int
    token: str = field(default_factory=lambda: f"jm-{uuid.uuid4().hex}")


@dataclass
class _Buffer:
    names: tuple[str, ...]
    columns: list[list[Any]]
    n_rows: int = 0


class SinkWriter:
    """Buffers rows per table and inserts them column-oriented in large batches.

    A table is flushed when it holds `flush_rows` rows; everything is flushed when the oldest
    buffered row is `flush_interval_s` old (checked on `add` and `maybe_flush`) and on `flush()`.
    Rows of one table are mappings with the same keys (column names); `add_columns` takes
    prepared columns. `clock` and `sleep` are parameters so tests need no real waiting.
    """

    def __init__(
        self,
        client: Any,
        *,
        flush_rows: int = 50_000,
        flush_interval_s: float = 1.0,
        retry_total_s: float = 120.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if flush_rows < 1 or flush_interval_s <= 0 or retry_total_s <= 0:
            raise ValueError("flush_rows, flush_interval_s and retry_total_s must be positive")
        self.client = client
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.retry_total_s = retry_total_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._sleep = sleep
        self._buffers: dict[str, _Buffer] = {}
        self._sealed: dict[str, list[_Batch]] = {}
        self._types: dict[str, dict[str, str]] = {}  # table -> column -> ClickHouse type
        self._oldest: float | None = None
        self.n_rows_written = 0
        self.n_batches_written = 0
        self.n_retries = 0

    @property
    def pending_rows(self) -> int:
        """Rows accepted by `add` and not yet confirmed written."""
        buffered = sum(b.n_rows for b in self._buffers.values())
        return buffered + sum(b.n_rows for q in self._sealed.values() for b in q)

    def holds(self, table: str) -> bool:
        """Whether rows of `table` are accepted by `add` and not yet confirmed written."""
        buf = self._buffers.get(table)
        return bool((buf is not None and buf.n_rows) or self._sealed.get(table))

    def _buffer(self, table: str, names: tuple[str, ...]) -> _Buffer:
        buf = self._buffers.get(table)
        if buf is None or buf.n_rows == 0:
            buf = _Buffer(names, [[] for _ in names])
            self._buffers[table] = buf
        elif len(buf.names) != len(names) or set(buf.names) != set(names):
            raise ValueError(
                f"rows for {table} have columns {sorted(names)}, earlier rows had "
                f"{sorted(buf.names)}: every row of a table must have the same keys"
            )
        return buf

    def add(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Buffer rows (mappings column -> value), all or none. Returns the rows flushed now.

        May raise ServiceUnavailable from a due flush; the rows are buffered before that.
        """
        if not _IDENTIFIER.match(table):
            raise ValueError(f"{table!r} is not a table name")
        buf: _Buffer | None = None
        width = 0
        pairs: list[tuple[str, list[Any]]] = []
        n = 0
        try:
            for row in rows:
                if buf is None:
                    buf = self._buffer(table, tuple(row))
                    width = len(buf.names)
                    pairs = list(zip(buf.names, buf.columns, strict=True))
                if len(row) != width:
                    raise ValueError(
                        f"a row for {table} has columns {sorted(row)}, "
                        f"expected {sorted(buf.names)}"
                    )
                try:
                    for name, column in pairs:
                        column.append(row[name])
                except KeyError as exc:
                    raise ValueError(f"a row for {table} lacks column {exc.args[0]!r}") from None
                n += 1
        except BaseException:
            # All or nothing: drop this call's rows so the buffer's columns stay aligned.
            if buf is not None:
                for column in buf.columns:
                    del column[buf.n_rows :]
            raise
        if buf is None:
            return self.maybe_flush()
        buf.n_rows += n
        return self._after_add(table, buf)

    def add_columns(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        """Buffer prepared columns (name -> equal-length values). Returns the rows flushed."""
        if not _IDENTIFIER.match(table):
            raise ValueError(f"{table!r} is not a table name")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns for {table} have different lengths: {sorted(lengths)}")
        (n,) = lengths
        buf = self._buffer(table, tuple(columns))
        for name, column in zip(buf.names, buf.columns, strict=True):
            column.extend(columns[name])
        buf.n_rows += n
        return self._after_add(table, buf)

    def _after_add(self, table: str, buf: _Buffer) -> int:
        if self._oldest is None:
            self._oldest = self._clock()
        if buf.n_rows >= self.flush_rows:
            return self.flush(tables=[table]) + self.maybe_flush()
        return self.maybe_flush()

    def due(self) -> bool:
        """True when the oldest buffered row has waited `flush_interval_s`."""
        return self._oldest is not None and self._clock() - self._oldest >= self.flush_interval_s

    def maybe_flush(self) -> int:
        """Flush everything if the interval has passed (call it from a timer too)."""
        return self.flush() if self.due() else 0

    def flush(self, tables: Sequence[str] | None = None) -> int:
        """Write the buffered rows now, synchronously. Returns the number of rows written.

        Raises ServiceUnavailable after `retry_total_s` of failed retries; nothing is dropped
        then: the rows stay buffered (with the same dedup tokens) for the next flush.
        """
        names = list(self._buffers) if tables is None else list(tables)
        for table in names:
            buf = self._buffers.get(table)
            if buf is not None and buf.n_rows:
                self._sealed.setdefault(table, []).append(
                    _Batch(table, buf.names, buf.columns, buf.n_rows)
                )
                del self._buffers[table]
        written = 0
        order = list(self._sealed) if tables is None else [t for t in names if t in self._sealed]
        for table in order:
            queue = self._sealed[table]
            while queue:
                self._insert(queue[0])
                batch = queue.pop(0)
                written += batch.n_rows
                self.n_rows_written += batch.n_rows
                self.n_batches_written += 1
            del self._sealed[table]
        if not any(b.n_rows for b in self._buffers.values()) and not self._sealed:
            self._oldest = None
        return written

    def _column_types(self, table: str, names: Sequence[str]) -> list[str] | None:
        """The columns' ClickHouse types, asked once per table (``DESCRIBE TABLE``).

        Without them clickhouse-connect asks the server before every insert: one more round
        trip per table per flush, several per journey batch in the streaming worker (issue 6).
        None (clickhouse-connect asks, and reports a column the table lacks) when a column is
        unknown to the table even after asking again (a migration since the last ask).
        """
        known = self._types.get(table)
        if known is None or any(n not in known for n in names):
            rows = self.client.query(f"DESCRIBE TABLE {table}").result_rows
            known = self._types[table] = {
                r[0]: r[1] for r in rows if r[2] not in ("MATERIALIZED", "ALIAS", "EPHEMERAL")
            }
        if any(n not in known for n in names):
            return None
        return [known[n] for n in names]

    def _insert(self, batch: _Batch) -> None:
        deadline = self._clock() + self.retry_total_s
        delay = self.backoff_initial_s
        while True:
            try:
                self.client.insert(
                    batch.table,
                    batch.columns,
                    column_names=list(batch.names),
                    column_type_names=self._column_types(batch.table, batch.names),
                    column_oriented=True,
                    settings={"insert_deduplication_token": batch.token},
                )
                return
            except (DataError, TypeError) as exc:
                raise ValueError(
                    f"rows for {batch.table} do not fit its columns: {_one_line(exc)}"
                ) from exc
            except DatabaseError as exc:
                self._types.pop(batch.table, None)  # asked again: the schema may have changed
                if not _retryable(exc):
                    code = _error_code(exc)
                    kind = SchemaError if code in (16, 47, 60, 81) else ServiceError
                    hint = ": run `journeymap migrate`" if kind is SchemaError else ""
                    raise kind(
                        f"insert into {batch.table} failed: {_one_line(exc)}{hint}"
                    ) from None
                left = deadline - self._clock()
                if left <= 0:
                    raise ServiceUnavailable(
                        f"ClickHouse did not accept {batch.n_rows} rows for {batch.table} for "
                        f"{self.retry_total_s:.0f}s ({_one_line(exc)}); the rows are kept "
                        "buffered and will be written by the next flush"
                    ) from None
                wait = min(delay, left)
                self.n_retries += 1
                log.warning(
                    "ClickHouse unavailable (%s); retrying %d rows for %s in %.1fs "
                    "(giving up in %.0fs)",
                    _one_line(exc)[:200], batch.n_rows, batch.table, wait, left,
                )
                self._sleep(wait)
                delay = min(delay * 2, self.backoff_max_s)


# --------------------------------------------------------------------------------------------
# Rows for the tables whose inputs already exist


def _property_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def touchpoint_row(
    resolved: ResolvedEvent, ingested_at_ms: int, sentiment: float | None = None
) -> dict[str, Any]:
    """The `touchpoints` row of one resolved event (times as epoch ms)."""
    event = resolved.event
    return {
        "event_id": event.event_id,
        "occurred_at": resolved.ts_ms,
        "customer_id": resolved.customer_id,
        "channel": event.channel,
        "touchpoint": event.touchpoint,
        "session_id": event.session_id or "",
        "segment": resolved.segment,
        "revenue": event.revenue or 0.0,
        "properties": {k: _property_text(v) for k, v in (event.properties or {}).items()},
        "has_text": bool(event.text),
        "sentiment": sentiment,
        "ingested_at": ingested_at_ms,
    }


def dead_letter_row(dead: DeadLetter, received_at_ms: int) -> dict[str, Any]:
    """The `dead_letters` row of one dead letter."""
    record = dead.to_record()
    return {
        "received_at": received_at_ms,
        "reason": dead.reason,
        "stage": dead.stage,
        "source_topic": dead.source.topic,
        "source_partition": dead.source.partition,
        "source_offset": dead.source.offset,
        "errors": orjson.dumps(dead.errors).decode(),
        "raw_b64": record["raw_b64"],
    }


def transition_cell_row(row: CellRow, shard: int, updated_at_ms: int) -> dict[str, Any]:
    """The `transition_cells` row of one pane cell: its full current value, never a delta.

    `shard` is the Kafka partition whose worker counted it (0 in the replay). Every row of one
    emission of a pane must carry the same `updated_at_ms`, later than that of any earlier
    emission of the pane by the same shard (:class:`EmissionClock` gives such values). A whole
    pane (`CellRow`) replaces every cell of the pane: cells missing from it count as zero. A
    :class:`~processors.transitions.CellUpdate` is written with ``partial = 1`` and replaces
    only its own cell (migration 0011: the views read the latest row of each cell written at or
    after the pane's latest whole emission).
    """
    if not 0 <= shard <= 65_535:
        raise ValueError(f"shard must fit UInt16 (a Kafka partition), got {shard}")
    return {
        "shard": shard,
        "pane_start": row.pane_start_ms // 1000,
        "pane_size_s": row.pane_size_s,
        "segment": row.segment,
        "channel": row.channel,
        "prev2": row.prev2,
        "src": row.src,
        "dst": row.dst,
        "gap_bucket": row.gap_bucket,
        "n": row.n,
        "gap_sum_ms": row.gap_sum_ms,
        "updated_at": updated_at_ms,
        "partial": 1 if isinstance(row, CellUpdate) else 0,
    }


class EmissionClock:
    """Strictly increasing epoch-ms versions: ``clock(now_ms)`` is never <= the last one.

    Two emissions of a pane within the same millisecond would otherwise share a version, and a
    cell dropped by the second would still be read as current.
    """

    def __init__(self) -> None:
        self.last_ms = 0

    def __call__(self, now_ms: int) -> int:
        self.last_ms = max(int(now_ms), self.last_ms + 1)
        return self.last_ms


def funnel_dropoff_row(stats: FunnelStageStats, as_of_ms: int, shard: int = 0) -> dict[str, Any]:
    """The `funnel_dropoff` row of one stage snapshot, for the shard whose tracker made it."""
    return {**stats.as_row(as_of_ms), "shard": shard}


def late_event_row(late: LateEvent, received_at_ms: int) -> dict[str, Any]:
    """The `late_events` row of an event that came after the frontier and was not applied."""
    resolved = late.event
    return {
        "event_id": resolved.event.event_id,
        "occurred_at": resolved.ts_ms,
        "customer_id": resolved.customer_id,
        "channel": resolved.event.channel,
        "touchpoint": resolved.event.touchpoint,
        "segment": resolved.segment,
        "watermark": late.watermark_ms,
        "frontier": late.frontier_ms,
        "reason": late.reason,
        "received_at": received_at_ms,
    }


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def customer_score_row(scores: Scores, as_of_ms: int) -> dict[str, Any]:
    """The `customer_scores` row: a customer's latest scores (the newest `as_of` wins)."""
    return {
        "customer_id": scores.customer_id,
        "as_of": as_of_ms,
        "ts": scores.ts_ms,
        "segment": scores.segment,
        "p_convert": scores.p_convert,
        "p_churn": scores.p_churn,
        "next_best_action": scores.next_best_action or "",
        "expected_lift": scores.expected_lift,
        "lookalike": scores.lookalike,
        "top_features": _json(dict(scores.top_features)),
        "sentiment": scores.sentiment or "",
        "sentiment_score": scores.sentiment_score,
    }


def customer_score_history_row(scores: Scores) -> dict[str, Any]:
    """The `customer_score_history` row of a score: keyed by customer and event-time day (UTC),
    versioned by the event time, so the day's last score wins and rewriting it changes nothing."""
    return {
        "customer_id": scores.customer_id,
        "day": datetime.fromtimestamp(scores.ts_ms / 1000, UTC).date(),
        "ts": scores.ts_ms,
        "segment": scores.segment,
        "p_convert": scores.p_convert,
        "p_churn": scores.p_churn,
        "lookalike": scores.lookalike,
        "next_best_action": scores.next_best_action or "",
    }


def segment_row(profile: SegmentProfile, as_of_ms: int) -> dict[str, Any]:
    """The `segments` row of one segment in one snapshot."""
    return {
        "segment": profile.segment,
        "as_of": as_of_ms,
        "size": profile.size,
        "sample_share": profile.sample_share,
        "centroid": _json(profile.centroid),
        "conversion_rate": profile.conversion_rate,
        "examples": list(profile.examples),
    }


def alert_row(alert: Alert) -> dict[str, Any]:
    """The `alerts` row; `alert_id` is deterministic, so a replay replaces its own alerts."""
    return {
        "alert_id": alert.alert_id,
        "ts": alert.ts_ms,
        "kind": alert.kind,
        "severity": alert.severity,
        "segment": alert.segment,
        "metric": alert.metric,
        "message": alert.message,
        "evidence": _json(alert.evidence),
    }


def identity_conflict_row(conflict: Conflict) -> dict[str, Any]:
    """The `identity_conflicts` row of a link the identity safeguards refused."""
    return {
        "event_id": conflict.event_id,
        "ts": conflict.ts_ms,
        "reason": conflict.reason,
        "customer_a": conflict.customer_a,
        "customer_b": conflict.customer_b,
        "id_hashes": list(conflict.id_hashes),
    }


def identity_link_row(link: IdentityLink) -> dict[str, Any]:
    return {
        "customer_id": link.customer_id,
        "kind": link.kind,
        "id_hash": link.id_hash,
        "first_seen": link.first_seen_ms,
    }


def identity_merge_row(merge: MergeRecord) -> dict[str, Any]:
    return {
        "loser": merge.loser,
        "winner": merge.winner,
        "evidence_event_id": merge.evidence_event_id,
        "merged_at": merge.ts_ms,
        "reason": merge.reason,
        "seq": merge.seq,
    }


# --------------------------------------------------------------------------------------------
# Read-only queries

_READ_KEYWORDS: Final = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_PLACEHOLDER: Final = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^}]+)\}")
_LEADING_NOISE: Final = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*", re.S)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    """`name=value` strings -> {name: value}; the value is sent as a server-side parameter."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not _IDENTIFIER.match(name):
            raise QueryError(f"bad --param {pair!r}: expected name=value, e.g. --param day=7")
        if name in out:
            raise QueryError(f"--param {name} is given twice")
        out[name] = value
    return out


def check_read_only(sql: str) -> None:
    """Accept one read-only statement; anything else is a QueryError that says why."""
    text = _LEADING_NOISE.sub("", sql)
    if not text:
        raise QueryError("the query is empty")
    word = re.match(r"[A-Za-z]*", text)[0].upper()  # type: ignore[index]
    if word not in _READ_KEYWORDS:
        raise QueryError(
            f"only read-only queries are allowed (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS); "
            f"got {word or text[:20]!r}"
        )
    body = sql.strip().rstrip(";").strip()
    if ";" in re.sub(r"'(?:[^'\\]|\\.)*'", "''", body):
        raise QueryError("one statement per query, please (found a `;` between statements)")


def run_query(store: Store, sql: str, params: Mapping[str, str] | None = None) -> QueryResult:
    """Run one read-only, parameterized query; user values only travel as {name:Type} params.

    Runs with readonly=1 (the server refuses writes) and final=1 (exact, deduplicated results).
    """
    params = dict(params or {})
    check_read_only(sql)
    used = {m[1] for m in _PLACEHOLDER.finditer(sql)}
    missing = sorted(used - set(params))
    if missing:
        raise QueryError(
            f"the query uses parameter(s) {', '.join(missing)} but no value was given: "
            f"add --param {missing[0]}=VALUE"
        )
    unused = sorted(set(params) - used)
    if unused:
        raise QueryError(
            f"--param {', '.join(unused)} is not used by the query (write {{{unused[0]}:Type}})"
        )
    client, settings = store.read_only_client()
    try:
        result = client.query(sql.strip().rstrip(";"), parameters=params or None, settings=settings)
    except ClickHouseError as exc:
        raise QueryError(_one_line(exc)) from None
    return QueryResult(
        list(result.column_names),
        [t.name for t in result.column_types],
        [tuple(r) for r in result.result_rows],
    )
