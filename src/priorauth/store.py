"""The tracking store: SQLAlchemy 2 models, the engine (SQLite by default, PostgreSQL by URL) and
automatic alembic migrations.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with BEGIN IMMEDIATE so
concurrent writers wait instead of failing on a lock upgrade. Unique constraints are the last
guard against duplicates. This module holds no business rules (see tracking.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, date, datetime
from pathlib import Path
from typing import ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from priorauth import limits

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the store; use timezone-aware UTC")
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {datetime: UTCDateTime(), dict: JSON}


class CaseRow(Base):
    """One prior-authorization case. Patient identifiers live here (and in the case file and the
    letter), nowhere else in the store."""

    __tablename__ = "cases"
    __table_args__ = (  # the work queue: every filter reads its page in index order
        Index("ix_cases_updated_case", "updated_at", "case_id"),
        Index("ix_cases_status_updated_case", "status", "updated_at", "case_id"),
        Index("ix_cases_payer_updated_case", "payer_id", "updated_at", "case_id"),
        Index("ix_cases_status_due_by", "status", "due_by"),
        Index("ix_cases_status_auth_end", "status", "auth_end"),
    )

    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    source_file: Mapped[str] = mapped_column(Text)
    case_sha256: Mapped[str] = mapped_column(String(64))
    payer_id: Mapped[str] = mapped_column(String(64), index=True)
    product_id: Mapped[str] = mapped_column(String(64), index=True)
    hcpcs: Mapped[str] = mapped_column(String(8))
    indication: Mapped[str] = mapped_column(String(64))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    patient_name: Mapped[str] = mapped_column(String(200))  # limits.PATIENT_NAME fits
    date_of_birth: Mapped[date] = mapped_column(Date)
    member_id: Mapped[str] = mapped_column(String(limits.MEMBER_ID), index=True)
    service_start: Mapped[date | None] = mapped_column(Date)
    units_requested: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[dict | None] = mapped_column(JSON)  # product, inputs, dosing, warnings
    errors: Mapped[list | None] = mapped_column(JSON)  # field errors when needs_info
    payer_reference: Mapped[str | None] = mapped_column(String(64), index=True)
    due_by: Mapped[datetime | None] = mapped_column(index=True)
    overdue_since: Mapped[datetime | None]
    auth_number: Mapped[str | None] = mapped_column(String(64))
    auth_start: Mapped[date | None] = mapped_column(Date)
    auth_end: Mapped[date | None] = mapped_column(Date, index=True)
    auth_units: Mapped[int | None] = mapped_column(Integer)
    appeal_deadline: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DocumentRow(Base):
    """A generated PDF: every version is kept; a version is new only when the bytes change."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("case_id", "kind", "version"),
        UniqueConstraint("case_id", "kind", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), index=True)
    kind: Mapped[str] = mapped_column(
        String(32)
    )  # letter | packet | renewal_letter | renewal_packet
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to PRIORAUTH_HOME
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SubmissionRow(Base):
    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), index=True)
    payer_id: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))  # fax | portal | epa
    reference: Mapped[str | None] = mapped_column(String(64), index=True)
    submitted_at: Mapped[datetime]
    due_by: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))


class StatusChangeRow(Base):
    """Every status change: when, from what source, who, why, with the payer's raw codes."""

    __tablename__ = "status_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(32))  # coordinator | payer_file | nightly | portal
    actor: Mapped[str] = mapped_column(String(64))
    payer_code: Mapped[str | None] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_text: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(String(64))
    response_key: Mapped[str | None] = mapped_column(String(128), unique=True)


class PayerResponseRow(Base):
    """The ledger of payer responses seen: one row per response, so re-ingesting is a no-op."""

    __tablename__ = "payer_responses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(128), unique=True)
    source_file: Mapped[str] = mapped_column(Text)
    case_id: Mapped[str | None] = mapped_column(String(64), index=True)
    matched_by: Mapped[str | None] = mapped_column(String(32))
    # received | pending | applied | no_change | rejection | superseded | dismissed
    outcome: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str | None] = mapped_column(Text)  # why pending, what was applied (no PHI)
    at: Mapped[datetime] = mapped_column(default=utcnow)  # first seen
    stored_file: Mapped[str | None] = mapped_column(Text)  # the kept copy, relative to home
    response_index: Mapped[int | None] = mapped_column(Integer)  # position in that file
    decision_date: Mapped[date | None] = mapped_column(Date)  # the payer's; orders retries
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resolved_at: Mapped[datetime | None]  # when it stopped being pending


