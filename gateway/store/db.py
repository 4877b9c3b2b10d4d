"""Engines, sessions and migrations for SQLite (the default) and PostgreSQL (by URL)."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    """The default store: one SQLite file in the data directory."""
    return f"sqlite:///{Path(data_dir).resolve() / 'gateway.db'}"


def private_folder(folder: Path) -> Path:
    """Make ``folder`` (and its parents) if missing, readable by this user only (0700): it holds the
    store, its WAL and the key files. A folder this user owns is tightened if others could read it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    # Never a shared folder like /tmp (sticky: others keep files there) made private.
    if st.st_uid == os.getuid() and st.st_mode & 0o077 and not st.st_mode & 0o1000:
        os.chmod(folder, 0o700)
    return folder


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing, or take group and other access away from it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)


def _prepare(url: str) -> str:
    """psycopg 3 for plain ``postgresql://`` URLs; the SQLite file made private (0600 in a 0700 folder:
    SQLite gives its WAL and shared-memory files the database file's mode)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not path.startswith("file:"):
            private_folder(Path(path).parent)
            for name in (path, path + "-wal", path + "-shm"):
                if name == path or os.path.exists(name):
                    private_file(Path(name))
    return url


def make_engine(url: str, *, echo: bool = False, lock_timeout: float = 30.0) -> Engine:
    """An engine tuned for many short transactions from several threads (SQLite: one ``gateway run``
    process; PostgreSQL: any number of processes).

    ``lock_timeout``: how long a SQLite writer waits for its turn before "database is locked"."""
    url = _prepare(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": lock_timeout})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so "BEGIN IMMEDIATE" below takes the write lock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover
            options = conn.get_execution_options()
            if options.get(_READ_ONLY):
                # Readers (see reader()) take no lock at all: in WAL mode they read a snapshot beside the writer.
                conn.exec_driver_sql("BEGIN")
                return
            # WAL with synchronous=NORMAL survives a crash of the process, not of the machine; a durable
            # transaction (see durable()) syncs the WAL at its commit. Set before BEGIN: inside, it is ignored.
            sync = "FULL" if options.get(_DURABLE) else "NORMAL"
            if conn.info.get("synchronous") != sync:
                conn.exec_driver_sql(f"PRAGMA synchronous={sync}")
                conn.info["synchronous"] = sync
            # Writers take the lock at BEGIN (waiting in SQLite's busy handler for their turn) instead
            # of failing mid-transaction on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


_READ_ONLY = "gateway_read_only"
_DURABLE = "gateway_durable"
_variants: weakref.WeakKeyDictionary[Engine, dict[str, Engine]] = weakref.WeakKeyDictionary()
_variants_lock = threading.Lock()


def _variant(engine: Engine, option: str) -> Engine:
    with _variants_lock:
        known = _variants.setdefault(engine, {})
        found = known.get(option)
        if found is None:
            found = known[option] = engine.execution_options(**{option: True})
            if option == _READ_ONLY:
                event.listen(found, "before_cursor_execute", _refuse_writes)
        return found


def durable(engine: Engine) -> Engine:
    """The same store, for transactions that must survive a power cut once committed: what intake
    commits before telling a source the file was taken. On SQLite the WAL is synced at their
    commit (other commits survive a crash of the process, not of the machine); PostgreSQL syncs
    every commit."""
    return _variant(engine, _DURABLE)


def reader(engine: Engine) -> Engine:
    """The same store, for transactions that only read.

    On SQLite every transaction otherwise begins IMMEDIATE, taking the one write lock for its whole
    length; a reader's begins DEFERRED instead, so the pipeline's and the panel's look-ups never queue
    behind a writer nor hold one up. Writing through it is refused (a deferred transaction that
    writes after reading can fail on SQLite when another writer got in between).
    """
    return _variant(engine, _READ_ONLY)


def _refuse_writes(conn, cursor, statement, parameters, context, executemany) -> None:
    if context is not None and (context.isinsert or context.isupdate or context.isdelete):
        raise RuntimeError("a write through the store's read-only engine (use transaction() to write)")


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A session for look-ups only (see :func:`reader`); nothing it does is committed."""
    with Session(reader(engine), expire_on_commit=False) as session:
        yield session


def insert_many(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert many rows of one shape on ``conn`` (inside the caller's transaction), ids not returned.

    On PostgreSQL through COPY: an executemany sends every row as a statement of its own, and the
    gateway writes several audit events per document. Columns a row leaves out get their Python
    defaults as an INSERT would give them."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), rows)
        return
    names = list(rows[0])
    defaults = [(c.name, c.default) for c in table.columns
                if c.name not in rows[0] and c.default is not None and not c.primary_key]
    columns = names + [name for name, _ in defaults]
    fill = [d.arg(None) if d.is_callable else d.arg for _, d in defaults]
    quoted = ", ".join(f'"{c}"' for c in columns)
    with conn.connection.dbapi_connection.cursor() as cur:
        with cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([row[n] for n in names] + fill)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# PostgreSQL's "deadlock detected" and "could not serialize access": the transaction lost a race with
# another and was rolled back; run again, it succeeds. Not the store being down.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


def is_conflict(exc: BaseException) -> bool:
    """Whether a store error is a transaction that lost a race with another (worth running again)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONFLICT_SQLSTATES


def retry_conflicts(fn: Callable[[], T], attempts: int = 4) -> T:
    """Run ``fn`` (one whole transaction) again when it loses a race with another transaction."""
    for attempt in Retrying(retry=retry_if_exception(is_conflict), stop=stop_after_attempt(attempts),
                            wait=wait_random(0.005, 0.05), reraise=True):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover - Retrying either returns or re-raises


def locked_in_order(table: Any, *where: Any) -> Any:
    """``id IN (the rows matching where, locked in id order)``: statements that update many rows lock
    them in one order, so two of them never each hold a row the other waits for (on SQLite, where
    one writer runs at a time, the lock clause is not rendered)."""
    return table.c.id.in_(select(table.c.id).where(*where).order_by(table.c.id).with_for_update())


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, class_=Session, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the store's schema up to date (``gateway db upgrade``)."""
    from alembic import command

    command.upgrade(alembic_config(_prepare(url)), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