class NotificationRow(Base):
    """The outbox: one row per (event, channel); the unique dedup key makes sending exactly-once
    up to a crash inside the send window."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    # None: a notice about a payer response that matches no case yet
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.case_id"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(200))  # secret-free label
    channel_key: Mapped[str] = mapped_column(
        String(240)
    )  # notify.channel_key: which URL, no secret
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|sending|sent|failed
    claimed_at: Mapped[datetime | None]  # when a sender took it (a lease against a second sender)
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # "host:pid" of that sender
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class AuditRow(Base):
    """Append-only audit log: UPDATE and DELETE are refused by database triggers (TRUNCATE too
    on PostgreSQL) and, before any SQL is sent, by the sessions of `Store` (AuditLogAppendOnly)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64), index=True)
    case_id: Mapped[str | None] = mapped_column(String(64), index=True)
    document_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    client: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class RunLockRow(Base):
    """A named lease (the nightly run's on SQLite; PostgreSQL uses an advisory lock)."""

    __tablename__ = "run_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))  # "host:pid:start-ticks"
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]


class UserRow(Base):
    """A staff account for the portal: one per person; passwords hashed with argon2id."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # pharmacist | coordinator | admin
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionRow(Base):
    """A signed-in browser. The cookie carries a random token; only its SHA-256 is stored, so a
    leaked database does not sign anyone in. Expired by inactivity and by absolute lifetime."""

    __tablename__ = "sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    client: Mapped[str | None] = mapped_column(String(64))
    flash: Mapped[str | None] = mapped_column(String(32))  # a message code for the next page


class SignInThrottleRow(Base):
    """Failed sign-ins counted per client address (`addr:<ip>`) and per username typed from an
    address (`pair:<username>|<ip>`); the pair's lock doubles up to a cap (accounts.py)."""

    __tablename__ = "sign_in_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    locks: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(index=True)


class AuditLogAppendOnly(Exception):
    """Raised when code tries to change or delete an audit row: the log is append-only."""


def _audit_rows_stay(session: Session, _context: object, _instances: object) -> None:
    """before_flush: an audit row may be added, never changed or deleted."""
    for row in session.deleted:
        if isinstance(row, AuditRow):
            raise AuditLogAppendOnly("audit_log is append-only: a row cannot be deleted")
    for row in session.dirty:
        if isinstance(row, AuditRow) and session.is_modified(row):
            raise AuditLogAppendOnly("audit_log is append-only: a row cannot be changed")


def _no_bulk_audit_changes(state) -> None:  # type: ignore[no-untyped-def]
    """do_orm_execute: `update(AuditRow)` / `delete(AuditRow)` refused before reaching SQL."""
    if state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if table is not None and table.name == AuditRow.__tablename__:
            raise AuditLogAppendOnly("audit_log is append-only: no UPDATE or DELETE")


# ---- engine and migrations ----------------------------------------------------------------

_migrate_lock = threading.Lock()

# Connections per process: at least the portal's worker threads (anyio's default limit is 40),
# so a burst of requests waits on the database, never on a pool that its own threads hold.
POOL_SIZE = 10
POOL_OVERFLOW = 40


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": 30, "isolation_level": None},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):  # type: ignore[no-untyped-def]
            # Writers take the write lock up front; read-only sessions (portal pages) do not.
            read_only = conn.get_execution_options().get("priorauth_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
    )


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(url: str) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (`priorauth db upgrade`; also on first use)."""
    from alembic import command

    with _migrate_lock:
        config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # one migrator at a time across processes
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")


class Store:
    """The engine and a session factory; `session()` is one transaction."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(priorauth_read_only=True), expire_on_commit=False
        )
        for factory in (self._sessions, self._readers):
            event.listen(factory, "before_flush", _audit_rows_stay)
            event.listen(factory, "do_orm_execute", _no_bulk_audit_changes)
        # SQLite has one writer at a time. Threads of this process take turns here, in order,
        # instead of polling SQLite's lock with growing sleeps (busy timeout): under 50 portal
        # clients that polling put seconds on the slowest downloads (each writes an audit row).
        self._write_turn = threading.RLock() if self.engine.dialect.name == "sqlite" else None
        if migrate and current_revision(self.engine) != head_revision(url):
            upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._write_turn or nullcontext(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """One read transaction that takes no write lock (on SQLite a plain BEGIN, so readers
        never queue behind writers in WAL mode). Writing in it is a mistake."""
        with self._readers() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
